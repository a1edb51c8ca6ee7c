"""The per-message fast paths of delivery: batch receive, named-tuple deliveries, expiry checks
skipped for batches without timing headers, and the encoder's header-name cache."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import trio
import trio.testing

from core import headers as h
from core.api import Core, open_core
from core.config import CoreSettings
from core.cursor import Cursor
from core.cursor_store import cursor_key
from core.records import Message, build_plain_batch, decode_batch
from core.subscriptions import (
    Consumer,
    ConsumerClosed,
    Delivery,
    InitialPosition,
    SubscriptionManager,
    SubscriptionType,
    open_subscription_manager,
)
from core.subscriptions.items import Pending, new_pending
from core.subscriptions.types import new_delivery
from storage import open_storage

EARLIEST = InitialPosition.EARLIEST
SETTINGS = CoreSettings(retention_check_interval_ms=0)


@pytest.fixture
async def core() -> AsyncIterator[Core]:
    async with open_storage("memory://") as storage, open_core(storage, SETTINGS) as c:
        await c.create_topic("t", 1)
        yield c


@pytest.fixture
async def subs(core: Core) -> AsyncIterator[SubscriptionManager]:
    async with open_subscription_manager(core, read_ahead=8) as m:
        yield m


async def publish(core: Core, n: int, start: int = 0) -> None:
    await core.append_messages("t", 0, [Message(None, b"%d" % i) for i in range(start, start + n)])


async def ready(c: Consumer, n: int) -> None:
    await trio.testing.wait_all_tasks_blocked()
    assert c.queued == n


# ---------------------------------------------------------------- batch receive


async def test_receive_batch_takes_the_whole_inbox_in_order(
    core: Core, subs: SubscriptionManager
) -> None:
    c = await subs.subscribe("t", "s", initial_position=EARLIEST)
    c.flow(10)
    await publish(core, 6)
    await ready(c, 6)
    got = await c.receive_batch(100)
    assert [d.offset for d in got] == list(range(6))
    assert [d.message.value for d in got] == [b"%d" % i for i in range(6)]
    assert c.queued == 0 and c.permits == 4
    for d in got:
        c.ack(d.partition, d.offset)
    assert c.unacked == 0
    with pytest.raises(trio.WouldBlock):
        c.receive_batch_nowait(5)


async def test_receive_batch_partial_leaves_the_rest_queued(
    core: Core, subs: SubscriptionManager
) -> None:
    c = await subs.subscribe("t", "s", initial_position=EARLIEST)
    c.flow(10)
    await publish(core, 5)
    await ready(c, 5)
    first = c.receive_batch_nowait(2)
    assert [d.offset for d in first] == [0, 1]
    assert c.queued == 3
    # acking a message still in the inbox takes it out (and gives its permit back)
    c.ack(0, 3)
    assert [d.offset for d in c.receive_batch_nowait(10)] == [2, 4]
    assert c.permits == 6


async def test_receive_batch_waits_for_the_first_delivery(
    core: Core, subs: SubscriptionManager
) -> None:
    c = await subs.subscribe("t", "s", initial_position=EARLIEST)
    c.flow(10)
    got: list[Delivery] = []

    async def consume() -> None:
        got.extend(await c.receive_batch(10))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(consume)
        await trio.testing.wait_all_tasks_blocked()
        assert got == []
        await publish(core, 3)
    assert [d.offset for d in got][:1] == [0]
    assert 1 <= len(got) <= 3


async def test_receive_batch_argument_and_closed_errors(subs: SubscriptionManager) -> None:
    c = await subs.subscribe("t", "s", initial_position=EARLIEST)
    with pytest.raises(ValueError):
        c.receive_batch_nowait(0)
    with pytest.raises(ValueError):
        await c.receive_batch(0)
    c.close()
    with pytest.raises(ConsumerClosed):
        c.receive_batch_nowait(1)
    with pytest.raises(ConsumerClosed):
        await c.receive_batch(1)


async def test_batch_received_unacked_messages_go_to_the_next_consumer(
    core: Core, subs: SubscriptionManager
) -> None:
    a = await subs.subscribe("t", "s", SubscriptionType.SHARED, initial_position=EARLIEST)
    a.flow(10)
    await publish(core, 4)
    await ready(a, 4)
    taken = a.receive_batch_nowait(4)
    a.ack(0, taken[0].offset)
    b = await subs.subscribe("t", "s", SubscriptionType.SHARED)
    b.flow(10)
    a.close()
    await trio.testing.wait_all_tasks_blocked()
    again = b.receive_batch_nowait(10)
    assert sorted(d.offset for d in again) == [1, 2, 3]
    assert all(d.redelivery_count == 1 for d in again)


# ---------------------------------------------------------------- tuples


def test_delivery_and_pending_are_immutable_named_tuples() -> None:
    m = Message(b"k", b"v")
    d = new_delivery("t", 1, 7, m, 2, 99)
    assert d == Delivery("t", 1, 7, m, 2, 99)
    assert (d.topic, d.partition, d.offset, d.message, d.redelivery_count,
            d.publish_time_ms) == ("t", 1, 7, m, 2, 99)
    assert type(d) is Delivery
    with pytest.raises(AttributeError):
        d.offset = 8  # type: ignore[misc]
    p = new_pending(None, m, 5, None)  # type: ignore[arg-type]
    assert type(p) is Pending and p.message is m and p.publish_time_ms == 5
    assert p.deadline is None


# ---------------------------------------------------------------- expiry and timing headers


def test_expiry_reads_the_first_canonical_header_only() -> None:
    hs = [("a", b"1"), (h.EXPIRY_MS, b"100"), (h.EXPIRY_MS, b"5")]
    assert h.expiry_deadline_ms(hs, 1_000) == 1_100
    assert not h.is_expired(hs, 1_000, 1_099)
    assert h.is_expired(hs, 1_000, 1_100)
    bad = [(h.EXPIRY_MS, b"007"), (h.EXPIRY_MS, b"5")]
    assert h.expiry_deadline_ms(bad, 1_000) is None
    assert not h.is_expired(bad, 1_000, 10**12)
    assert h.expiry_deadline_ms([], 1) is None and not h.is_expired([], 1, 10**12)


def test_any_timing_header() -> None:
    assert not h.any_timing_header([])
    assert not h.any_timing_header([[], [(h.MQTT_TOPIC, b"a/b"), (h.MQTT_QOS, b"1")]])
    assert h.any_timing_header([[("x", b"")], [("y", b""), (h.EXPIRY_MS, b"bad")]])
    assert h.any_timing_header([[(h.DELIVER_AT_MS, b"1")]])


async def test_expiry_is_checked_when_the_timed_message_is_last_in_its_batch() -> None:
    now = [1_000_000]

    def clock() -> int:
        return now[0]

    async with (
        open_storage("memory://") as storage,
        open_core(storage, SETTINGS, clock_ms=clock) as core,
        open_subscription_manager(core, clock_ms=clock) as subs,
    ):
        await core.create_topic("t", 1)
        c = await subs.subscribe("t", "s", initial_position=EARLIEST)
        await core.append_messages("t", 0, [
            Message(None, b"a", [(h.MQTT_QOS, b"1")], timestamp_ms=now[0]),
            Message(None, b"b", timestamp_ms=now[0]),
            Message(None, b"short", [(h.EXPIRY_MS, b"1000")], timestamp_ms=now[0]),
        ])
        await core.append_messages("t", 0, [Message(None, b"plain", timestamp_ms=now[0])])
        now[0] += 2_000
        c.flow(10)
        await trio.testing.wait_all_tasks_blocked()
        assert [d.message.value for d in c.receive_batch_nowait(10)] == [b"a", b"b", b"plain"]


# ---------------------------------------------------------------- cursors and encoding


def test_cursor_key_is_cached_but_still_validates() -> None:
    assert cursor_key("persistent/a/b/t/p-0", "s/1") == "cursors/persistent/a/b/t/p-0/s%2F1"
    assert cursor_key("persistent/a/b/t/p-0", "s/1") == "cursors/persistent/a/b/t/p-0/s%2F1"
    for _ in range(2):
        with pytest.raises(ValueError):
            cursor_key("a//b", "s")
        with pytest.raises(ValueError):
            cursor_key("a/b", "")


def test_cursor_bytes_without_individual_acks_round_trip() -> None:
    c = Cursor(mark_delete=300)
    c.ack(300)
    data = c.to_bytes()
    assert data == bytes((1,)) + bytes((0xAD, 0x02)) + b"\x00"
    back = Cursor.from_bytes(data)
    assert back.mark_delete == 301 and not back.individually_acked
    c.ack(305)
    back = Cursor.from_bytes(c.to_bytes())
    assert back.mark_delete == 301 and back.is_acked(305) and not back.is_acked(304)


class _Name(str):
    pass


def test_header_names_from_the_cache_encode_like_fresh_ones() -> None:
    names = ["ps.mqtt.topic", "é-ü", "n" * 300]
    msgs = [Message(b"k", b"v", [(n, b"x") for n in names], 5) for _ in range(3)]
    first, plain = build_plain_batch(msgs)
    again, _ = build_plain_batch(msgs)
    assert plain and first == again
    assert [r.message for r in decode_batch(first)] == msgs
    subclassed = [Message(b"k", b"v", [(_Name("ps.mqtt.topic"), b"x")], 5)]
    batch, plain = build_plain_batch(subclassed)
    assert not plain
    assert decode_batch(batch)[0].message.headers == [("ps.mqtt.topic", b"x")]


async def test_a_timed_message_expires_while_waiting_in_the_read_ahead() -> None:
    now = [1_000_000]

    def clock() -> int:
        return now[0]

    async with (
        open_storage("memory://") as storage,
        open_core(storage, SETTINGS, clock_ms=clock) as core,
        open_subscription_manager(core, clock_ms=clock) as subs,
    ):
        await core.create_topic("t", 1)
        c = await subs.subscribe("t", "s", initial_position=EARLIEST)
        await core.append_messages("t", 0, [Message(None, b"plain", timestamp_ms=now[0])])
        await core.append_messages("t", 0, [
            Message(None, b"short", [(h.EXPIRY_MS, b"1000")], timestamp_ms=now[0]),
            Message(None, b"plain2", timestamp_ms=now[0]),
        ])
        await trio.testing.wait_all_tasks_blocked()
        group = subs.get("t", "s")
        assert group is not None
        sub = group.partitions[0]
        assert sub.expired == 0 and len(sub._read_ahead) == 3  # read, not delivered
        now[0] += 2_000
        c.flow(10)
        await trio.testing.wait_all_tasks_blocked()
        assert [d.message.value for d in c.receive_batch_nowait(10)] == [b"plain", b"plain2"]
        assert sub.expired == 1
