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
from core.records import FreshBatches, Message, StoredMessage, build_batch, decode_batch
from core.subscriptions import (
    Consumer,
    Delivery,
    InitialPosition,
    SubscriptionType,
    UnknownMessage,
    open_subscription_manager,
    read_ahead,
)
from core.subscriptions.read_ahead import BatchCache, SharedBatchCache
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
    """Base offsets of the batches the read-ahead decodes, in order.

    Just-appended batches are not taken from the core's FreshBatches here, so
    that every batch goes through the decoder (tests/test_records_fresh.py
    covers that shortcut).
    """
    seen: list[int] = []
    monkeypatch.setattr(FreshBatches, "records", lambda *_: None)

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


@pytest.mark.parametrize("kind", [SubscriptionType.SHARED, SubscriptionType.EXCLUSIVE])
async def test_subscriptions_of_one_partition_decode_each_batch_once(
    core: Core, decodes: list[int], kind: SubscriptionType
) -> None:
    n = 5
    async with open_subscription_manager(core, read_ahead=4) as subs:
        consumers = [
            await subs.subscribe("t", f"s{i}", kind, initial_position=EARLIEST, max_permits=3)
            for i in range(n)
        ]
        # published while all n read the partition (a lone reader keeps nothing shared)
        for first in (0, BATCH):
            batch = [Message(None, b"%d" % i) for i in range(first, first + BATCH)]
            await core.append_messages("t", 0, batch)
        got: list[list[int]] = [[] for _ in range(n)]
        while any(len(g) < 2 * BATCH for g in got):
            for c, g in zip(consumers, got, strict=True):
                c.flow(3)
                for d in await drain(c):
                    c.ack(d.partition, d.offset)
                    assert d.message.value == b"%d" % d.offset
                    g.append(d.offset)
        for c in consumers:
            c.close()
        assert subs.batches.decodes == 2 and subs.batches.hits >= (n - 1) * 2
    assert got == [list(range(2 * BATCH))] * n
    assert decodes == [0, BATCH]  # not n times each


def _readers(cache: SharedBatchCache, *log_names: str) -> SharedBatchCache:
    """``cache`` with two subscriptions reading each of ``log_names``."""
    for name in log_names:
        cache.attach(name)
        cache.attach(name)
    return cache


def test_shared_batch_cache_is_an_lru_bounded_by_entries(decodes: list[int]) -> None:
    cache = _readers(SharedBatchCache(max_batches=2), "t-0", "t-1")
    a = cache.decode("t-0", _entry(0, 5))
    assert cache.decode("t-0", _entry(0, 5)) is a  # another subscription: no decode
    b = cache.decode("t-1", _entry(0, 5))  # another partition, same offsets
    assert b is not a and decodes == [0, 0]
    assert cache.decode("t-0", _entry(0, 5)) is a  # a is now the most recently used
    cache.decode("t-0", _entry(5, 5))  # evicts b
    assert len(cache) == 2 and cache.decode("t-0", _entry(0, 5)) is a
    assert cache.decode("t-1", _entry(0, 5)) is not b
    assert decodes == [0, 0, 5, 0] and cache.decodes == 4 and cache.hits == 3


def test_shared_batch_cache_is_bounded_by_bytes(decodes: list[int]) -> None:
    stored = _entry(0, 5).batch
    one = SharedBatchCache.weight(bytes(stored), SharedBatchCache().decode("x", _entry(0, 5)))
    cache = _readers(SharedBatchCache(max_bytes=2 * one), "t-0")
    for base in (0, 5, 10):
        cache.decode("t-0", _entry(base, 5))
    assert len(cache) == 2 and cache.bytes == 2 * one
    tiny = _readers(SharedBatchCache(max_bytes=one - 1), "t-0")
    tiny.decode("t-0", _entry(0, 5))  # heavier than the bound: decoded, not kept
    assert len(tiny) == 0 and tiny.bytes == 0


def test_shared_batch_cache_keeps_batches_of_shared_partitions_only(decodes: list[int]) -> None:
    cache = SharedBatchCache()
    lone = BatchCache(cache, "t-0")
    lone.decode(_entry(0, 5))
    assert len(cache) == 0  # one reader: its own cache holds the batch
    other = BatchCache(cache, "t-0")
    batch = lone.decode(_entry(5, 5))
    assert len(cache) == 1 and other.decode(_entry(5, 5)) is batch
    other.close()
    other.close()  # idempotent: detaches once
    lone.decode(_entry(10, 5))
    assert len(cache) == 1 and cache.decodes == 3 and cache.hits == 1
    assert decodes == [0, 5, 10]


def test_shared_batch_cache_checks_the_stored_bytes(decodes: list[int]) -> None:
    cache = _readers(SharedBatchCache(), "t-0")
    first = cache.decode("t-0", _entry(0, 5))
    # same offsets, timestamp and size (a topic created again), other values
    other = build_batch([Message(None, b"%d" % (i + 5)) for i in range(5)])
    assert len(other) == len(_entry(0, 5).batch)
    again = cache.decode("t-0", ReadEntry(0, 4, 7, memoryview(other)))
    assert again is not first and len(cache) == 1 and cache.decodes == 2
    assert [r.message.value for r in again.records] == [b"5", b"6", b"7", b"8", b"9"]
    cache.forget("t-0")
    assert len(cache) == 0 and cache.bytes == 0


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
