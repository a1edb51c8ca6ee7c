"""Delayed delivery (``ps.deliver-at-ms``) on Shared subscriptions.

Time is trio's: ``autojump_clock`` makes the delays pass without waiting, and
the epoch clock the subscriptions judge due times by is derived from it.
"""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
import trio
import trio.testing

from core.api import Core, open_core
from core.config import CoreSettings
from core.headers import DELIVER_AT_MS, format_uint
from core.records import Message
from core.subscriptions import (
    Consumer,
    InitialPosition,
    PartitionSubscription,
    RedeliveryPolicy,
    SubscriptionManager,
    SubscriptionType,
    UnknownMessage,
    open_subscription_manager,
)
from core.subscriptions.delayed import DelayedIndex, deliver_at_ms
from storage import open_storage

SHARED = SubscriptionType.SHARED
EARLIEST = InitialPosition.EARLIEST
SETTINGS = CoreSettings(retention_check_interval_ms=0)
EPOCH_MS = 1_700_000_000_000


def clock_ms() -> int:
    """Epoch milliseconds on trio's (mock) clock."""
    return EPOCH_MS + int(trio.current_time() * 1000)


def at(seconds: float, value: bytes = b"") -> Message:
    """A message due ``seconds`` after the start of the mock clock."""
    due = format_uint(EPOCH_MS + int(seconds * 1000))
    return Message(None, value, [(DELIVER_AT_MS, due)])


def now_s() -> float:
    return trio.current_time()


@pytest.fixture
async def core() -> AsyncIterator[Core]:
    async with open_storage("memory://") as storage, open_core(
        storage, SETTINGS, clock_ms=clock_ms
    ) as c:
        await c.create_topic("t", 1)
        yield c


@pytest.fixture
async def subs(core: Core) -> AsyncIterator[SubscriptionManager]:
    async with open_subscription_manager(core, clock_ms=clock_ms) as m:
        yield m


def partition(subs: SubscriptionManager, name: str = "s") -> PartitionSubscription:
    group = subs.get("t", name)
    assert group is not None
    return group.partitions[0]


async def receive(c: Consumer) -> tuple[bytes, float]:
    """The next delivery's value and the trio time it arrived."""
    with trio.fail_after(1000):
        d = await c.receive()
    return d.message.value or b"", now_s()


async def nothing_within(c: Consumer, seconds: float) -> None:
    with trio.move_on_after(seconds):
        d = await c.receive()
        raise AssertionError(f"offset {d.offset} delivered early, at {now_s()}")


# ---------------------------------------------------------------- the index (sans-IO)


def test_index_pops_in_due_order_and_is_capped() -> None:
    index = DelayedIndex(max_size=3)
    assert index.add(10, 300) and index.add(11, 100) and index.add(12, 200)
    assert index.full and not index.add(13, 50)
    assert not index.add(11, 999)  # already held
    assert index.next_due_ms() == 100
    assert index.pop_due(150, 10) == [(100, 11)]
    assert index.pop_due(1000, 1) == [(200, 12)]  # limit
    assert index.discard(10) and not index.discard(10)
    assert len(index) == 0 and index.next_due_ms() is None and index.pop_due(10**9, 5) == []


def test_index_discard_if_and_stale_entries_stay_bounded() -> None:
    index = DelayedIndex(max_size=10_000)
    for i in range(1000):
        index.add(i, 1000 - i)
    assert index.discard_if(lambda o: o % 2 == 0) == 500
    assert index.lowest_offset() == 1
    for i in range(1, 1000, 2):
        if i != 999:
            index.discard(i)
    assert len(index) == 1 and len(index._heap) <= 2 * len(index) + 64
    assert index.pop_due(10**9, 10) == [(1, 999)]


def test_deliver_at_header_parsing() -> None:
    assert deliver_at_ms([(DELIVER_AT_MS, b"1700000000000")]) == 1_700_000_000_000
    assert deliver_at_ms([("x", b"1"), (DELIVER_AT_MS, b"5"), (DELIVER_AT_MS, b"9")]) == 5
    for bad in (b"", b"-5", b"007", b"1e3", b" 12"):
        assert deliver_at_ms([(DELIVER_AT_MS, bad)]) is None
    assert deliver_at_ms([]) is None


