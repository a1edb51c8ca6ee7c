"""Negative acks with backoff, ack timeouts, dead letters, redelivery on disconnect.

Time is trio's: ``autojump_clock`` (MockClock with autojump_threshold=0) makes
the backoffs and timeouts pass without waiting.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import trio
import trio.testing

from core.api import Core, open_core
from core.config import CoreSettings
from core.errors import InvalidTopicName
from core.records import Message, decode_batch
from core.subscriptions import (
    Consumer,
    InitialPosition,
    RedeliveryPolicy,
    SubscriptionManager,
    SubscriptionType,
    open_subscription_manager,
)
from storage import open_storage

SHARED = SubscriptionType.SHARED
EARLIEST = InitialPosition.EARLIEST


@pytest.fixture
async def core() -> AsyncIterator[Core]:
    settings = CoreSettings(retention_check_interval_ms=0)
    async with open_storage("memory://") as storage, open_core(storage, settings) as c:
        await c.create_topic("t", 1)
        yield c


@pytest.fixture
async def subs(core: Core) -> AsyncIterator[SubscriptionManager]:
    async with open_subscription_manager(core) as m:
        yield m


async def receive_at(c: Consumer) -> tuple[int, float]:
    """The next delivery's offset and the trio time it arrived."""
    with trio.fail_after(1000):
        d = await c.receive()
    return d.offset, trio.current_time()


async def test_nack_backoff_grows_and_counts(
    core: Core, subs: SubscriptionManager, autojump_clock: trio.testing.MockClock
) -> None:
    policy = RedeliveryPolicy(nack_delay_s=1, nack_multiplier=3, nack_max_delay_s=5)
    a = await subs.subscribe("t", "s", SHARED, initial_position=EARLIEST, redelivery=policy)
    a.flow(10)
    await core.append_messages("t", 0, [Message(None, b"x")])
    d = await a.receive()
    assert d.redelivery_count == 0
    times = []
    counts = []
    start = trio.current_time()
    for _ in range(4):
        a.nack(d.partition, d.offset)
        before = trio.current_time()
        d = await a.receive()
        times.append(trio.current_time() - before)
        counts.append(d.redelivery_count)
    assert counts == [1, 2, 3, 4]
    assert times == pytest.approx([1, 3, 5, 5])
    assert trio.current_time() - start == pytest.approx(14)
    a.ack(d.partition, d.offset)
    info = (await subs.list_subscriptions("t"))[0]
    assert info.backlog == 0 and info.pending_redelivery == 0


async def test_nacked_message_goes_to_another_consumer(
    core: Core, subs: SubscriptionManager, autojump_clock: trio.testing.MockClock
) -> None:
    policy = RedeliveryPolicy(nack_delay_s=2)
    a = await subs.subscribe("t", "s", SHARED, initial_position=EARLIEST, redelivery=policy)
    a.flow(1)
    await core.append_messages("t", 0, [Message(None, b"x"), Message(None, b"y")])
    first = await a.receive()
    b = await subs.subscribe("t", "s", SHARED)
    b.flow(10)
    assert (await b.receive()).offset == 1
    a.nack(first.partition, first.offset)  # a has no permits left: b gets it
    offset, _ = await receive_at(b)
    assert offset == first.offset


async def test_ack_timeout_redelivers(
    core: Core, subs: SubscriptionManager, autojump_clock: trio.testing.MockClock
) -> None:
    policy = RedeliveryPolicy(ack_timeout_s=30)
    a = await subs.subscribe("t", "s", SHARED, initial_position=EARLIEST, redelivery=policy)
    a.flow(10)
    await core.append_messages("t", 0, [Message(None, b"x"), Message(None, b"y")])
    start = trio.current_time()
    d0, d1 = await a.receive(), await a.receive()
    a.ack(d1.partition, d1.offset)
    offset, at = await receive_at(a)
    assert offset == d0.offset and at - start == pytest.approx(30)
    offset, at = await receive_at(a)  # not acked again: once more, 30 s later
    assert offset == d0.offset and at - start == pytest.approx(60)
    a.ack(0, offset)
    with trio.move_on_after(100):
        await a.receive()
        pytest.fail("an acked message came back")


async def test_dead_letter_after_max_redeliveries(
    core: Core, subs: SubscriptionManager, autojump_clock: trio.testing.MockClock
) -> None:
    policy = RedeliveryPolicy(nack_delay_s=1, max_redeliveries=2)
    a = await subs.subscribe("t", "my-sub", SHARED, initial_position=EARLIEST,
                             redelivery=policy)
    a.flow(10)
    await core.append_messages("t", 0, [Message(b"k", b"poison", [("h", b"v")])])
    await core.append_messages("t", 0, [Message(b"k", b"fine")])
    seen = []
    while True:
        d = await a.receive()
        if d.message.value == b"fine":
            a.ack(d.partition, d.offset)
            continue
        seen.append(d.redelivery_count)
        a.nack(d.partition, d.offset)
        if len(seen) == 3:
            break
    await trio.sleep(10)
    assert seen == [0, 1, 2]
    info = (await subs.list_subscriptions("t"))[0]
    assert info.backlog == 0 and info.unacked == 0 and info.pending_redelivery == 0
    dlq = "t-my-sub-DLQ"
    (entry,) = await core.read(dlq, 0, 0, 1 << 20)
    (stored,) = decode_batch(entry.batch)
    assert stored.message.value == b"poison" and stored.message.key == b"k"
    headers = dict(stored.message.headers)
    assert headers["h"] == b"v" and headers["ps.dlq.offset"] == b"0"
    assert headers["ps.dlq.topic"] == b"persistent://public/default/t"


