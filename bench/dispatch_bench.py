"""Dispatch benchmark: one Shared subscription draining a topic, acks included.

Run: ``python bench/dispatch_bench.py [--messages N] [--batch B] [--size BYTES]
[--consumers 1,4] [--backends memory,file] [--profile]``  (about 20 s with the defaults)

In process, no network: for each backend (``memory://`` and ``file://`` in a
scratch directory next to the repository, removed afterwards), ``N`` small
messages are appended to one partition beforehand, in batches of ``B``.  Then,
for each consumer count, a new Shared subscription reads them all from the
earliest offset: every consumer grants permits (refilled by half its queue,
like a Pulsar client's receiver queue), receives and acknowledges every message.
Printed per run: messages/s (wall clock, from subscribe to the last ack) and
CPU microseconds per message (``time.process_time()``, the whole process).
``--profile`` runs the first configuration under pyinstrument instead.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import trio  # noqa: E402

from core.api import Core, open_core  # noqa: E402
from core.config import CoreSettings  # noqa: E402
from core.records import Message  # noqa: E402
from core.subscriptions import Consumer, InitialPosition, SubscriptionType  # noqa: E402
from storage import open_storage  # noqa: E402

TOPIC = "bench"
QUEUE = 1000  # permits per consumer (its receiver queue)


@dataclass
class Result:
    backend: str
    consumers: int
    messages: int
    wall_s: float
    cpu_s: float

    def line(self) -> str:
        rate = self.messages / self.wall_s
        cpu_us = self.cpu_s / self.messages * 1e6
        return (
            f"{self.backend:<7} consumers={self.consumers}  {self.messages:>8} msgs  "
            f"{rate:>9,.0f} msg/s  {cpu_us:6.1f} CPU us/msg  ({self.wall_s:.2f} s)"
        )


async def fill(core: Core, messages: int, batch: int, size: int) -> None:
    await core.create_topic(TOPIC, 1)
    payload = b"x" * size
    for start in range(0, messages, batch):
        n = min(batch, messages - start)
        await core.append_messages(TOPIC, 0, [Message(None, payload) for _ in range(n)])


async def drain(core: Core, name: str, consumers: int, messages: int) -> tuple[float, float]:
    """Subscribe ``consumers`` Shared consumers, ack everything; (wall s, CPU s)."""
    done = trio.Event()
    count = 0

    async def consume(c: Consumer) -> None:
        nonlocal count
        c.flow(QUEUE)
        received = 0
        while True:
            d = await c.receive()
            c.ack(d.partition, d.offset)
            received += 1
            if received == QUEUE // 2:
                c.flow(received)
                received = 0
            count += 1
            if count == messages:
                done.set()

    wall0, cpu0 = time.perf_counter(), time.process_time()
    subs = core.subscriptions
    handles = [
        await subs.subscribe(TOPIC, name, SubscriptionType.SHARED,
                             initial_position=InitialPosition.EARLIEST, max_permits=QUEUE)
        for _ in range(consumers)
    ]
    async with trio.open_nursery() as nursery:
        for c in handles:
            nursery.start_soon(consume, c)
        await done.wait()
        nursery.cancel_scope.cancel()
    wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
    for c in handles:
        c.close()
    (info,) = [i for i in await subs.list_subscriptions(TOPIC) if i.name == name]
    assert info.backlog == 0, f"{info.backlog} messages left unacked"
    return wall, cpu


async def run(args: argparse.Namespace, scratch: Path) -> list[Result]:
    results = []
    settings = CoreSettings(retention_check_interval_ms=0)
    for backend in args.backends:
        url = "memory://" if backend == "memory" else f"file://{scratch / backend}"
        async with open_storage(url) as storage, open_core(storage, settings) as core:
            await fill(core, args.messages, args.batch, args.size)
            for n in args.consumers:
                wall, cpu = await drain(core, f"sub-{n}", n, args.messages)
                result = Result(backend, n, args.messages, wall, cpu)
                print(result.line(), flush=True)
                results.append(result)
                if args.profile:
                    return results
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--messages", type=int, default=200_000)
    parser.add_argument("--batch", type=int, default=500)
    parser.add_argument("--size", type=int, default=16, help="payload bytes")
    parser.add_argument("--consumers", default="1,4",
                        type=lambda s: [int(x) for x in s.split(",")])
    parser.add_argument("--backends", default="memory,file", type=lambda s: s.split(","))
    parser.add_argument("--profile", action="store_true",
                        help="profile the first run with pyinstrument")
    args = parser.parse_args()
    scratch = Path(tempfile.mkdtemp(prefix="dispatch-bench-", dir=ROOT))
    try:
        if args.profile:
            from pyinstrument import Profiler

            with Profiler() as profiler:
                trio.run(run, args, scratch)
            profiler.print(show_all=False)
        else:
            trio.run(run, args, scratch)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
