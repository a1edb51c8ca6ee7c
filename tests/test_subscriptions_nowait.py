"""A subscription keeping up reads fresh entries from memory, without a scheduler trip."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import trio
import trio.testing

from core.api import Core, open_core
from core.config import CoreSettings
from core.records import Message
from core.subscriptions import Consumer, InitialPosition, open_subscription_manager, read_ahead
from core.transactions.visibility import IsolationLevel
from storage import open_storage

EARLIEST = InitialPosition.EARLIEST


@pytest.fixture(params=["memory", "file"])
async def core(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Core]:
    settings = CoreSettings(retention_check_interval_ms=0)
    url = "memory://" if request.param == "memory" else f"file://{tmp_path / 'data'}"
    async with open_storage(url) as storage, open_core(storage, settings) as c:
        await c.create_topic("t", 1)
        yield c


@pytest.fixture
def slow_reads(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Offsets at which the read-ahead read through the scheduler (the async path)."""
    seen: list[int] = []
    real_committed, real_read = read_ahead.read_committed, Core.read

    async def committed(core: Core, topic: object, partition: int, offset: int,
                        max_bytes: int) -> object:
        seen.append(offset)
        return await real_committed(core, topic, partition, offset, max_bytes)  # type: ignore[arg-type]

    async def read(self: Core, topic: object, partition: int, offset: int,
                   max_bytes: int) -> object:
        seen.append(offset)
        return await real_read(self, topic, partition, offset, max_bytes)  # type: ignore[arg-type]

    monkeypatch.setattr(read_ahead, "read_committed", committed)
    monkeypatch.setattr(Core, "read", read)
    return seen


async def _receive(c: Consumer, count: int) -> list[bytes | None]:
    out = []
    with trio.fail_after(5):
        while len(out) < count:
            d = await c.receive()
            out.append(d.message.value)
            c.ack(d.partition, d.offset)
    return out


@pytest.mark.parametrize("isolation", list(IsolationLevel))
async def test_fresh_appends_are_read_without_the_scheduler(
    core: Core, slow_reads: list[int], isolation: IsolationLevel
) -> None:
    c = await core.subscriptions.subscribe("t", "s", initial_position=EARLIEST,
                                           isolation=isolation)
    c.flow(100)
    for i in range(6):
        await core.append_messages("t", 0, [Message(None, b"%d" % i)])
        assert await _receive(c, 1) == [b"%d" % i]
    assert slow_reads == []  # every one came from memory, in the woken pass itself


async def test_at_most_a_few_fills_in_a_row_skip_the_checkpoint(
    core: Core, slow_reads: list[int]
) -> None:
    for i in range(10):
        await core.append_messages("t", 0, [Message(None, b"%d" % i)])
    # a read budget of one byte: one stored batch per fill, ten fills for the backlog
    async with open_subscription_manager(core, read_bytes=1) as subs:
        c = await subs.subscribe("t", "s", initial_position=EARLIEST)
        c.flow(100)
        assert await _receive(c, 10) == [b"%d" % i for i in range(10)]
        c.close()
    assert slow_reads  # the scheduler was visited on the way
    assert len(slow_reads) <= 10 // (read_ahead._MAX_NOWAIT_FILLS + 1) + 1


async def test_an_aborted_transaction_sends_read_committed_the_usual_way(
    core: Core, slow_reads: list[int]
) -> None:
    c = await core.subscriptions.subscribe("t", "s", initial_position=EARLIEST)
    c.flow(100)
    txn = await core.transactions.begin()
    await core.transactions.add_partitions(txn, [("t", 0)])
    await core.transactions.append_messages(txn, "t", 0, [Message(None, b"aborted")])
    await core.transactions.end(txn, commit=False)
    await core.append_messages("t", 0, [Message(None, b"after")])
    assert await _receive(c, 1) == [b"after"]
    assert slow_reads  # with aborted data around, the full read_committed decides
    await trio.testing.wait_all_tasks_blocked()
    assert c.queued == 0


async def test_an_open_transaction_holds_read_committed_back(core: Core) -> None:
    c = await core.subscriptions.subscribe("t", "s", initial_position=EARLIEST)
    c.flow(100)
    txn = await core.transactions.begin()
    await core.transactions.add_partitions(txn, [("t", 0)])
    await core.transactions.append_messages(txn, "t", 0, [Message(None, b"in txn")])
    await core.append_messages("t", 0, [Message(None, b"plain")])
    await trio.testing.wait_all_tasks_blocked()
    assert c.queued == 0  # below the last stable offset only
    await core.transactions.end(txn, commit=True)
    assert await _receive(c, 2) == [b"in txn", b"plain"]