async def test_disconnect_redelivers_to_others_and_counts(
    core: Core, subs: SubscriptionManager, autojump_clock: trio.testing.MockClock
) -> None:
    a = await subs.subscribe("t", "s", SHARED, initial_position=EARLIEST)
    b = await subs.subscribe("t", "s", SHARED)
    a.flow(3)
    await core.append_messages("t", 0, [Message(None, b"%d" % i) for i in range(3)])
    got = [await a.receive() for _ in range(2)]  # the third stays queued, unreceived
    assert a.queued == 1
    a.close()
    b.flow(10)
    again = sorted([await b.receive() for _ in range(3)], key=lambda d: d.offset)
    assert [d.offset for d in again] == [0, 1, 2]
    assert {d.redelivery_count for d in again} == {1}
    assert [d.offset for d in got] == [0, 1]


async def read_dlq(core: Core, topic: str) -> list[Message]:
    out = []
    for entry in await core.read(topic, 0, 0, 1 << 20):
        out.extend(s.message for s in decode_batch(entry.batch))
    return out


async def test_reject_dead_letters_with_new_key_or_drops(
    core: Core, subs: SubscriptionManager, autojump_clock: trio.testing.MockClock
) -> None:
    policy = RedeliveryPolicy(dead_letter_topic="dlx", dead_letter_key=b"rk")
    a = await subs.subscribe("t", "s", SHARED, initial_position=EARLIEST, redelivery=policy)
    plain = await subs.subscribe("t", "plain", SHARED, initial_position=EARLIEST)
    a.flow(10)
    plain.flow(10)
    await core.append_messages("t", 0, [Message(b"k", b"bad"), Message(b"k", b"good")])
    bad, good = await a.receive(), await a.receive()
    a.reject(bad.partition, bad.offset)
    a.ack(good.partition, good.offset)
    await trio.sleep(1)
    (dead,) = await read_dlq(core, "dlx")
    assert dead.value == b"bad" and dead.key == b"rk"
    d = await plain.receive()
    plain.reject(d.partition, d.offset)  # no dead letters configured: dropped
    infos = {i.name: i for i in await subs.list_subscriptions("t")}
    assert infos["s"].backlog == 0 and infos["plain"].backlog == 1
    with trio.move_on_after(10):
        await a.receive()
        pytest.fail("a rejected message came back")


async def test_expired_messages_can_be_dead_lettered(
    core: Core, subs: SubscriptionManager, autojump_clock: trio.testing.MockClock
) -> None:
    policy = RedeliveryPolicy(dead_letter_topic="expired")
    a = await subs.subscribe("t", "s", SHARED, initial_position=EARLIEST, redelivery=policy,
                             dead_letter_expired=True)
    gone = Message(None, b"gone", [("ps.expiry-ms", b"5")], timestamp_ms=1)  # long expired
    await core.append_messages("t", 0, [gone, Message(None, b"kept")])
    a.flow(10)
    assert (await a.receive()).message.value == b"kept"
    await trio.sleep(1)
    (dead,) = await read_dlq(core, "expired")
    assert dead.value == b"gone"
    (info,) = await subs.list_subscriptions("t")
    assert info.backlog == 1 and info.pending_redelivery == 0


async def test_purge_and_drop_head_keep_unacked_deliveries(
    core: Core, subs: SubscriptionManager, autojump_clock: trio.testing.MockClock
) -> None:
    a = await subs.subscribe("t", "s", SHARED, initial_position=EARLIEST)
    await core.append_messages("t", 0, [Message(None, b"%d" % i) for i in range(10)])
    a.flow(2)
    held = [await a.receive(), await a.receive()]  # offsets 0 and 1 stay unacked
    assert await subs.drop_head("t", "s", 3) == 5  # 8 ready: 2..6 go, 7..9 stay
    a.flow(10)
    await trio.testing.wait_all_tasks_blocked()
    assert [a.receive_nowait().offset for _ in range(3)] == [7, 8, 9]
    a.ack(0, 7)
    a.close()  # 0, 1, 8 and 9 are ready again
    b = await subs.subscribe("t", "s", SHARED)
    await core.append_messages("t", 0, [Message(None, b"x")] * 3)  # 10..12
    assert (await subs.list_subscriptions("t"))[0].backlog == 7
    b.flow(1)
    first = await b.receive()
    assert first.offset == held[0].offset == 0
    assert await subs.purge("t", "s") == 6
    (info,) = await subs.list_subscriptions("t")
    assert info.backlog == 1 and info.unacked == 1
    b.flow(10)
    await trio.testing.wait_all_tasks_blocked()
    assert b.queued == 0
    b.ack(0, 0)
    assert (await subs.list_subscriptions("t"))[0].backlog == 0


async def test_invalid_dead_letter_topic_is_refused_at_subscribe(
    subs: SubscriptionManager,
) -> None:
    with pytest.raises(InvalidTopicName):
        await subs.subscribe("t", "s", redelivery=RedeliveryPolicy(dead_letter_topic="a/b"))
    assert subs.get("t", "s") is None
