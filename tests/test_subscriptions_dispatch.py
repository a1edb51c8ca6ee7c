"""Dispatchers and the redelivery queue/policy as pure logic (no trio, no core)."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
from hypothesis import given
from hypothesis import strategies as st

from core.cursor import Cursor
from core.names import TopicName
from core.records import Message
from core.subscriptions.backlog import oldest, ready_ranges
from core.subscriptions.dispatch import (
    HASH_RANGE,
    ExclusiveDispatcher,
    FailoverDispatcher,
    KeySharedDispatcher,
    SharedDispatcher,
    key_hash,
)
from core.subscriptions.errors import ConsumerBusy
from core.subscriptions.filters import all_of, any_of, headers_match, key_in, key_prefix
from core.subscriptions.redelivery import (
    RedeliveryPolicy,
    RedeliveryQueue,
    Waiting,
    dead_letter_message,
    dead_letter_topic,
)


@dataclass(eq=False)
class Fake:
    consumer_id: int
    name: str
    priority: int = 0
    permits: int = 10


def test_exclusive_refuses_second_consumer() -> None:
    d: ExclusiveDispatcher[Fake] = ExclusiveDispatcher(0)
    a, b = Fake(1, "a"), Fake(2, "b")
    d.add(a)
    with pytest.raises(ConsumerBusy):
        d.add(b)
    assert d.consumers == [a]
    assert d.select(b"k") is a
    a.permits = 0
    assert d.select(b"k") is None


def test_shared_round_robin_skips_consumers_without_permits() -> None:
    d: SharedDispatcher[Fake] = SharedDispatcher(0)
    a, b, c = Fake(1, "a"), Fake(2, "b", permits=0), Fake(3, "c")
    for x in (a, b, c):
        d.add(x)
    assert [d.select(None) for _ in range(4)] == [a, c, a, c]
    a.permits = c.permits = 0
    assert d.select(None) is None


def test_failover_picks_by_priority_then_name_and_spreads_partitions() -> None:
    consumers = [Fake(1, "b"), Fake(2, "a"), Fake(3, "c", priority=1)]
    actives = []
    for p in range(3):
        d: FailoverDispatcher[Fake] = FailoverDispatcher(p)
        for c in consumers:
            d.add(c)
        actives.append(d.active())
    assert [a.name for a in actives if a] == ["a", "b", "a"]
    d = FailoverDispatcher(0)
    for c in consumers:
        d.add(c)
    assert [c.name for c in d.standbys()] == ["b", "c"]
    d.remove(consumers[1])  # "a" leaves: "b" takes over
    active = d.active()
    assert active is not None and active.name == "b"


def test_key_shared_ranges_split_and_merge() -> None:
    d: KeySharedDispatcher[Fake] = KeySharedDispatcher(0)
    a, b, c = Fake(1, "a"), Fake(2, "b"), Fake(3, "c")
    d.add(a)
    assert d.ranges() == [(0, HASH_RANGE, a)]
    d.add(b)
    assert d.ranges() == [(0, HASH_RANGE // 2, a), (HASH_RANGE // 2, HASH_RANGE, b)]
    d.add(c)
    assert [r[2] for r in d.ranges()] == [a, c, b]
    d.remove(c)
    assert d.ranges() == [(0, HASH_RANGE // 2, a), (HASH_RANGE // 2, HASH_RANGE, b)]
    d.remove(a)
    assert d.ranges() == [(0, HASH_RANGE, b)]


@given(st.lists(st.binary(max_size=8), min_size=1, max_size=30), st.integers(1, 6))
def test_key_shared_owner_matches_ranges(keys: list[bytes], n: int) -> None:
    d: KeySharedDispatcher[Fake] = KeySharedDispatcher(0)
    consumers = [Fake(i, f"c{i}") for i in range(n)]
    for c in consumers:
        d.add(c)
    ranges = d.ranges()
    assert ranges[0][0] == 0 and ranges[-1][1] == HASH_RANGE
    assert all(ranges[i][1] == ranges[i + 1][0] for i in range(len(ranges) - 1))
    for key in keys:
        h = key_hash(key)
        (owner,) = [c for lo, hi, c in ranges if lo <= h < hi]
        assert d.owner(key) is owner
        assert d.select(key) is owner


def test_key_shared_moved_key_waits_for_previous_holder() -> None:
    d: KeySharedDispatcher[Fake] = KeySharedDispatcher(0)
    a, b = Fake(1, "a"), Fake(2, "b")
    d.add(a)
    # find a key that moves to b once b joins
    key = next(k for k in (bytes([i]) for i in range(256)) if key_hash(k) >= HASH_RANGE // 2)
    assert d.select(key) is a
    d.on_delivered(a, key)
    d.on_delivered(a, key)
    d.add(b)
    assert d.owner(key) is b
    assert d.select(key) is None  # a still holds two messages of the key
    d.on_released(a, key)
    assert d.select(key) is None
    d.on_released(a, key)
    assert d.select(key) is b


def test_nack_backoff_is_exponential_and_capped() -> None:
    p = RedeliveryPolicy(nack_delay_s=1, nack_multiplier=2, nack_max_delay_s=10)
    assert [p.nack_delay(n) for n in range(1, 7)] == [1, 2, 4, 8, 10, 10]
    assert p.nack_delay(10**6) == 10
    assert not RedeliveryPolicy().should_dead_letter(10**6)
    q = RedeliveryPolicy(max_redeliveries=2)
    assert [q.should_dead_letter(n) for n in (1, 2, 3)] == [False, False, True]
    with pytest.raises(ValueError):
        RedeliveryPolicy(nack_multiplier=0.5)
    with pytest.raises(ValueError):
        RedeliveryPolicy(ack_timeout_s=0)


def test_redelivery_queue_orders_by_offset() -> None:
    q = RedeliveryQueue()
    m = Message(None, b"x")
    for offset, ready in [(5, 3.0), (1, 9.0), (3, 1.0)]:
        q.add(Waiting(offset, m, 0, ready))
    assert [w.offset for w in q.in_order()] == [1, 3, 5]
    assert q.next_ready_at(2.0) == 3.0
    assert q.remove(3) is not None and q.remove(3) is None
    assert q.remove_below(5) == 1
    assert [w.offset for w in q.in_order()] == [5]
    assert 5 in q and len(q) == 1


def test_dead_letter_topic_name_and_headers() -> None:
    topic = TopicName("public", "default", "orders")
    assert str(dead_letter_topic(topic.with_partition(2), "my/sub", RedeliveryPolicy())) == (
        "persistent://public/default/orders-my_sub-DLQ"
    )
    explicit = dead_letter_topic(topic, "s", RedeliveryPolicy(dead_letter_topic="dead"))
    assert str(explicit) == "persistent://public/default/dead"
    msg = dead_letter_message(Message(b"k", b"v", [("h", b"1")], 7), topic, 2, 42)
    assert msg.key == b"k" and msg.value == b"v" and msg.timestamp_ms == 7
    assert ("h", b"1") in msg.headers and ("ps.dlq.offset", b"42") in msg.headers


def test_filters() -> None:
    m = Message(b"a.b", b"", [("x", b"1"), ("y", b"2")])
    assert key_in([b"a.b"])(m) and not key_in([None])(m)
    assert key_prefix(b"a.")(m) and not key_prefix(b"b")(m)
    assert headers_match({"x": b"1", "y": None})(m)
    assert not headers_match({"x": b"1", "z": None})(m)
    assert headers_match({"x": b"9", "y": b"2"}, match_any=True)(m)
    assert all_of(key_prefix(b"a"), headers_match({}))(m)
    assert not any_of()(m)


@given(
    st.integers(0, 5),
    st.sets(st.integers(0, 60)),
    st.sets(st.integers(0, 60)),
    st.integers(0, 60),
    st.integers(0, 70),
)
def test_ready_ranges_and_oldest(
    mark_delete: int, acked: set[int], held: set[int], hw: int, count: int
) -> None:
    cursor = Cursor(mark_delete)
    for o in acked:
        cursor.ack(o)
    ranges = list(ready_ranges(cursor, held, hw))
    flat = [o for lo, hi in ranges for o in range(lo, hi)]
    expected = [o for o in range(hw) if not cursor.is_acked(o) and o not in held]
    assert flat == expected
    assert all(lo < hi for lo, hi in ranges)
    assert [o for lo, hi in oldest(ranges, count) for o in range(lo, hi)] == expected[:count]
