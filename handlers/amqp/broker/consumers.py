"""Per-channel delivery bookkeeping: consumers, delivery tags, unacked messages, prefetch.

Sans-IO: the session's delivery tasks ask :meth:`ChannelDeliveries.has_credit` before sending a
message, record it with :meth:`ChannelDeliveries.delivered`, and resolve the client's
``basic.ack``/``nack``/``reject`` with :meth:`ChannelDeliveries.take`.

Prefetch, as RabbitMQ interprets ``basic.qos``:

* ``global=false``: the limit applies to each consumer started *afterwards* on the channel;
* ``global=true``: one limit shared by all consumers of the channel;
* 0 means no limit; both may be set, and a delivery needs room under both.

``basic.get`` deliveries and ``no-ack`` consumers are not limited by prefetch (RabbitMQ).
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from handlers.amqp.errors import AMQPChannelError, ReplyCode

if TYPE_CHECKING:
    from core.records import Message
    from core.subscriptions import Consumer

__all__ = ["AmqpConsumer", "ChannelDeliveries", "Unacked"]


@dataclass(slots=True, eq=False)
class AmqpConsumer:
    """One ``basic.consume`` on a channel."""

    tag: str
    queue: str
    channel: int
    no_ack: bool
    exclusive: bool
    prefetch: int
    unacked: int = 0
    #: core consumers by source exchange ("" for the queue's own topic)
    sources: dict[str, Consumer] = field(default_factory=dict)
    cancelled: bool = False


@dataclass(slots=True)
class Unacked:
    """A delivered, not yet acknowledged message."""

    delivery_tag: int
    core: Consumer
    partition: int
    offset: int
    queue: str
    consumer: AmqpConsumer | None
    #: the message and the exchange it came through (to dead-letter it on reject)
    message: Message | None = None
    exchange: str = ""


class ChannelDeliveries:
    """Delivery tags, unacked messages and prefetch limits of one channel."""

    def __init__(self) -> None:
        self.consumers: dict[str, AmqpConsumer] = {}
        self.prefetch_consumer = 0
        self.prefetch_channel = 0
        self.active = True
        self._next_tag = 1
        self._unacked: OrderedDict[int, Unacked] = OrderedDict()
        self._limited = 0  # unacked messages that count against the channel limit

    @property
    def unacked_count(self) -> int:
        return len(self._unacked)

    def qos(self, prefetch_count: int, global_: bool) -> None:
        """Apply ``basic.qos`` (see the module docstring)."""
        if global_:
            self.prefetch_channel = prefetch_count
        else:
            self.prefetch_consumer = prefetch_count

    def has_credit(self, consumer: AmqpConsumer) -> bool:
        """Whether ``consumer`` may receive one more message now."""
        if not self.active or consumer.cancelled:
            return False
        if consumer.no_ack:
            return True
        if consumer.prefetch and consumer.unacked >= consumer.prefetch:
            return False
        return not (self.prefetch_channel and self._limited >= self.prefetch_channel)

    def delivered(
        self, core: Consumer, partition: int, offset: int, queue: str,
        consumer: AmqpConsumer | None, message: Message | None = None, exchange: str = "",
    ) -> int:
        """Record a delivery that needs an ack; return its delivery tag."""
        tag = self.next_tag()
        self._unacked[tag] = Unacked(tag, core, partition, offset, queue, consumer, message,
                                     exchange)
        if consumer is not None:
            consumer.unacked += 1
            self._limited += 1
        return tag

    def next_tag(self) -> int:
        """A fresh delivery tag (for no-ack deliveries too)."""
        tag = self._next_tag
        self._next_tag += 1
        return tag

    def take(self, delivery_tag: int, multiple: bool, method_id: int = 80) -> list[Unacked]:
        """Remove and return what an ack/nack/reject names.

        ``multiple`` with tag 0 means everything unacked.  An unknown tag is 406
        PRECONDITION_FAILED (a channel error), as in RabbitMQ.
        """
        if multiple:
            if delivery_tag == 0:
                tags = list(self._unacked)
            else:
                tags = []
                for t in self._unacked:  # in tag order (restore keeps it sorted)
                    if t > delivery_tag:
                        break
                    tags.append(t)
            if delivery_tag and delivery_tag not in self._unacked and not tags:
                raise _unknown(delivery_tag, method_id)
        else:
            if delivery_tag not in self._unacked:
                raise _unknown(delivery_tag, method_id)
            tags = [delivery_tag]
        return [self._pop(t) for t in tags]

    def all_unacked(self, tags: list[int]) -> bool:
        """Whether every tag in ``tags`` names a distinct unacked delivery."""
        unacked = self._unacked
        if len(tags) == 1:
            return tags[0] in unacked
        return all(t in unacked for t in tags) and len(set(tags)) == len(tags)

    def take_tags(self, tags: list[int]) -> list[Unacked]:
        """Remove and return the deliveries of single acks (each tag checked by
        :meth:`all_unacked`), in the order given."""
        return [self._pop(t) for t in tags]

    def take_all(self) -> list[Unacked]:
        """Every unacked message (channel close, ``basic.recover``)."""
        return [self._pop(t) for t in list(self._unacked)]

    def take_consumer(self, consumer: AmqpConsumer) -> list[Unacked]:
        """The unacked messages of one consumer."""
        return [self._pop(t) for t, u in list(self._unacked.items()) if u.consumer is consumer]

    def restore(self, item: Unacked) -> None:
        """Put back a message taken by :meth:`take` (``tx.rollback`` of its ack)."""
        self._unacked[item.delivery_tag] = item
        self._unacked = OrderedDict(sorted(self._unacked.items()))
        if item.consumer is not None:
            item.consumer.unacked += 1
            self._limited += 1

    def _pop(self, tag: int) -> Unacked:
        item = self._unacked.pop(tag)
        if item.consumer is not None:
            item.consumer.unacked -= 1
            self._limited -= 1
        return item


def _unknown(tag: int, method_id: int) -> AMQPChannelError:
    return AMQPChannelError(
        ReplyCode.PRECONDITION_FAILED, f"unknown delivery tag {tag}", 60, method_id
    )
