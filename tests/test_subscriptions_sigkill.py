"""Cursor state survives SIGKILL: durable acks stay, everything else is redelivered.

A helper process (``tests/subscriptions_proc.py``) consumes a Shared
subscription on ``file://`` storage, acks most messages and reports each ack,
and each ``flush`` after which the acks reported so far are durable.  The test
SIGKILLs it mid-stream, reopens the storage and checks the contract written in
:mod:`core.subscriptions`: no message whose ack was reported durable comes
back; every message the helper never acked does.
"""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import trio

from core.api import open_core
from core.config import CoreSettings
from core.records import Message
from core.subscriptions import SubscriptionType
from storage import open_storage

HELPER = Path(__file__).resolve().parent / "subscriptions_proc.py"
SETTINGS = CoreSettings(retention_check_interval_ms=0)
PARTITIONS = 2
PER_PARTITION = 300
KILL_AFTER_FLUSHES = 20


class Report:
    """What the helper said: its acks, and how many of them were durable."""

    def __init__(self) -> None:
        self.acks: list[tuple[int, int]] = []
        self.durable = 0  # acks[:durable] were flushed
        self.flushes = 0
        self.done = False
        self._partial = b""

    def feed(self, data: bytes | bytearray) -> None:
        *lines, self._partial = (self._partial + bytes(data)).split(b"\n")
        for line in lines:
            word, *args = line.decode().split()
            if word == "ack":
                self.acks.append((int(args[0]), int(args[1])))
            elif word == "flushed":
                self.durable = len(self.acks)
                self.flushes += 1
            elif word == "done":
                self.done = True
            else:
                raise AssertionError(f"unexpected line from the helper: {line!r}")


async def run_and_kill(data_dir: Path, stderr_path: Path) -> Report:
    report = Report()
    with stderr_path.open("wb") as stderr:
        proc = await trio.lowlevel.open_process(
            [sys.executable, str(HELPER), str(data_dir)],
            stdout=subprocess.PIPE, stderr=stderr,
        )
        try:
            assert proc.stdout is not None
            with trio.fail_after(60):
                while report.flushes < KILL_AFTER_FLUSHES and not report.done:
                    data = await proc.stdout.receive_some()
                    if not data:
                        break
                    report.feed(data)
                proc.kill()  # SIGKILL
                while data := await proc.stdout.receive_some():  # written before the kill
                    report.feed(data)
                await proc.wait()
        finally:
            if proc.returncode is None:
                proc.kill()
                with trio.CancelScope(shield=True):
                    await proc.wait()
    if proc.returncode != -signal.SIGKILL:
        raise AssertionError(await trio.Path(stderr_path).read_text())
    return report


async def test_durable_acks_survive_sigkill(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    url = f"file://{data_dir}"
    async with open_storage(url) as storage, open_core(storage, SETTINGS) as core:
        await core.create_topic("t", PARTITIONS)
        for p in range(PARTITIONS):
            for start in range(0, PER_PARTITION, 100):
                await core.append_messages(
                    "t", p, [Message(None, b"%d" % i) for i in range(start, start + 100)]
                )

    report = await run_and_kill(data_dir, tmp_path / "helper.stderr")
    assert report.flushes >= KILL_AFTER_FLUSHES or report.done, "the helper stopped early"
    everything = {(p, o) for p in range(PARTITIONS) for o in range(PER_PARTITION)}
    durable = set(report.acks[: report.durable])
    acked = set(report.acks)
    assert durable and all(o % 4 for _, o in acked)

    async with open_storage(url) as storage, open_core(storage, SETTINGS) as core:
        subs = core.subscriptions
        (info,) = await subs.list_subscriptions("t")
        consumer = await subs.subscribe("t", "s", SubscriptionType.SHARED)
        consumer.flow(1000)
        redelivered = set()
        with trio.fail_after(30):
            for _ in range(info.backlog):
                d = await consumer.receive()
                redelivered.add((d.partition, d.offset))
        with trio.move_on_after(0.3):
            d = await consumer.receive()
            raise AssertionError(f"more than the backlog: {d.partition}/{d.offset}")

    assert len(redelivered) == info.backlog
    assert not redelivered & durable, "a durable ack was lost"
    assert everything - acked <= redelivered, "a message never acked was not redelivered"
    # acks made but not yet flushed may go either way (at-least-once)
    assert redelivered <= everything - durable
