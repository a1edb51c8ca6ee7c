"""Each subscription type against a memory:// core, with consumers joining and leaving."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import trio
import trio.testing

from core.api import Core, open_core
from core.config import CoreSettings
from core.errors import UnknownPartition
from core.records import Message
from core.subscriptions import (
    Consumer,
    ConsumerBusy,
    ConsumerClosed,
    CumulativeAckNotAllowed,
    Delivery,
    InitialPosition,
    SubscriptionBusy,
    SubscriptionManager,
    SubscriptionType,
    SubscriptionTypeConflict,
    UnknownMessage,
    UnknownSubscription,
    open_subscription_manager,
)
from core.subscriptions.dispatch import HASH_RANGE, key_hash
from core.subscriptions.filters import key_in, key_prefix
from storage import open_storage

EARLIEST = InitialPosition.EARLIEST
SHARED = SubscriptionType.SHARED
KEY_SHARED = SubscriptionType.KEY_SHARED
FAILOVER = SubscriptionType.FAILOVER
EXCLUSIVE = SubscriptionType.EXCLUSIVE


@pytest.fixture
async def core() -> AsyncIterator[Core]:
    settings = CoreSettings(retention_check_interval_ms=0)
    async with open_storage("memory://") as storage, open_core(storage, settings) as c:
        await c.create_topic("t", 1)
        await c.create_topic("p3", 3)
        yield c


@pytest.fixture
async def subs(core: Core) -> AsyncIterator[SubscriptionManager]:
    async with open_subscription_manager(core, read_ahead=8) as m:
        yield m


async def publish(core: Core, n: int, *, topic: str = "t", partition: int = 0,
                  key: bytes | None = None, start: int = 0) -> None:
    for i in range(start, start + n):
        await core.append_messages(topic, partition, [Message(key, b"%d" % i)])


async def drain(c: Consumer) -> list[Delivery]:
    """Everything delivered to ``c`` once the system is quiet."""
    await trio.testing.wait_all_tasks_blocked()
    out = []
    while True:
        try:
            out.append(c.receive_nowait())
        except trio.WouldBlock:
            return out


def offsets(ds: list[Delivery]) -> list[int]:
    return [d.offset for d in ds]


# ---------------------------------------------------------------- Exclusive


async def test_exclusive_second_consumer_is_refused_and_state_unchanged(
    core: Core, subs: SubscriptionManager
) -> None:
    a = await subs.subscribe("t", "s", EXCLUSIVE, initial_position=EARLIEST)
    with pytest.raises(ConsumerBusy):
        await subs.subscribe("t", "s", EXCLUSIVE)
    with pytest.raises(SubscriptionTypeConflict):
        await subs.subscribe("t", "s", SHARED)
    (info,) = await subs.list_subscriptions("t")
    assert info.type is EXCLUSIVE and [c.name for c in info.consumers] == [a.name]
    await publish(core, 5)
    a.flow(10)
    got = await drain(a)
    assert offsets(got) == [0, 1, 2, 3, 4]
    a.ack_cumulative(0, 2)
    assert (await subs.list_subscriptions("t"))[0].backlog == 2
    a.close()
    # the next consumer gets what was not acked, and may choose another type
    b = await subs.subscribe("t", "s", SHARED)
    b.flow(10)
    assert offsets(await drain(b)) == [3, 4]


async def test_exclusive_delivers_in_order_while_data_arrives(
    core: Core, subs: SubscriptionManager
) -> None:
    a = await subs.subscribe("t", "s", EXCLUSIVE, initial_position=EARLIEST)
    a.flow(1000)
    received: list[int] = []

    async def consume() -> None:
        while len(received) < 50:
            d = await a.receive()
            received.append(d.offset)
            a.ack(d.partition, d.offset)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(consume)
        await publish(core, 50)
    assert received == list(range(50))


# ---------------------------------------------------------------- Shared


async def test_shared_round_robin_and_slow_consumer_only_slows_itself(
    core: Core, subs: SubscriptionManager
) -> None:
    a = await subs.subscribe("t", "s", SHARED, consumer_name="a", initial_position=EARLIEST)
    b = await subs.subscribe("t", "s", SHARED, consumer_name="b")
    a.flow(2)  # a is slow: two permits only
    b.flow(100)
    await publish(core, 10)
    got_a, got_b = await drain(a), await drain(b)
    assert len(got_a) == 2 and len(got_b) == 8
    assert sorted(offsets(got_a) + offsets(got_b)) == list(range(10))
    assert a.permits == 0 and a.unacked == 2
    # broker never buffers more than the permits: nothing else is queued for a
    await publish(core, 4, start=10)
    assert await drain(a) == [] and len(await drain(b)) == 4


async def test_shared_consumers_join_and_leave_during_delivery(
    core: Core, subs: SubscriptionManager
) -> None:
    a = await subs.subscribe("t", "s", SHARED, consumer_name="a", initial_position=EARLIEST)
    a.flow(3)
    await publish(core, 12)
    held_by_a = await drain(a)
    assert len(held_by_a) == 3
    b = await subs.subscribe("t", "s", SHARED, consumer_name="b")
    b.flow(4)
    got_b = await drain(b)
    assert len(got_b) == 4
    for d in got_b:
        b.ack(d.partition, d.offset)
    a.close()  # a's three unacked messages go to the others
    c = await subs.subscribe("t", "s", SHARED, consumer_name="c")
    c.flow(20)
    b.flow(20)
    rest = await drain(b) + await drain(c)
    assert sorted(offsets(rest)) == sorted(set(range(12)) - set(offsets(got_b)))
    redelivered = [d for d in rest if d.offset in offsets(held_by_a)]
    assert len(redelivered) == 3 and all(d.redelivery_count == 1 for d in redelivered)
    with pytest.raises(CumulativeAckNotAllowed):
        b.ack_cumulative(0, rest[0].offset)


# ---------------------------------------------------------------- Failover


async def test_failover_standby_takes_over_with_unacked_messages(
    core: Core, subs: SubscriptionManager
) -> None:
    b = await subs.subscribe("t", "s", FAILOVER, consumer_name="b", initial_position=EARLIEST)
    a = await subs.subscribe("t", "s", FAILOVER, consumer_name="a")  # sorts first: active
    low = await subs.subscribe("t", "s", FAILOVER, consumer_name="0", priority=5)
    for c in (a, b, low):
        c.flow(100)
    await publish(core, 6)
    got = await drain(a)
    assert offsets(got) == list(range(6)) and await drain(b) == [] and await drain(low) == []
    a.ack_cumulative(0, 2)
    a.close()
    await publish(core, 2, start=6)
    assert offsets(await drain(b)) == [3, 4, 5, 6, 7]
    assert await drain(low) == []


async def test_failover_joining_consumer_that_becomes_active_gets_the_unacked(
    core: Core, subs: SubscriptionManager
) -> None:
    b = await subs.subscribe("t", "s", FAILOVER, consumer_name="b", initial_position=EARLIEST)
    b.flow(100)
    await publish(core, 4)
    received = await drain(b)
    assert offsets(received) == [0, 1, 2, 3]
    b.ack(0, 0)
    a = await subs.subscribe("t", "s", FAILOVER, consumer_name="a")
    a.flow(100)
    assert offsets(await drain(a)) == [1, 2, 3]
    # b may still ack what it had; nothing is delivered twice afterwards
    b.ack(0, 1)
    assert b.unacked == 0 and a.unacked == 2


async def test_failover_spreads_partitions(core: Core, subs: SubscriptionManager) -> None:
    a = await subs.subscribe("p3", "s", FAILOVER, consumer_name="a", initial_position=EARLIEST)
    b = await subs.subscribe("p3", "s", FAILOVER, consumer_name="b")
    a.flow(100)
    b.flow(100)
    for p in range(3):
        await publish(core, 2, topic="p3", partition=p)
    assert {d.partition for d in await drain(a)} == {0, 2}
    assert {d.partition for d in await drain(b)} == {1}


# ---------------------------------------------------------------- Key_Shared


def _keys_by_half() -> tuple[bytes, bytes]:
    low = next(k for k in (b"k%d" % i for i in range(100)) if key_hash(k) < HASH_RANGE // 2)
    high = next(k for k in (b"k%d" % i for i in range(100)) if key_hash(k) >= HASH_RANGE // 2)
    return low, high


async def test_key_shared_same_key_same_consumer(core: Core, subs: SubscriptionManager) -> None:
    low, high = _keys_by_half()
    a = await subs.subscribe("t", "s", KEY_SHARED, consumer_name="a", initial_position=EARLIEST)
    b = await subs.subscribe("t", "s", KEY_SHARED, consumer_name="b")
    a.flow(100)
    b.flow(100)
    for i in range(6):
        await core.append_messages("t", 0, [Message(low if i % 2 else high, b"%d" % i)])
    got_a, got_b = await drain(a), await drain(b)
    assert {d.message.key for d in got_a} == {low}
    assert {d.message.key for d in got_b} == {high}
    assert offsets(got_a) == [1, 3, 5] and offsets(got_b) == [0, 2, 4]


async def test_key_shared_moved_key_waits_for_previous_consumer(
    core: Core, subs: SubscriptionManager
) -> None:
    low, high = _keys_by_half()
    a = await subs.subscribe("t", "s", KEY_SHARED, consumer_name="a", initial_position=EARLIEST)
    a.flow(2)
    await publish(core, 2, key=high)
    await publish(core, 2, key=low, start=2)
    held = await drain(a)
    assert offsets(held) == [0, 1]  # both `high`, unacked
    b = await subs.subscribe("t", "s", KEY_SHARED, consumer_name="b")  # takes `high`
    b.flow(10)
    a.flow(10)
    await publish(core, 1, key=high, start=4)
    assert offsets(await drain(a)) == [2, 3]  # `low` still flows to a
    assert await drain(b) == []  # offset 4 waits: a holds 0 and 1 of the same key
    a.ack(0, 0)
    assert await drain(b) == []
    a.ack(0, 1)
    assert offsets(await drain(b)) == [4]


async def test_key_shared_leaving_consumer_hands_keys_over_in_order(
    core: Core, subs: SubscriptionManager
) -> None:
    low, _ = _keys_by_half()
    a = await subs.subscribe("t", "s", KEY_SHARED, consumer_name="a", initial_position=EARLIEST)
    b = await subs.subscribe("t", "s", KEY_SHARED, consumer_name="b")
    a.flow(2)
    b.flow(10)
    await publish(core, 4, key=low)
    assert offsets(await drain(a)) == [0, 1]
    a.close()  # b now owns every key; 0 and 1 come back before 2 and 3
    assert offsets(await drain(b)) == [0, 1, 2, 3]


# ---------------------------------------------------------------- errors, filters, positions


async def test_errors_leave_state_unchanged(core: Core, subs: SubscriptionManager) -> None:
    a = await subs.subscribe("t", "s", SHARED, initial_position=EARLIEST)
    a.flow(1)
    await publish(core, 3)
    (d,) = await drain(a)
    with pytest.raises(UnknownMessage):
        a.ack(0, 2)  # read, never delivered
    with pytest.raises(UnknownMessage):
        a.ack(0, 99)
    with pytest.raises(UnknownMessage):
        a.ack(5, 0)  # no such partition
    with pytest.raises(UnknownMessage):
        a.nack(0, 1)
    info = (await subs.list_subscriptions("t"))[0]
    assert info.backlog == 3 and info.unacked == 1
    a.ack(d.partition, d.offset)
    a.ack(d.partition, d.offset)  # acking twice is harmless
    a.close()
    with pytest.raises(ConsumerClosed):
        a.ack(0, 0)
    with pytest.raises(ConsumerClosed):
        await a.receive()
    with pytest.raises(ConsumerClosed):
        a.flow(1)
    with pytest.raises(UnknownSubscription):
        await subs.unsubscribe("t", "nope")


async def test_receive_wakes_on_close(subs: SubscriptionManager) -> None:
    a = await subs.subscribe("t", "s", SHARED)
    a.flow(1)
    async with trio.open_nursery() as nursery:

        async def closer() -> None:
            await trio.sleep(1)
            a.close("bye")

        nursery.start_soon(closer)
        with pytest.raises(ConsumerClosed, match="bye"):
            await a.receive()


async def test_filter_skips_and_acks_non_matching(core: Core, subs: SubscriptionManager) -> None:
    a = await subs.subscribe("t", "s", SHARED, initial_position=EARLIEST,
                             filter=key_prefix(b"keep"))
    a.flow(10)
    for i in range(6):
        await core.append_messages("t", 0, [Message(b"keep" if i % 3 == 0 else b"drop", b"")])
    got = await drain(a)
    assert offsets(got) == [0, 3]
    assert (await subs.list_subscriptions("t"))[0].backlog == 2
    for d in got:
        a.ack(d.partition, d.offset)
    info = (await subs.list_subscriptions("t"))[0]
    assert info.backlog == 0 and info.unacked == 0


async def test_initial_positions_and_seek(core: Core, subs: SubscriptionManager) -> None:
    await publish(core, 5)
    latest = await subs.subscribe("t", "latest")
    at2 = await subs.subscribe("t", "at2", initial_position=2)
    for c in (latest, at2):
        c.flow(10)
    await publish(core, 1, start=5)
    assert offsets(await drain(latest)) == [5]
    assert offsets(await drain(at2)) == [2, 3, 4, 5]
    assert await subs.seek("t", "at2", 1) == {0: 1}
    assert offsets(await drain(at2)) == [1, 2, 3, 4, 5]
    assert at2.unacked == 5 and at2.permits == 1  # 10 granted, 9 delivered
    assert await subs.seek("t", "at2", 100) == {0: 6}  # clamped to the end
    assert await drain(at2) == [] and (await subs.list_subscriptions("t"))[0].backlog == 0


async def test_seek_by_timestamp() -> None:
    now = [0]

    def clock() -> int:
        return now[0]

    settings = CoreSettings(retention_check_interval_ms=0)
    async with open_storage("memory://") as storage, open_core(
        storage, settings, clock_ms=clock
    ) as core, open_subscription_manager(core) as m:
        await core.create_topic("ts")
        for i in range(3):
            now[0] = 1000 * (i + 1)
            await core.append_messages("ts", 0, [Message(None, b"%d" % i)])
        a = await m.subscribe("ts", "s", initial_position=EARLIEST)
        a.flow(10)
        assert len(await drain(a)) == 3
        assert await m.seek_timestamp("ts", "s", 1500) == {0: 1}
        got = await drain(a)
        assert offsets(got) == [1, 2] and got[0].publish_time_ms == 2000
        assert await m.seek_timestamp("ts", "s", 9999) == {0: 3}


async def test_partitioned_topic_and_single_partition(
    core: Core, subs: SubscriptionManager
) -> None:
    whole = await subs.subscribe("p3", "s", SHARED, initial_position=EARLIEST)
    one = await subs.subscribe("p3-partition-1", "s", SHARED)
    assert whole.partitions == [0, 1, 2] and one.partitions == [1]
    one.flow(10)
    for p in range(3):
        await publish(core, 2, topic="p3", partition=p)
    assert {d.partition for d in await drain(one)} == {1}
    whole.flow(10)
    got = await drain(whole)
    assert sorted((d.partition, d.offset) for d in got) == [(0, 0), (0, 1), (2, 0), (2, 1)]
    (info,) = await subs.list_subscriptions("p3")
    assert info.backlog == 6 and info.unacked == 6 and len(info.consumers) == 2


async def test_reader_is_not_durable(core: Core, subs: SubscriptionManager) -> None:
    await publish(core, 3)
    r = await subs.open_reader("t", 1)
    r.flow(10)
    assert offsets(await drain(r)) == [1, 2]
    (info,) = await subs.list_subscriptions("t")
    assert not info.durable
    assert await subs.store.list(core.parse_topic("t").log_name(0)) == []
    r.close()
    assert await subs.list_subscriptions("t") == []


async def test_unsubscribe(core: Core, subs: SubscriptionManager) -> None:
    a = await subs.subscribe("t", "s")
    log_name = core.parse_topic("t").log_name(0)
    assert await subs.store.list(log_name) == ["s"]
    with pytest.raises(SubscriptionBusy):
        await subs.unsubscribe("t", "s")
    await subs.unsubscribe("t", "s", force=True)
    assert a.closed and await subs.store.list(log_name) == []
    assert subs.get("t", "s") is None


async def test_deleted_topic_closes_consumers(core: Core, subs: SubscriptionManager) -> None:
    a = await subs.subscribe("t", "s")
    a.flow(1)
    await trio.testing.wait_all_tasks_blocked()
    await core.delete_topic("t")
    with pytest.raises(ConsumerClosed, match="topic gone"):
        with trio.fail_after(5):
            await a.receive()
    await trio.testing.wait_all_tasks_blocked()
    assert subs.get("t", "s") is None
    assert await subs.store.list(core.parse_topic("t").log_name(0)) == []


async def test_read_ahead_is_bounded(core: Core, subs: SubscriptionManager) -> None:
    a = await subs.subscribe("t", "s", SHARED, initial_position=EARLIEST)
    a.flow(3)
    await core.append_messages("t", 0, [Message(None, b"%d" % i) for i in range(50)])  # 1 batch
    assert len(await drain(a)) == 3
    group = subs.get("t", "s")
    assert group is not None
    sub = group.partitions[0]
    assert sub.buffered == 8 and sub.unacked == 3  # read_ahead=8 in the fixture
    a.flow(100)
    got = await drain(a)
    assert offsets(got) == list(range(3, 50)) and sub.buffered == 0


async def test_forget_topic_drops_idle_subscriptions_too(
    core: Core, subs: SubscriptionManager
) -> None:
    active = await subs.subscribe("p3", "active")
    idle = await subs.subscribe("p3", "idle")
    idle.close()
    assert await subs.forget_topic("p3", 3) == 6
    assert active.closed and await subs.list_subscriptions("p3") == []
    for n in range(3):
        assert await subs.store.list(core.parse_topic("p3").log_name(n)) == []


async def test_subscribe_to_missing_partition(subs: SubscriptionManager) -> None:
    with pytest.raises(UnknownPartition):
        await subs.subscribe("p3-partition-3", "s")
    assert subs.get("p3", "s") is None


async def test_set_filter_on_live_subscription(core: Core, subs: SubscriptionManager) -> None:
    low, high = _keys_by_half()
    a = await subs.subscribe("t", "s", KEY_SHARED, initial_position=EARLIEST,
                             filter=key_in([high]))
    b = await subs.subscribe("t", "s", KEY_SHARED)  # owns `high`
    b.flow(1)
    for key in (high, low, high, low, high):
        await core.append_messages("t", 0, [Message(key, b"")])
    assert offsets(await drain(b)) == [0]  # 2 and 4 wait in the read-ahead; 1, 3 skipped
    subs.set_filter("t", "s", key_in([low]))  # 2 and 4 are read again and skipped now
    a.flow(10)
    b.flow(10)
    assert await drain(a) == [] and await drain(b) == []
    (info,) = await subs.list_subscriptions("t")
    assert info.backlog == 1 and info.unacked == 1  # offset 0, still held by b
    await core.append_messages("t", 0, [Message(low, b"")])
    assert offsets(await drain(a)) == [5]
