"""A named subscription on one partition: cursor, read-ahead, dispatch, redelivery.

How it works
------------
Offsets flow through four places, each bounded:

* the **read-ahead** — messages read from the log (``read_position`` is the next
  offset to read) and not yet delivered; at most ``read_ahead`` messages (a
  read stops mid-batch when it is full).  Messages already acknowledged are
  skipped on reading; control records, messages the filter rejects and expired
  messages (:class:`SubscriptionOptions`; checked again at delivery) are
  acknowledged on the cursor and skipped;
* **pending** — delivered, not acknowledged; each holds one consumer permit, so
  its size is bounded by the permits consumers granted.  Kept in delivery order,
  which is also ack-timeout order;
* the **redelivery queue** — messages taken back from a consumer (nack, ack
  timeout, consumer gone), delivered again before the read-ahead, lowest offset
  first, once their backoff has passed;
* the **dead letter list** — messages past ``max_redeliveries``, rejected, or
  expired (when asked), published to the dead letter topic in batches and then
  acknowledged by the subscription's task;
* on Shared subscriptions, **delayed** messages (``ps.deliver-at-ms`` in the
  future, :mod:`core.subscriptions.delayed`): read, then held in a capped index
  of ``(due time, offset)`` instead of the read-ahead (a full index stops the
  read-ahead); once due, at most ``_DUE_BATCH`` of them are read from the log
  again into the **due** queue, dispatched after redeliveries and before the
  read-ahead, in due order.

One trio task (:meth:`PartitionSubscription.run`) runs while the subscription has
consumers: it saves the cursor when it changed, publishes dead letters, expires
ack timeouts, dispatches, reads more when the read-ahead runs low, and otherwise
sleeps until woken (a permit, an ack, a new consumer), new data arrives, or the
next timer is due.  Acks, nacks, rejects and consumer changes are synchronous
methods that change the state and wake it; a task failure closes the consumers
of this subscription, never the broker.  How the task waits and what wakes it
(cheaply, and not at all for permits or acks while it has nothing to deliver) is
:mod:`.waiting`.
When the last consumer leaves, every buffer is dropped and ``read_position``
goes back to the first unacknowledged offset.

A durable subscription's cursor is saved (a coalesced write) by the task at most
once per pass, so many acks between two passes cost one save.

The class is split by job: reading the log into the read-ahead, with each stored
batch decoded once however many fills it takes, is :mod:`.read_ahead`; waiting is
:mod:`.waiting`; purge and
drop-head are :mod:`.purging`; transactional acks are :mod:`.txn_acks`; the
per-message records are :mod:`.items`.  This module keeps the state, consumers,
acks, the task and dispatch.
"""

from __future__ import annotations

import itertools
import logging
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import replace
from typing import TYPE_CHECKING

import trio

from core.cursor import Cursor
from core.cursor_store import CursorStore
from core.errors import (
    CoreError,
    PartitionUnavailable,
    UnknownTopic,
)
from core.headers import is_expired
from core.names import TopicName
from core.records import Message
from core.subscriptions.consumer import Consumer
from core.subscriptions.delayed import DEFAULT_MAX_DELAYED, DelayedIndex
from core.subscriptions.dispatch import Dispatcher, make_dispatcher
from core.subscriptions.errors import CumulativeAckNotAllowed, UnknownMessage
from core.subscriptions.filters import MessageFilter
from core.subscriptions.items import Buffered, Pending
from core.subscriptions.log_reads import read_offsets
from core.subscriptions.options import SubscriptionOptions
from core.subscriptions.purging import ReadyAcks
from core.subscriptions.read_ahead import BatchCache, ReadAheadFill, SharedBatchCache
from core.subscriptions.redelivery import (
    DeadLetter,
    DeadLetterReason,
    RedeliveryQueue,
    Waiting,
    dead_letter_topic,
    dead_letters,
    publish_dead_letters,
)
from core.subscriptions.txn_acks import TransactionalAcks
from core.subscriptions.types import Delivery, SubscriptionType
from core.subscriptions.waiting import TaskWaits
from storage.api import StorageError