# ---------------------------------------------------------------- delivery


async def test_delivered_when_due_in_due_order(
    core: Core, subs: SubscriptionManager, autojump_clock: trio.testing.MockClock
) -> None:
    c = await subs.subscribe("t", "s", SHARED, initial_position=EARLIEST)
    c.flow(100)
    await core.append_messages(
        "t", 0, [at(30, b"c"), at(10, b"a"), Message(None, b"now"), at(20, b"b")]
    )
    await core.append_messages("t", 0, [at(15, b"a2"), at(0, b"past")])
    got = [await receive(c) for _ in range(6)]
    assert [v for v, _ in got] == [b"now", b"past", b"a", b"a2", b"b", b"c"]
    times = [t for _, t in got]
    assert times[0] < 1 and times[1] < 1
    assert times[2:] == pytest.approx([10, 15, 20, 30], abs=0.01)
    await nothing_within(c, 100)


async def test_not_delivered_early_and_cursor_stops_at_held(
    core: Core, subs: SubscriptionManager, autojump_clock: trio.testing.MockClock
) -> None:
    c = await subs.subscribe("t", "s", SHARED, initial_position=EARLIEST)
    c.flow(100)
    await core.append_messages("t", 0, [Message(None, b"0"), at(50, b"1"), Message(None, b"2")])
    for _ in range(2):
        d = await c.receive()
        c.ack(d.partition, d.offset)
    sub = partition(subs)
    assert sub.delayed == 1
    with pytest.raises(UnknownMessage):
        c.ack(0, 1)  # held, never delivered
    await nothing_within(c, 49.9)
    assert sub.cursor.mark_delete == 1  # offset 2 is acked individually above the hole
    assert (await subs.list_subscriptions("t"))[0].backlog == 1
    d = await c.receive()
    assert d.offset == 1 and now_s() == pytest.approx(50, abs=0.01)
    c.ack(0, 1)
    assert sub.cursor.mark_delete == 3 and sub.delayed == 0


async def test_other_types_deliver_at_once(
    core: Core, subs: SubscriptionManager, autojump_clock: trio.testing.MockClock
) -> None:
    await core.append_messages("t", 0, [at(100, b"x")])
    for name, kind in [("e", SubscriptionType.EXCLUSIVE), ("f", SubscriptionType.FAILOVER),
                       ("k", SubscriptionType.KEY_SHARED)]:
        c = await subs.subscribe("t", name, kind, initial_position=EARLIEST)
        c.flow(1)
        value, when = await receive(c)
        assert value == b"x" and when < 1


async def test_nack_of_a_due_message_uses_the_backoff(
    core: Core, subs: SubscriptionManager, autojump_clock: trio.testing.MockClock
) -> None:
    policy = RedeliveryPolicy(nack_delay_s=5)
    a = await subs.subscribe("t", "s", SHARED, initial_position=EARLIEST, redelivery=policy)
    b = await subs.subscribe("t", "s", SHARED)
    a.flow(10)
    await core.append_messages("t", 0, [at(10, b"x")])
    d = await a.receive()
    assert now_s() == pytest.approx(10, abs=0.01) and d.redelivery_count == 0
    a.nack(d.partition, d.offset)
    b.flow(10)
    a.close()  # the redelivery goes to b, after the backoff, not held again
    d = await b.receive()
    assert d.offset == 0 and d.redelivery_count == 1
    assert now_s() == pytest.approx(15, abs=0.01)
    b.ack(d.partition, d.offset)
    assert partition(subs).cursor.mark_delete == 1


async def test_held_messages_outlive_their_consumers(
    core: Core, subs: SubscriptionManager, autojump_clock: trio.testing.MockClock
) -> None:
    a = await subs.subscribe("t", "s", SHARED, initial_position=EARLIEST)
    b = await subs.subscribe("t", "s", SHARED)
    a.flow(10)
    await core.append_messages("t", 0, [at(10, b"x"), at(20, b"y")])
    await trio.sleep(1)
    assert partition(subs).delayed == 2
    a.close()  # b stays: the subscription keeps holding
    b.flow(10)
    got = [await receive(b) for _ in range(2)]
    assert [v for v, _ in got] == [b"x", b"y"]
    assert [t for _, t in got] == pytest.approx([10, 20], abs=0.01)
    b.close()  # the last consumer: everything is re-read from the cursor
    c = await subs.subscribe("t", "s", SHARED)
    c.flow(10)
    assert {(await c.receive()).offset for _ in range(2)} == {0, 1}
    assert now_s() < 21  # already due: delivered at once


