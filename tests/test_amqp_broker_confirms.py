"""Publisher confirm numbering and coalescing, and per-channel delivery bookkeeping."""

from __future__ import annotations

from typing import Any

import pytest

from handlers.amqp.broker.confirms import Confirm, ConfirmTracker
from handlers.amqp.broker.consumers import AmqpConsumer, ChannelDeliveries
from handlers.amqp.errors import AMQPChannelError, ReplyCode


def test_in_order_acks_coalesce_into_one_multiple_ack() -> None:
    t = ConfirmTracker()
    tags = [t.publish() for _ in range(5)]
    assert tags == [1, 2, 3, 4, 5]
    assert t.settle(tags, ack=True) == [Confirm(5, True, True)]
    assert t.unconfirmed == 0
    six = t.publish()
    assert t.settle([six], ack=True) == [Confirm(6, False, True)]


def test_out_of_order_settlement_waits_for_the_low_water_mark() -> None:
    t = ConfirmTracker()
    for _ in range(4):
        t.publish()
    assert t.settle([3, 4], ack=True) == []
    assert t.unconfirmed == 2
    assert t.settle([1], ack=True) == [Confirm(1, False, True)]
    assert t.settle([2], ack=False) == [Confirm(2, False, False), Confirm(4, True, True)]


def test_nacks_split_runs() -> None:
    t = ConfirmTracker()
    for _ in range(4):
        t.publish()
    out = t.settle([1, 2], ack=True) + t.settle([3, 4], ack=False)
    assert out == [Confirm(2, True, True), Confirm(4, True, False)]
    with pytest.raises(ValueError):
        t.settle([4], ack=True)


class FakeCore:
    """Stands in for a core consumer: the bookkeeping never calls it."""


def consumer(prefetch: int, no_ack: bool = False) -> AmqpConsumer:
    return AmqpConsumer("tag", "q", 1, no_ack, False, prefetch)


def test_per_consumer_prefetch() -> None:
    d = ChannelDeliveries()
    c = consumer(2)
    core: Any = FakeCore()
    assert d.has_credit(c)
    t1 = d.delivered(core, 0, 10, "q", c)
    d.delivered(core, 0, 11, "q", c)
    assert not d.has_credit(c)
    assert [u.offset for u in d.take(t1, multiple=False)] == [10]
    assert d.has_credit(c) and c.unacked == 1


def test_global_prefetch_is_shared_and_no_ack_is_unlimited() -> None:
    d = ChannelDeliveries()
    d.qos(1, global_=True)
    a, b = consumer(0), consumer(0)
    core: Any = FakeCore()
    d.delivered(core, 0, 1, "q", a)
    assert not d.has_credit(a) and not d.has_credit(b)
    assert d.has_credit(consumer(0, no_ack=True))
    d.active = False
    assert not d.has_credit(consumer(0, no_ack=True))


def test_get_deliveries_do_not_count_against_prefetch() -> None:
    d = ChannelDeliveries()
    d.qos(1, global_=True)
    core: Any = FakeCore()
    d.delivered(core, 0, 1, "q", None)
    assert d.has_credit(consumer(0))


def test_take_multiple_and_unknown_tags() -> None:
    d = ChannelDeliveries()
    c = consumer(0)
    core: Any = FakeCore()
    tags = [d.delivered(core, 0, n, "q", c) for n in range(5)]
    assert [u.delivery_tag for u in d.take(tags[2], multiple=True)] == tags[:3]
    with pytest.raises(AMQPChannelError) as info:
        d.take(tags[0], multiple=False)
    assert info.value.reply_code is ReplyCode.PRECONDITION_FAILED
    with pytest.raises(AMQPChannelError):
        d.take(tags[1], multiple=True)  # nothing at or below it is left
    taken = d.take(0, multiple=True)
    assert [u.delivery_tag for u in taken] == tags[3:]
    for item in taken:
        d.restore(item)
    assert d.unacked_count == 2 and c.unacked == 2
    assert [u.delivery_tag for u in d.take_all()] == tags[3:]