if TYPE_CHECKING:
    from core.api import Core

__all__ = [
    "DEFAULT_READ_AHEAD",
    "DEFAULT_READ_BYTES",
    "PartitionSubscription",
    "SubscriptionOptions",
]

log = logging.getLogger(__name__)

DEFAULT_READ_AHEAD = 1000
DEFAULT_READ_BYTES = 1 << 20
_RETRY_S = 1.0
_DEAD_LETTER_BATCH = 100
_DUE_BATCH = 100  # delayed messages read back from the log at a time
_INF = float("inf")
#: ``tuple.__new__``: builds a named tuple from a tuple, skipping its generated ``__new__``
_new_tuple = tuple.__new__


class PartitionSubscription(ReadAheadFill, ReadyAcks, TransactionalAcks, TaskWaits):
    """Subscription ``name`` on partition ``partition`` of ``topic`` (see the module docstring).

    ``store`` is None for a non-durable subscription (a reader): its cursor
    lives in memory only.
    """

    def __init__(
        self,
        core: Core,
        topic: TopicName,
        partition: int,
        name: str,
        cursor: Cursor,
        *,
        store: CursorStore | None,
        nursery: trio.Nursery,
        clock_ms: Callable[[], int],
        read_ahead: int = DEFAULT_READ_AHEAD,
        read_bytes: int = DEFAULT_READ_BYTES,
        max_delayed: int = DEFAULT_MAX_DELAYED,
        shared_batches: SharedBatchCache | None = None,
    ) -> None:
        """``max_delayed`` caps the delayed messages held (see the module docstring).

        ``shared_batches`` is the decoded-batch cache shared with the other
        subscriptions (see :mod:`.read_ahead`); without it this one decodes alone.
        """
        if read_ahead < 1 or read_bytes < 1:
            raise ValueError("read_ahead and read_bytes must be positive")
        self.core = core
        self.topic = topic.base
        self.partition = partition
        self.name = name
        self.cursor = cursor
        self.store = store
        self.log_name = self.topic.log_name(partition)
        self._topic_str = str(self.topic)
        self.read_ahead_limit = read_ahead
        self.read_bytes = read_bytes
        self.options = SubscriptionOptions()
        #: messages acknowledged because they expired (since this object was created)
        self.expired = 0
        self._clock_ms = clock_ms
        self.type: SubscriptionType | None = None
        self.consumers: list[Consumer] = []
        self._nursery = nursery
        self._dispatcher: Dispatcher[Consumer] | None = None
        self._read_position = cursor.next_unacked()
        # every offset held (pending, redelivery, dead letters, delayed, due) is below
        self._read_high = self._read_position
        self._read_ahead: deque[Buffered] = deque()
        # the stored batch the read-ahead stopped in
        self._batches = BatchCache(shared_batches, self.log_name)
        self._pending: dict[int, Pending] = {}
        self._redeliver = RedeliveryQueue()
        self._dead: dict[int, Buffered] = {}
        self._delayed = DelayedIndex(max_delayed)
        self._due: dict[int, Buffered] = {}  # insertion order = due order
        self._loading: list[int] = []  # due offsets being read back (in _load_due)
        self._init_waits()
        self._running = False
        self._closed = False
        self._epoch = 0  # bumped by a seek or going idle: an in-flight read is stale
        self._dirty = False  # the cursor changed since it was last saved
        #: called when the task finds the topic deleted (the manager forgets the subscription)
        self.on_gone: Callable[[PartitionSubscription], None] | None = None

    @property
    def durable(self) -> bool:
        return self.store is not None

    @property
    def dispatcher(self) -> Dispatcher[Consumer] | None:
        """The dispatcher while the subscription has consumers."""
        return self._dispatcher

    @property
    def unacked(self) -> int:
        """Delivered and not acknowledged."""
        return len(self._pending)

    @property
    def waiting_redelivery(self) -> int:
        """Taken back from consumers and not yet delivered again (or dead-lettered)."""
        return len(self._redeliver) + len(self._dead)

    @property
    def buffered(self) -> int:
        """Messages in the read-ahead."""
        return len(self._read_ahead)

    @property
    def delayed(self) -> int:
        """Delayed messages held back (not yet due, or due and not yet delivered)."""
        return len(self._delayed) + len(self._due)

    def unacked_of(self, consumer: Consumer) -> int:
        """Messages delivered to ``consumer`` and not acknowledged."""
        return sum(1 for p in self._pending.values() if p.consumer is consumer)

    async def backlog(self) -> int:
        """Offsets below the high watermark not acknowledged.

        While idle, a durable subscription counts from its stored cursor, which
        others may write too (Kafka group offset commits).
        """
        cursor = self.cursor
        if self.store is not None and self._dispatcher is None and not cursor.closed:
            cursor = await self.store.load(self.log_name, self.name) or cursor
        return cursor.backlog(await self.core.latest_offset(self.topic, self.partition))

    # ------------------------------------------------------------ consumers

    def add_consumer(
        self,
        consumer: Consumer,
        type: SubscriptionType,
        options: SubscriptionOptions,
    ) -> None:
        """Attach ``consumer``; the first consumer sets the type and the options.

        The manager checked the type; Exclusive raises :class:`ConsumerBusy` here
        before anything changes.
        """
        if self._closed:
            raise UnknownTopic(f"{self.topic} partition {self.partition} is gone")
        if self._dispatcher is None:
            dispatcher: Dispatcher[Consumer] = make_dispatcher(type, self.partition)
            dispatcher.add(consumer)
            self._dispatcher, self.type, self.options = dispatcher, type, options
        else:
            before = self._dispatcher.active()
            self._dispatcher.add(consumer)
            self._active_changed(before)
        self.consumers.append(consumer)
        consumer._attach(self.partition, self)
        self.wake()
        if not self._running:
            self._running = True
            self._nursery.start_soon(self.run)

    def remove_consumer(self, consumer: Consumer) -> None:
        """Detach ``consumer``; what it held goes back for redelivery."""
        if consumer not in self.consumers or self._dispatcher is None:
            return
        self.consumers.remove(consumer)
        before = self._dispatcher.active()
        self._dispatcher.remove(consumer)
        now = trio.current_time()
        for offset in [o for o, p in self._pending.items() if p.consumer is consumer]:
            self._take_back(offset, now, 0.0)
        if not self.consumers:
            self._go_idle()
        else:
            self._active_changed(before)
        self.wake()

    def _active_changed(self, before: Consumer | None) -> None:
        # Failover: the previous active consumer's messages go to the new one.
        assert self._dispatcher is not None
        after = self._dispatcher.active()
        if before is None or after is before or before not in self.consumers:
            return
        mine = {o for o, p in self._pending.items() if p.consumer is before}
        before._take_back(self.partition, mine)
        now = trio.current_time()
        for offset in sorted(mine):
            self._take_back(offset, now, 0.0, count=False)

    def _go_idle(self) -> None:
        self._epoch += 1
        self._dispatcher = None
        self.type = None
        self._pending.clear()
        self._read_ahead.clear()
        self._redeliver.clear()
        self._dead.clear()
        self._delayed.clear()
        self._due.clear()
        self._batches.clear()
        self._read_position = self.cursor.next_unacked()

    def set_filter(self, filter: MessageFilter | None) -> None:
        """Change the filter of a live subscription (an AMQP binding added or removed).

        Messages in the read-ahead are read again under the new filter; messages
        the old filter already skipped stay acknowledged.
        """
        self.options = replace(self.options, filter=filter)
        lowest = [i.offset for i in self._read_ahead]
        lowest.extend(self._due)
        lowest.extend(self._loading)
        held = self._delayed.lowest_offset()
        if held is not None:
            lowest.append(held)
        if lowest:
            self._read_position = min(lowest)
        self._read_ahead.clear()
        self._delayed.clear()
        self._due.clear()
        self._epoch += 1
        self.wake()

    def close(self, reason: str) -> None:
        """The topic or subscription is gone: close every consumer, drop every buffer."""
        self._closed = True
        for c in list(self.consumers):
            c.close(reason)
        self._go_idle()
        self._batches.close()
        self.cursor.close()
        self.wake()

    # ------------------------------------------------------------ acks

    def _taken(self, offset: int) -> bool:
        """Delivered and not acknowledged, or on its way back (redelivery, dead letter)."""
        return offset in self._pending or offset in self._redeliver or offset in self._dead

    def _known(self, offset: int) -> bool:
        return self._taken(offset) or self.cursor.is_acked(offset)

    def ack(self, offset: int) -> None:
        """Acknowledge ``offset`` (any consumer may ack any delivered message)."""
        pending = self._pending.pop(offset, None)
        if pending is not None:
            # the common case: a pending offset is neither acked nor on its way back
            self.cursor.ack(offset)
            self._release(offset, pending)
            self._after_acks()
            return
        if not self._known(offset):
            raise UnknownMessage(self.partition, offset)
        if self.cursor.is_acked(offset):
            return
        self.cursor.ack(offset)
        self._settle(offset)
        self._save()
        self.wake()

    def ack_many(self, offsets: Iterable[int]) -> None:
        """Acknowledge ``offsets`` in order: as many :meth:`ack` calls, one wake-up.

        Raises :class:`UnknownMessage` at the first offset never delivered; the
        offsets before it stay acknowledged.
        """
        pending, cursor = self._pending, self.cursor
        dispatcher, partition = self._dispatcher, self.partition
        acked = False
        try:
            for offset in offsets:
                held = pending.pop(offset, None)
                if held is None:
                    self.ack(offset)  # acked already, on its way back, or unknown
                    continue
                cursor.ack(offset)
                # _release, inlined
                consumer = held.consumer
                if dispatcher is not None:
                    dispatcher.on_released(consumer, held.message.key)
                if consumer._is_queued(partition, offset):
                    consumer._take_back(partition, {offset})
                acked = True
        finally:
            if acked:
                self._after_acks()

    def ack_cumulative(self, offset: int) -> None:
        """Acknowledge every offset up to ``offset`` (Exclusive and Failover only)."""
        if self.type is not None and not self.type.allows_cumulative_ack:
            raise CumulativeAckNotAllowed(f"{self.type.value} subscriptions ack individually")
        if not self._known(offset):
            raise UnknownMessage(self.partition, offset)
        self.cursor.ack_cumulative(offset)
        for o in [o for o in self._pending if o <= offset]:
            self._settle(o)
        self._redeliver.remove_below(offset + 1)
        for o in [o for o in self._dead if o <= offset]:
            del self._dead[o]
        while self._read_ahead and self._read_ahead[0].offset <= offset:
            self._read_ahead.popleft()
        self._drop_held(self.cursor.is_acked)
        self._save()
        self.wake()

    def _settle(self, offset: int) -> None:
        pending = self._pending.pop(offset, None)
        if pending is not None:
            self._release(offset, pending)
        self._redeliver.remove(offset)
        self._dead.pop(offset, None)

    def _release(self, offset: int, pending: Pending) -> None:
        """``offset`` (popped from pending) was acknowledged: free its key and inbox slot."""
        consumer = pending.consumer
        if self._dispatcher is not None:
            self._dispatcher.on_released(consumer, pending.message.key)
        if consumer._is_queued(self.partition, offset):
            consumer._take_back(self.partition, {offset})

    def nack(self, consumer: Consumer, offset: int) -> None:
        """Negative ack: redeliver ``offset`` after the backoff (or dead-letter it).

        A no-op when ``offset`` was acked, is waiting for redelivery, or is now
        held by another consumer; :class:`UnknownMessage` when never delivered.
        """
        pending = self._pending.get(offset)
        if pending is None:
            if self._known(offset):
                return  # acked or already waiting for redelivery
            raise UnknownMessage(self.partition, offset)
        if pending.consumer is not consumer:
            return  # taken from it meanwhile (failover switch, ack timeout): nothing to undo
        consumer._take_back(self.partition, {offset})
        self._take_back(offset, trio.current_time(), None)
        self.wake()

    def reject(self, consumer: Consumer, offset: int) -> None:
        """The consumer will never process ``offset``: dead-letter it when the policy has
        dead letters on, else acknowledge it (drop).  No-op / errors as :meth:`nack`."""
        pending = self._pending.get(offset)
        if pending is None:
            if self._known(offset):
                return
            raise UnknownMessage(self.partition, offset)
        if pending.consumer is not consumer:
            return
        if not self.options.redelivery.dead_letters:
            self.ack(offset)
            return
        consumer._take_back(self.partition, {offset})
        del self._pending[offset]
        if self._dispatcher is not None:
            self._dispatcher.on_released(consumer, pending.message.key)
        self._dead[offset] = DeadLetter(offset, pending.message, pending.publish_time_ms,
                                        DeadLetterReason.REJECTED)
        self.wake()

    def _take_back(
        self, offset: int, now: float, delay: float | None, *, count: bool = True
    ) -> None:
        """Move a pending message to the redelivery queue (``delay`` None: nack backoff)."""
        pending = self._pending.pop(offset)
        if self._dispatcher is not None:
            self._dispatcher.on_released(pending.consumer, pending.message.key)
        n = self.cursor.record_redelivery(offset) if count else self.cursor.redelivery_count(offset)
        if count and self.options.redelivery.should_dead_letter(n):
            self._dead[offset] = DeadLetter(offset, pending.message, pending.publish_time_ms,
                                            DeadLetterReason.DELIVERY_LIMIT)
            return
        wait = self.options.redelivery.nack_delay(n) if delay is None else delay
        self._redeliver.add(Waiting(offset, pending.message, pending.publish_time_ms, now + wait))

    # ------------------------------------------------------------ seek

    async def reset(self, offset: int) -> int:
        """Seek: forget acks and deliveries; the next message is ``offset`` (clamped to
        the stored range).  Returns the offset used."""
        earliest = await self.core.earliest_offset(self.topic, self.partition)
        latest = await self.core.latest_offset(self.topic, self.partition)
        offset = min(max(offset, earliest), latest)
        for c in self.consumers:
            c._take_back(self.partition)
        if self._dispatcher is not None:
            for p in self._pending.values():
                self._dispatcher.on_released(p.consumer, p.message.key)
        self._pending.clear()
        self._read_ahead.clear()
        self._redeliver.clear()
        self._dead.clear()
        self._delayed.clear()
        self._due.clear()
        self._batches.clear()
        self.cursor.reset(offset)
        self._read_position = offset
        self._epoch += 1
        if self.store is not None:
            await self.store.save_now(self.log_name, self.name, self.cursor)
        self.wake()
        return offset

    # ------------------------------------------------------------ the task

    async def run(self) -> None:
        """Deliver while there are consumers (started by :meth:`add_consumer`)."""
        try:
            while self._dispatcher is not None and not self._closed:
                self._woken = False  # a wake-up from here on makes _sleep return at once
                self.persist()
                if self._dead:
                    await self._publish_dead_letters()
                    continue
                now = trio.current_time()
                self._expire(now)
                self._dispatch(now)
                if self._due_waiting():
                    await self._load_due()
                    continue
                want_data = (
                    len(self._read_ahead) < self.read_ahead_limit and not self._delayed.full
                )
                hw = await self._readable_end()
                if want_data and self._read_position < hw:
                    try:
                        await self._fill()
                    except PartitionUnavailable:
                        await trio.sleep(_RETRY_S)
                    continue
                await self._sleep(now, want_data)
        except UnknownTopic as exc:
            self.close(f"topic gone: {exc}")
            if self.on_gone is not None:
                self.on_gone(self)
        except Exception as exc:
            # never let one subscription take the broker down: close its consumers
            log.exception("subscription %s on %s failed", self.name, self.log_name)
            self.close(f"subscription failed: {exc!r}")
        finally:
            self._running = False
            self.persist()

    def _next_deadline(self, now: float) -> float:
        deadline = self._redeliver.next_ready_at(now) if self._redeliver else None
        if self._pending:
            first = next(iter(self._pending.values())).deadline
            if first is not None and (deadline is None or first < deadline):
                deadline = first
        due_ms = self._delayed.next_due_ms() if self._delayed else None
        if due_ms is not None and len(self._due) < _DUE_BATCH:
            # epoch ms -> trio time; at least 1 ms ahead so a clock step cannot spin
            due = now + max(due_ms - self._clock_ms(), 1) / 1000
            if deadline is None or due < deadline:
                deadline = due
        return _INF if deadline is None else deadline

    def _due_waiting(self) -> bool:
        """Whether held messages are due and the due queue has room for them."""
        if not self._delayed:
            return False
        due_ms = self._delayed.next_due_ms()
        return (
            due_ms is not None and due_ms <= self._clock_ms() and len(self._due) < _DUE_BATCH
        )

    async def _load_due(self) -> None:
        """Read due delayed messages back from the log into the due queue."""
        epoch = self._epoch
        taken = self._delayed.pop_due(self._clock_ms(), _DUE_BATCH - len(self._due))
        wanted = [o for _, o in taken if not self.cursor.is_acked(o) and not self._taken(o)]
        self._loading = wanted
        try:
            found, gone = await read_offsets(self.core, self.topic, self.partition, wanted)
        finally:
            self._loading = []
        if epoch != self._epoch or self.cursor.closed:
            return  # a seek, a filter change or going idle meanwhile
        for offset in wanted:
            if self.cursor.is_acked(offset) or self._taken(offset):
                continue
            if offset in found:
                message, publish_time_ms = found[offset]
                self._due[offset] = Buffered(offset, message, publish_time_ms)
        for offset in gone:  # retention or compaction removed it: nothing to deliver
            self.cursor.ack(offset)
            self._save()

    def _expire(self, now: float) -> None:
        """Ack timeouts: pending messages past their deadline go back at once."""
        if not self._pending:
            return
        expired = []
        for offset, p in self._pending.items():
            if p.deadline is None or p.deadline > now:
                break  # delivery order is deadline order
            expired.append((offset, p.consumer))
        for offset, consumer in expired:
            consumer._take_back(self.partition, {offset})
            self._take_back(offset, now, 0.0)

    def _dispatch(self, now: float) -> None:
        dispatcher = self._dispatcher
        if dispatcher is None:
            return
        if not (self._read_ahead or self._redeliver or self._due):
            self._ahead_timed = False
            return  # nothing to deliver (a pass woken by acks or by new data)
        in_order = dispatcher.in_order()
        blocked: set[bytes | None] = set()
        now_ms = self._clock_ms()
        for w in self._redeliver.in_order():
            key = w.message.key
            if self._expired(w.message, w.publish_time_ms, now_ms):
                self._redeliver.remove(w.offset)
                self._expire_message(Buffered(w.offset, w.message, w.publish_time_ms))
                continue
            if w.ready_at > now:
                if not in_order:
                    blocked.add(key)  # later messages of this key wait for it
                continue
            if key in blocked:
                continue
            target = dispatcher.select(key)
            if target is None:
                if in_order or not self._any_permits():
                    return
                blocked.add(key)
                continue
            self._redeliver.remove(w.offset)
            self._deliver(target, w.offset, w.message, w.publish_time_ms, now)
        for item in list(self._due.values()):
            if self._expired(item.message, item.publish_time_ms, now_ms):
                del self._due[item.offset]
                self._expire_message(item)
                continue
            target = dispatcher.select(item.message.key)
            if target is None:
                return  # Shared: nobody has permits (only Shared holds messages back)
            del self._due[item.offset]
            self._deliver(target, item.offset, item.message, item.publish_time_ms, now)
        kept: deque[Buffered] = deque()
        ahead = self._read_ahead
        ttl = self.options.message_ttl_ms
        honour = self.options.honour_expiry and self._ahead_timed
        while ahead:
            item = ahead[0]
            message = item.message
            key = message.key
            headers = message.headers
            if (ttl is not None and item.publish_time_ms + ttl <= now_ms) or (
                honour and headers and is_expired(headers, message.timestamp_ms, now_ms)
            ):
                self._expire_message(ahead.popleft())
                continue
            if key in blocked:
                kept.append(ahead.popleft())
                continue
            target = dispatcher.select(key)
            if target is None:
                if in_order or not self._any_permits():
                    break
                blocked.add(key)
                kept.append(ahead.popleft())
                continue
            ahead.popleft()
            self._deliver(target, item.offset, item.message, item.publish_time_ms, now)
        if kept:
            kept.extend(ahead)
            self._read_ahead = kept
        elif not ahead:
            self._ahead_timed = False

    def _expired(self, message: Message, publish_time_ms: int, now_ms: int) -> bool:
        ttl = self.options.message_ttl_ms
        if ttl is not None and publish_time_ms + ttl <= now_ms:
            return True
        return self.options.honour_expiry and is_expired(
            message.headers, message.timestamp_ms, now_ms
        )

    def _expire_message(self, item: Buffered) -> None:
        self.expired += 1
        if self.options.expired_to_dead_letters:
            self._dead[item.offset] = item
            return
        self.cursor.ack(item.offset)
        self._save()

    def _any_permits(self) -> bool:
        return any(c.permits > 0 for c in self.consumers)

    def _deliver(
        self, consumer: Consumer, offset: int, message: Message, publish_time_ms: int, now: float
    ) -> None:
        # The two named tuples are built directly (what new_pending/new_delivery do, minus
        # a call each): this runs once per message per consumer.
        timeout = self.options.redelivery.ack_timeout_s
        self._pending[offset] = _new_tuple(
            Pending,
            (consumer, message, publish_time_ms, None if timeout is None else now + timeout),
        )
        dispatcher = self._dispatcher
        assert dispatcher is not None
        dispatcher.on_delivered(consumer, message.key)
        consumer._push(_new_tuple(
            Delivery,
            (self._topic_str, self.partition, offset, message,
             self.cursor.redelivery_count(offset), publish_time_ms),
        ))

    async def _publish_dead_letters(self) -> None:
        policy = self.options.redelivery
        items = list(itertools.islice(self._dead.values(), _DEAD_LETTER_BATCH))
        messages = dead_letters(items, self.topic, self.partition, policy)
        try:
            target = dead_letter_topic(self.topic, self.name, policy)
            await publish_dead_letters(self.core, target, messages)
        except CoreError:
            log.exception("dead letters of %s on %s failed; redelivering them instead",
                          self.name, self.log_name)
            retry_at = trio.current_time() + policy.nack_max_delay_s
            for i in items:
                if self._dead.pop(i.offset, None) is not None:
                    self._redeliver.add(Waiting(i.offset, i.message, i.publish_time_ms, retry_at))
            return
        for i in items:
            if self._dead.pop(i.offset, None) is not None and not self.cursor.closed:
                self.cursor.ack(i.offset)
                self._save()
        self.wake()

    def _save(self) -> None:
        # The task persists once per pass: an ack storm costs one to_bytes per pass.
        self._dirty = True

    def persist(self) -> None:
        """Hand the cursor to the store now if it changed (a coalesced write; the task
        does this once per pass; :meth:`SubscriptionManager.flush` calls it first)."""
        if not self._dirty or self.store is None or self.cursor.closed:
            return
        try:
            self.store.save(self.log_name, self.name, self.cursor)
        except StorageError:
            log.warning("cursor of %s on %s not saved; retrying on the next change",
                        self.name, self.log_name, exc_info=True)
            return
        self._dirty = False