async def test_cap_stops_the_read_ahead_until_some_are_due(
    core: Core, autojump_clock: trio.testing.MockClock
) -> None:
    async with open_subscription_manager(core, clock_ms=clock_ms, max_delayed=3) as subs:
        c = await subs.subscribe("t", "s", SHARED, initial_position=EARLIEST)
        c.flow(100)
        await core.append_messages("t", 0, [at(10 + i, b"d%d" % i) for i in range(5)])
        await core.append_messages("t", 0, [Message(None, b"now")])
        await trio.sleep(5)
        sub = partition(subs)
        assert sub.delayed == 3 and c.queued == 0  # "now" waits behind the full index
        got = [await receive(c) for _ in range(6)]
        assert sub.delayed == 0
        values = [v for v, _ in got]
        assert values[0] == b"d0" and got[0][1] == pytest.approx(10, abs=0.01)
        assert sorted(values) == sorted([b"d%d" % i for i in range(5)] + [b"now"])
        assert got[values.index(b"now")][1] >= 10  # read only once room was made
        for v, t in got:
            if v != b"now":
                assert t == pytest.approx(10 + int(v[1:]), abs=0.01)


async def test_purge_drops_held_messages(
    core: Core, subs: SubscriptionManager, autojump_clock: trio.testing.MockClock
) -> None:
    c = await subs.subscribe("t", "s", SHARED, initial_position=EARLIEST)
    c.flow(10)
    await core.append_messages("t", 0, [at(10), at(20)])
    await trio.sleep(1)
    assert await subs.purge("t", "s") == 2
    assert partition(subs).delayed == 0
    await nothing_within(c, 100)


class FakeEpochClock:
    """An epoch-ms clock the test moves by hand (file:// storage runs in threads,
    which would let an autojump clock leap past the due times)."""

    def __init__(self) -> None:
        self.ms = EPOCH_MS

    def __call__(self) -> int:
        return self.ms


async def until(predicate: Callable[[], bool]) -> None:
    """Poll ``predicate`` (state changed by tasks that wait on worker threads)."""
    with trio.fail_after(10):
        for _ in itertools.count():
            if predicate():
                return
            await trio.sleep(0.001)


async def test_restart_holds_them_again(tmp_path: Path) -> None:
    url = f"file://{tmp_path}"
    clock = FakeEpochClock()
    async with open_storage(url) as storage, open_core(storage, SETTINGS, clock_ms=clock) as core:
        await core.create_topic("t", 1)
        await core.append_messages("t", 0, [at(100, b"late"), Message(None, b"now"), at(50)])
        async with open_subscription_manager(core, clock_ms=clock) as subs:
            c = await subs.subscribe("t", "s", SHARED, initial_position=EARLIEST)
            c.flow(10)
            d = await c.receive()
            assert d.message.value == b"now"
            c.ack(d.partition, d.offset)
            await until(lambda: partition(subs).delayed == 2)
    async with (
        open_storage(url) as storage,
        open_core(storage, SETTINGS, clock_ms=clock) as core,
        open_subscription_manager(core, clock_ms=clock) as subs,
    ):
        assert (await subs.list_subscriptions("t"))[0].backlog == 2
        c = await subs.subscribe("t", "s", SHARED)
        c.flow(10)
        sub = partition(subs)
        await until(lambda: sub.delayed == 2)
        assert c.queued == 0
        clock.ms = EPOCH_MS + 50_000
        sub.wake()
        with trio.fail_after(10):
            first = await c.receive()
        assert first.offset == 2 and sub.delayed == 1 and c.queued == 0
        c.ack(first.partition, first.offset)
        clock.ms = EPOCH_MS + 100_000
        sub.wake()
        with trio.fail_after(10):
            second = await c.receive()
        assert second.offset == 0 and second.message.value == b"late"
