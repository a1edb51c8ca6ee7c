"""The read-ahead decodes each stored batch once, however many fills it takes to drain."""

from __future__ import annotations

import struct
from collections.abc import AsyncIterator

import pytest
import trio
import trio.testing

from core.api import Core, open_core
from core.config import CoreSettings
from core.partition import ReadEntry
from core.records import Message, StoredMessage, build_batch, decode_batch
from core.subscriptions import (
    Consumer,
    Delivery,
    InitialPosition,
    SubscriptionType,
    UnknownMessage,
    open_subscription_manager,
    read_ahead,
)
from core.subscriptions.read_ahead import BatchCache
from storage import open_storage

EARLIEST = InitialPosition.EARLIEST
BATCH = 50


@pytest.fixture
async def core() -> AsyncIterator[Core]:
    settings = CoreSettings(retention_check_interval_ms=0)
    async with open_storage("memory://") as storage, open_core(storage, settings) as c:
        await c.create_topic("t", 1)
        yield c


@pytest.fixture
def decodes(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Base offsets of the batches the read-ahead decodes, in order."""
    seen: list[int] = []

    def counting(batch: bytes | memoryview) -> list[StoredMessage]:
        out = decode_batch(batch)
        seen.append(out[0].offset if out else -1)
        return out

    monkeypatch.setattr(read_ahead, "decode_batch", counting)
    return seen


async def drain(c: Consumer) -> list[Delivery]:
    await trio.testing.wait_all_tasks_blocked()
    out = []
    while True:
        try:
            out.append(c.receive_nowait())
        except trio.WouldBlock:
            return out


@pytest.mark.parametrize("kind", [SubscriptionType.SHARED, SubscriptionType.EXCLUSIVE])
async def test_a_big_batch_is_decoded_once_across_many_fills(
    core: Core, decodes: list[int], kind: SubscriptionType
) -> None:
    await core.append_messages("t", 0, [Message(None, b"%d" % i) for i in range(BATCH)])
    await core.append_messages("t", 0, [Message(None, b"%d" % i) for i in range(BATCH, 2 * BATCH)])
    got: list[Delivery] = []
    async with open_subscription_manager(core, read_ahead=4) as subs:
        c = await subs.subscribe("t", "s", kind, initial_position=EARLIEST, max_permits=3)
        while len(got) < 2 * BATCH:
            c.flow(3)
            batch = await drain(c)
            assert 0 < len(batch) <= 3
            for d in batch:
                c.ack(d.partition, d.offset)
            got.extend(batch)
        (info,) = await subs.list_subscriptions("t")
        assert info.backlog == 0
        c.close()
    assert [d.offset for d in got] == list(range(2 * BATCH))
    assert [d.message.value for d in got] == [b"%d" % i for i in range(2 * BATCH)]
    # about 2 * BATCH / 4 fills, but one decode per stored batch
    assert decodes == [0, BATCH]


async def test_a_filter_change_rereads_the_cached_batch_without_decoding(
    core: Core, decodes: list[int]
) -> None:
    await core.append_messages("t", 0, [Message(b"k%d" % (i % 2), b"") for i in range(BATCH)])
    async with open_subscription_manager(core, read_ahead=4) as subs:
        c = await subs.subscribe("t", "s", SubscriptionType.SHARED,
                                 initial_position=EARLIEST, max_permits=100)
        await trio.testing.wait_all_tasks_blocked()  # 4 messages read ahead, no permits
        subs.set_filter("t", "s", lambda m: m.key == b"k1")
        got: list[Delivery] = []
        for _ in range(BATCH):
            c.flow(10)
            got.extend(d := await drain(c))
            for delivery in d:
                c.ack(delivery.partition, delivery.offset)
            if len(got) == BATCH // 2:
                break
        c.close()
    assert [d.offset for d in got] == list(range(1, BATCH, 2))
    assert decodes == [0]


def _entry(base: int, n: int, timestamp: int = 7) -> ReadEntry:
    batch = bytearray(build_batch([Message(None, b"%d" % i) for i in range(n)]))
    struct.pack_into(">q", batch, 0, base)  # v2 base offset (outside the CRC)
    return ReadEntry(base, base + n - 1, timestamp, memoryview(batch))


def test_batch_cache_reuses_the_same_entry_only(decodes: list[int]) -> None:
    cache = BatchCache()
    first = cache.decode(_entry(10, 5))
    assert cache.decode(_entry(10, 5)) is first
    assert cache.covering(9) is None and cache.covering(10) is first
    assert cache.covering(14) is first and cache.covering(15) is None
    assert first.start(12) == 2 and first.start(0) == 0 and first.start(99) == 5
    assert cache.decode(_entry(10, 5, timestamp=8)) is not first  # another batch
    assert cache.decodes == 2 and decodes == [10, 10]
    cache.clear()
    assert cache.covering(10) is None


async def test_ack_many_acks_in_order_and_stops_at_an_unknown_offset(core: Core) -> None:
    await core.append_messages("t", 0, [Message(None, b"%d" % i) for i in range(10)])
    async with open_subscription_manager(core, read_ahead=20) as subs:
        c = await subs.subscribe("t", "s", SubscriptionType.SHARED,
                                 initial_position=EARLIEST, max_permits=10)
        c.flow(10)
        got = await drain(c)
        assert [d.offset for d in got] == list(range(10))
        c.ack_many(0, [0, 1, 2, 2, 5])  # a repeated ack is a no-op, as with ack()
        with pytest.raises(UnknownMessage):
            c.ack_many(0, [3, 99, 4])
        c.ack_many(0, [])
        await trio.testing.wait_all_tasks_blocked()
        (info,) = await subs.list_subscriptions("t")
        assert info.backlog == 10 - 5 and info.unacked == 5  # 4, 6, 7, 8, 9 still held
        c.ack_many(0, range(4, 10))
        await trio.testing.wait_all_tasks_blocked()
        (info,) = await subs.list_subscriptions("t")
        assert info.backlog == 0 and info.unacked == 0
        c.close()
