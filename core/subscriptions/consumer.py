"""The consumer handle a protocol handler holds for one consumer of a subscription.

A consumer is attached to the subscription on every partition it asked for.
It grants *permits* with :meth:`Consumer.flow`; the subscription only delivers
while permits are left, one permit per message, into the consumer's inbox,
which :meth:`Consumer.receive` drains.  So the broker never holds more
delivered messages for a consumer than it asked for, and ``permits + queued``
never exceeds ``max_permits``.

Acks, nacks and rejects name a ``(partition, offset)``; they are synchronous
(the cursor change is immediate, its persistence coalesced).  :meth:`Consumer.close` hands every
unacknowledged message back to the subscription for redelivery to others.
"""

from __future__ import annotations

import itertools
from collections import deque
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

import trio

from core.subscriptions.errors import ConsumerClosed, UnknownMessage
from core.subscriptions.types import ConsumerInfo, Delivery, SubscriptionType

if TYPE_CHECKING:
    from core.subscriptions.subscription import PartitionSubscription

__all__ = ["DEFAULT_MAX_PERMITS", "Consumer"]

DEFAULT_MAX_PERMITS = 1000
_ids = itertools.count(1)


class Consumer:
    """One consumer of a subscription (see the module docstring).

    Create it through :meth:`core.subscriptions.manager.SubscriptionManager.subscribe`.
    """

    def __init__(
        self,
        topic: str,
        subscription: str,
        type: SubscriptionType,
        name: str | None = None,
        priority: int = 0,
        max_permits: int = DEFAULT_MAX_PERMITS,
    ) -> None:
        if max_permits < 1:
            raise ValueError("max_permits must be >= 1")
        self.consumer_id = next(_ids)
        self.name = name if name is not None else f"consumer-{self.consumer_id}"
        self.priority = priority
        self.topic = topic
        self.subscription = subscription
        self.type = type
        self.max_permits = max_permits
        self._permits = 0
        self._inbox: deque[Delivery] = deque()
        self._queued: set[tuple[int, int]] = set()  # (partition, offset) in the inbox
        self._arrived: trio.Event | None = None
        self._partitions: dict[int, PartitionSubscription] = {}
        self._closed = False
        self.close_reason = ""
        #: called once when the consumer closes (the manager's bookkeeping)
        self.on_close: Callable[[Consumer], None] | None = None

    # ------------------------------------------------------------ state

    @property
    def permits(self) -> int:
        """How many more messages the subscription may deliver now."""
        return self._permits

    @property
    def queued(self) -> int:
        """Delivered messages not yet taken with :meth:`receive`."""
        return len(self._inbox)

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def partitions(self) -> list[int]:
        """The partitions this consumer is attached to."""
        return sorted(self._partitions)

    @property
    def unacked(self) -> int:
        """Messages delivered to this consumer and not acknowledged (all partitions)."""
        return sum(sub.unacked_of(self) for sub in self._partitions.values())

    def info(self) -> ConsumerInfo:
        """A snapshot for visibility listings."""
        return ConsumerInfo(
            self.consumer_id, self.name, self.priority, self._permits, self.unacked,
            len(self._inbox),
        )

    def __repr__(self) -> str:
        return f"<Consumer {self.name!r} #{self.consumer_id} on {self.subscription!r}>"

    # ------------------------------------------------------------ flow and receive

    def flow(self, n: int) -> int:
        """Grant ``n`` more permits; return the permits now available.

        Permits are capped so that ``permits + queued <= max_permits``.
        """
        self._check_open()
        if n < 0:
            raise ValueError("permits cannot be negative")
        self._permits = min(self._permits + n, self.max_permits - len(self._inbox))
        if n:
            for sub in self._partitions.values():
                sub.permits_granted()
        return self._permits

    async def receive(self) -> Delivery:
        """The next delivered message; waits for one.

        Raises :class:`ConsumerClosed` once the consumer is closed (messages
        still queued then are handed back to the subscription, not returned).
        """
        if not self._inbox:
            await self._wait_inbox()
        self._check_open()
        return self._pop()

    async def _wait_inbox(self) -> None:
        """Wait until a message is queued (raises :class:`ConsumerClosed` once closed)."""
        while not self._inbox:
            self._check_open()
            if self._arrived is None:
                self._arrived = trio.Event()
            await self._arrived.wait()

    def receive_nowait(self) -> Delivery:
        """The next delivered message; raises :class:`trio.WouldBlock` when none is queued."""
        self._check_open()
        if not self._inbox:
            raise trio.WouldBlock
        return self._pop()

    async def receive_batch(self, max_count: int) -> list[Delivery]:
        """Up to ``max_count`` delivered messages in delivery order; waits for the first.

        :meth:`receive` for a handler that serves messages in batches: one call
        (and, when it takes the whole inbox, no per-message bookkeeping) instead
        of one per message.  Raises ``ValueError`` for ``max_count < 1`` and
        :class:`ConsumerClosed` as :meth:`receive` does.
        """
        if max_count < 1:
            raise ValueError("max_count must be >= 1")
        if not self._inbox:
            await self._wait_inbox()
        self._check_open()
        return self._pop_many(max_count)

    def receive_batch_nowait(self, max_count: int) -> list[Delivery]:
        """Up to ``max_count`` queued deliveries in delivery order, without waiting;
        raises :class:`trio.WouldBlock` when none is queued (see :meth:`receive_batch`)."""
        if max_count < 1:
            raise ValueError("max_count must be >= 1")
        self._check_open()
        if not self._inbox:
            raise trio.WouldBlock
        return self._pop_many(max_count)

    def _pop_many(self, max_count: int) -> list[Delivery]:
        inbox = self._inbox
        if max_count >= len(inbox):
            out = list(inbox)
            inbox.clear()
            self._queued.clear()
            return out
        popleft = inbox.popleft
        discard = self._queued.discard
        out = []
        for _ in range(max_count):
            delivery = popleft()
            discard((delivery.partition, delivery.offset))
            out.append(delivery)
        return out

    def _pop(self) -> Delivery:
        delivery = self._inbox.popleft()
        self._queued.discard((delivery.partition, delivery.offset))
        return delivery

    # ------------------------------------------------------------ acks

    def _sub(self, partition: int, offset: int) -> PartitionSubscription:
        self._check_open()
        sub = self._partitions.get(partition)
        if sub is None:
            raise UnknownMessage(partition, offset)
        return sub

    def ack(self, partition: int, offset: int) -> None:
        """Acknowledge one message (raises :class:`UnknownMessage`, :class:`ConsumerClosed`)."""
        self._sub(partition, offset).ack(offset)

    def ack_many(self, partition: int, offsets: Iterable[int]) -> None:
        """Acknowledge several messages of ``partition`` (e.g. an AMQP ``multiple`` ack):
        like one :meth:`ack` each, with one wake-up of the subscription.  Raises
        :class:`UnknownMessage` at the first unknown offset (earlier ones stay acked)."""
        self._check_open()
        wanted = list(offsets)
        if wanted:
            self._sub(partition, wanted[0]).ack_many(wanted)

    def ack_cumulative(self, partition: int, offset: int) -> None:
        """Acknowledge every message of ``partition`` up to ``offset`` (Exclusive/Failover)."""
        self._sub(partition, offset).ack_cumulative(offset)

    def nack(self, partition: int, offset: int) -> None:
        """Negative ack: redeliver the message after the policy's backoff (or dead-letter it)."""
        self._sub(partition, offset).nack(self, offset)

    def reject(self, partition: int, offset: int) -> None:
        """Never redeliver: dead-letter the message when the policy has dead letters on,
        else acknowledge it (AMQP ``basic.reject`` without requeue)."""
        self._sub(partition, offset).reject(self, offset)

    def close(self, reason: str = "closed") -> None:
        """Detach from every partition; unacknowledged messages go back for redelivery.

        Idempotent.  Waiting :meth:`receive` calls raise :class:`ConsumerClosed`.
        """
        if self._closed:
            return
        self._closed = True
        self.close_reason = reason
        subs, self._partitions = list(self._partitions.values()), {}
        self._inbox.clear()
        self._queued.clear()
        self._permits = 0
        for sub in subs:
            sub.remove_consumer(self)
        self._wake_receiver()
        if self.on_close is not None:
            self.on_close(self)

    def _check_open(self) -> None:
        if self._closed:
            raise ConsumerClosed(f"consumer {self.name!r} is closed: {self.close_reason}")

    # ------------------------------------------------------------ for subscriptions

    def _attach(self, partition: int, sub: PartitionSubscription) -> None:
        self._partitions[partition] = sub

    def _push(self, delivery: Delivery) -> None:
        """Deliver one message (the subscription checked the permits)."""
        if self._permits <= 0:
            raise AssertionError("delivery without a permit")
        self._permits -= 1
        self._inbox.append(delivery)
        self._queued.add((delivery.partition, delivery.offset))
        self._wake_receiver()

    def _is_queued(self, partition: int, offset: int) -> bool:
        """Whether the delivery of ``(partition, offset)`` waits in the inbox."""
        return (partition, offset) in self._queued

    def _take_back(self, partition: int, offsets: set[int] | None = None) -> int:
        """Drop queued deliveries of ``partition`` (all, or those in ``offsets``) and
        restore their permits; return how many."""
        queued = self._queued
        if offsets is not None and not any((partition, o) in queued for o in offsets):
            return 0  # the common case (an ack of a received message): no inbox scan
        kept: deque[Delivery] = deque()
        dropped = 0
        for d in self._inbox:
            if d.partition == partition and (offsets is None or d.offset in offsets):
                dropped += 1
                queued.discard((d.partition, d.offset))
            else:
                kept.append(d)
        self._inbox = kept
        self._permits += dropped
        return dropped

    def _wake_receiver(self) -> None:
        event, self._arrived = self._arrived, None
        if event is not None:
            event.set()
