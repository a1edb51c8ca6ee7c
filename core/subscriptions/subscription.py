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
of this subscription, never the broker.
When the last consumer leaves, every buffer is dropped and ``read_position``
goes back to the first unacknowledged offset.

A durable subscription's cursor is saved (a coalesced write) by the task at most
once per pass, so many acks between two passes cost one save.
"""

from __future__ import annotations

import itertools
import logging
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import trio

from core.cursor import Cursor
from core.cursor_store import CursorStore
from core.errors import (
    CoreError,
    OffsetOutOfRange,
    PartitionUnavailable,
    UnknownTopic,
)
from core.headers import is_expired
from core.names import TopicName
from core.records import Message, decode_batch
from core.subscriptions.backlog import oldest, ready_ranges
from core.subscriptions.consumer import Consumer
from core.subscriptions.delayed import DEFAULT_MAX_DELAYED, DelayedIndex, deliver_at_ms
from core.subscriptions.dispatch import Dispatcher, make_dispatcher
from core.subscriptions.errors import CumulativeAckNotAllowed, UnknownMessage
from core.subscriptions.filters import MessageFilter
from core.subscriptions.log_reads import read_offsets, wait_for_data_or
from core.subscriptions.options import SubscriptionOptions
from core.subscriptions.redelivery import (
    RedeliveryQueue,
    Waiting,
    dead_letter_message,
    dead_letter_topic,
    publish_dead_letters,
)
from core.subscriptions.types import Delivery, SubscriptionType
from core.transactions.reads import read_committed
from core.transactions.visibility import IsolationLevel
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


@dataclass(slots=True)
class _Buffered:
    offset: int
    message: Message
    publish_time_ms: int


@dataclass(slots=True)
class _Pending:
    consumer: Consumer
    message: Message
    publish_time_ms: int
    deadline: float | None


class PartitionSubscription:
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
    ) -> None:
        """``max_delayed`` caps the delayed messages held (see the module docstring)."""
        if read_ahead < 1 or read_bytes < 1:
            raise ValueError("read_ahead and read_bytes must be positive")
        self.core = core
        self.topic = topic.base
        self.partition = partition
        self.name = name
        self.cursor = cursor
        self.store = store
        self.log_name = self.topic.log_name(partition)
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
        self._read_ahead: deque[_Buffered] = deque()
        self._pending: dict[int, _Pending] = {}
        self._redeliver = RedeliveryQueue()
        self._dead: dict[int, _Buffered] = {}
        self._delayed = DelayedIndex(max_delayed)
        self._due: dict[int, _Buffered] = {}  # insertion order = due order
        self._loading: list[int] = []  # due offsets being read back (in _load_due)
        self._wakeup: trio.Event | None = None
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
        if not self._known(offset):
            raise UnknownMessage(self.partition, offset)
        if self.cursor.is_acked(offset):
            return
        self.cursor.ack(offset)
        self._settle(offset)
        self._save()
        self.wake()

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

    # ------------------------------------------------------------ transactional acks

    def holds_unacked(self, offset: int) -> bool:
        """Delivered (or on its way back) and not acknowledged: a transaction may ack it."""
        return self._taken(offset) and not self.cursor.is_acked(offset)

    def commit_txn_ack(self, offset: int) -> None:
        """A committed transaction acknowledges ``offset`` (saved even while idle)."""
        if self.cursor.closed or self.cursor.is_acked(offset):
            return
        self.cursor.ack(offset)
        self._settle(offset)
        self._save()
        if not self._running:
            self.persist()
        self.wake()

    def release_txn_ack(self, offset: int) -> None:
        """An aborted transaction gives ``offset`` back: redeliver it now if still pending."""
        pending = self._pending.get(offset)
        if pending is None:
            return
        pending.consumer._take_back(self.partition, {offset})
        self._take_back(offset, trio.current_time(), 0.0)
        self.wake()

    def _settle(self, offset: int) -> None:
        pending = self._pending.pop(offset, None)
        if pending is not None:
            if self._dispatcher is not None:
                self._dispatcher.on_released(pending.consumer, pending.message.key)
            if pending.consumer.queued:
                pending.consumer._take_back(self.partition, {offset})
        self._redeliver.remove(offset)
        self._dead.pop(offset, None)

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
        self._dead[offset] = _Buffered(offset, pending.message, pending.publish_time_ms)
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
            self._dead[offset] = _Buffered(offset, pending.message, pending.publish_time_ms)
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
        self.cursor.reset(offset)
        self._read_position = offset
        self._epoch += 1
        if self.store is not None:
            await self.store.save_now(self.log_name, self.name, self.cursor)
        self.wake()
        return offset

    async def purge(self) -> int:
        """Acknowledge every ready message (not delivered-and-unacknowledged); return
        how many (AMQP ``queue.purge``)."""
        hw = await self.core.latest_offset(self.topic, self.partition)
        return self._ack_ready(list(ready_ranges(self.cursor, self._pending, hw)))

    async def drop_head(self, keep: int) -> int:
        """Acknowledge the oldest ready messages until at most ``keep`` are left; return
        how many went (AMQP ``x-max-length`` with ``drop-head``)."""
        hw = await self.core.latest_offset(self.topic, self.partition)
        excess = self.cursor.backlog(hw) - len(self._pending) - max(keep, 0)
        if excess <= 0:
            return 0
        return self._ack_ready(oldest(ready_ranges(self.cursor, self._pending, hw), excess))

    def _ack_ready(self, ranges: list[tuple[int, int]]) -> int:
        acked = sum(self.cursor.ack_range(lo, hi) for lo, hi in ranges)
        if not acked:
            return 0
        is_acked = self.cursor.is_acked
        self._read_ahead = deque(i for i in self._read_ahead if not is_acked(i.offset))
        for w in self._redeliver.in_order():
            if is_acked(w.offset):
                self._redeliver.remove(w.offset)
        for offset in [o for o in self._dead if is_acked(o)]:
            del self._dead[offset]
        self._drop_held(is_acked)
        self._save()
        self.wake()
        return acked

    def _drop_held(self, acked: Callable[[int], bool]) -> None:
        """Forget delayed messages acknowledged meanwhile (purge, cumulative ack)."""
        self._delayed.discard_if(acked)
        for offset in [o for o in self._due if acked(o)]:
            del self._due[offset]

    # ------------------------------------------------------------ the task

    def wake(self) -> None:
        """Make the task look at the state again."""
        event, self._wakeup = self._wakeup, None
        if event is not None:
            event.set()

    async def run(self) -> None:
        """Deliver while there are consumers (started by :meth:`add_consumer`)."""
        try:
            while self._dispatcher is not None and not self._closed:
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

    async def _sleep(self, now: float, want_data: bool) -> None:
        deadline = self._next_deadline(now)
        self._wakeup = event = trio.Event()
        with trio.move_on_at(deadline):
            if not want_data:
                await event.wait()
                return
            await wait_for_data_or(
                self.core, self.topic, self.partition, self._read_position, event,
                stable=self._read_committed,
            )

    @property
    def _read_committed(self) -> bool:
        return self.options.isolation is IsolationLevel.READ_COMMITTED

    async def _readable_end(self) -> int:
        """Where reading stops: the last stable offset (READ_COMMITTED) or the watermark."""
        if self._read_committed:
            return (await self.core._partition(self.topic, self.partition)).last_stable_offset
        return await self.core.latest_offset(self.topic, self.partition)

    def _next_deadline(self, now: float) -> float:
        deadline = self._redeliver.next_ready_at(now)
        if self._pending:
            first = next(iter(self._pending.values())).deadline
            if first is not None and (deadline is None or first < deadline):
                deadline = first
        due_ms = self._delayed.next_due_ms()
        if due_ms is not None and len(self._due) < _DUE_BATCH:
            # epoch ms -> trio time; at least 1 ms ahead so a clock step cannot spin
            due = now + max(due_ms - self._clock_ms(), 1) / 1000
            if deadline is None or due < deadline:
                deadline = due
        return float("inf") if deadline is None else deadline

    def _due_waiting(self) -> bool:
        """Whether held messages are due and the due queue has room for them."""
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
                self._due[offset] = _Buffered(offset, message, publish_time_ms)
        for offset in gone:  # retention or compaction removed it: nothing to deliver
            self.cursor.ack(offset)
            self._save()

    def _expire(self, now: float) -> None:
        """Ack timeouts: pending messages past their deadline go back at once."""
        expired = []
        for offset, p in self._pending.items():
            if p.deadline is None or p.deadline > now:
                break  # delivery order is deadline order
            expired.append((offset, p.consumer))
        for offset, consumer in expired:
            consumer._take_back(self.partition, {offset})
            self._take_back(offset, now, 0.0)

    async def _fill(self) -> None:
        """Read the next entries into the read-ahead (skip acked, auto-ack filtered)."""
        epoch = self._epoch
        aborted = None
        try:
            if self._read_committed:
                read = await read_committed(
                    self.core, self.topic, self.partition, self._read_position, self.read_bytes
                )
                entries, aborted = read.entries, read.is_aborted
            else:
                entries = await self.core.read(
                    self.topic, self.partition, self._read_position, self.read_bytes
                )
        except OffsetOutOfRange as exc:
            if epoch != self._epoch:
                return
            if self._read_position >= exc.earliest:
                raise
            # retention removed what this subscription had not consumed
            self.cursor.ack_range(self.cursor.mark_delete, exc.earliest)
            self._read_position = exc.earliest
            self._save()
            return
        if epoch != self._epoch:
            return  # a seek happened meanwhile
        auto_acked = False
        room = self.read_ahead_limit - len(self._read_ahead)
        now_ms = self._clock_ms()
        shared = self.type is SubscriptionType.SHARED
        try:
            for entry in entries:
                if aborted is not None and aborted(entry):  # an aborted transaction's data
                    self.cursor.ack_range(self._read_position, entry.last_offset + 1)
                    auto_acked = True
                    self._read_position = entry.last_offset + 1
                    continue
                for stored in decode_batch(entry.batch):
                    offset = stored.offset
                    if (
                        offset < self._read_position
                        or self.cursor.is_acked(offset)
                        or self._taken(offset)
                        or offset in self._delayed
                        or offset in self._due
                    ):
                        continue
                    message = stored.message
                    keep = self.options.filter
                    expired = self._expired(message, entry.broker_timestamp, now_ms)
                    to_dlq = expired and self.options.expired_to_dead_letters
                    if not to_dlq and (
                        stored.control or expired or (keep is not None and not keep(message))
                    ):
                        self.cursor.ack(offset)
                        self.expired += expired
                        auto_acked = True
                        continue
                    if shared and not to_dlq:
                        due_ms = deliver_at_ms(message.headers)
                        if due_ms is not None and due_ms > now_ms:
                            if not self._delayed.add(offset, due_ms):
                                self._read_position = offset  # index full: read again later
                                return
                            continue
                    if room <= 0:
                        # full: the rest of this batch is read again later
                        self._read_position = offset
                        return
                    item = _Buffered(offset, message, entry.broker_timestamp)
                    if to_dlq:
                        self._dead[offset] = item
                        self.expired += 1
                    else:
                        self._read_ahead.append(item)
                    room -= 1
                self._read_position = entry.last_offset + 1
        finally:
            if auto_acked:
                self._save()

    def _dispatch(self, now: float) -> None:
        dispatcher = self._dispatcher
        if dispatcher is None:
            return
        in_order = dispatcher.in_order()
        blocked: set[bytes | None] = set()
        now_ms = self._clock_ms()
        for w in self._redeliver.in_order():
            key = w.message.key
            if self._expired(w.message, w.publish_time_ms, now_ms):
                self._redeliver.remove(w.offset)
                self._expire_message(_Buffered(w.offset, w.message, w.publish_time_ms))
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
        kept: deque[_Buffered] = deque()
        ahead = self._read_ahead
        while ahead:
            item = ahead[0]
            key = item.message.key
            if self._expired(item.message, item.publish_time_ms, now_ms):
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

    def _expired(self, message: Message, publish_time_ms: int, now_ms: int) -> bool:
        ttl = self.options.message_ttl_ms
        if ttl is not None and publish_time_ms + ttl <= now_ms:
            return True
        return self.options.honour_expiry and is_expired(
            message.headers, message.timestamp_ms, now_ms
        )

    def _expire_message(self, item: _Buffered) -> None:
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
        timeout = self.options.redelivery.ack_timeout_s
        self._pending[offset] = _Pending(
            consumer, message, publish_time_ms, None if timeout is None else now + timeout
        )
        assert self._dispatcher is not None
        self._dispatcher.on_delivered(consumer, message.key)
        consumer._push(
            Delivery(
                str(self.topic), self.partition, offset, message,
                self.cursor.redelivery_count(offset), publish_time_ms,
            )
        )

    async def _publish_dead_letters(self) -> None:
        policy = self.options.redelivery
        items = list(itertools.islice(self._dead.values(), _DEAD_LETTER_BATCH))
        messages = [
            dead_letter_message(i.message, self.topic, self.partition, i.offset,
                                policy.dead_letter_key)
            for i in items
        ]
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
