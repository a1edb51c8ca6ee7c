"""Stored batches decoded once for a subscription's read-ahead.

A read-ahead that is full stops in the middle of a stored batch and reads the
rest later.  Decoding that batch again on every later read would make a big
batch of small messages cost (batch size x reads) record decodes.  Instead the
subscription keeps the one batch it stopped in, decoded, in a
:class:`BatchCache`: the next read takes the rest of its records from memory
without asking the log at all, and a read that returns the same batch again
(same offsets, publish time and size) reuses the decoded records.

Only one batch is held (the one straddling the read position), so the memory
kept is bounded by the largest stored batch.

With fan-out (many MQTT subscribers, several AMQP queues bound to one exchange)
many subscriptions read the same stored batch at about the same time.  Their
caches therefore decode through one :class:`SharedBatchCache` (owned by the
:class:`~core.subscriptions.manager.SubscriptionManager`): a small LRU of
decoded batches keyed by (partition log name, base offset), so a batch is
decoded once per partition while it is hot, not once per subscription.  Only
partitions read by two subscriptions or more keep batches there: for a lone
reader its own cache is enough, and holding batches it will not read again
would only cost memory and garbage-collector time.  A hit
must also be the same stored bytes (compared in full: a memcmp, far cheaper
than a decode), so a topic deleted and created again under the same name can
never be served another topic's records.  The decoded records are shared:
:class:`~core.records.StoredMessage` and :class:`~core.records.Message` are
frozen, and neither the subscriptions nor the protocol handlers mutate the
records list or a message's headers list (treat them as immutable).

A batch that was just appended through :meth:`core.api.Core.append_messages`
is not even decoded: the core's :class:`~core.records.FreshBatches` still holds
the messages it was built from, and hands them out when the entry read is that
very stored object.  And a subscription keeping up with its partition reads
those entries from the log's memory without a trip through the scheduler
(:meth:`ReadAheadFill._read_nowait`).

:class:`ReadAheadFill` (mixed into :class:`PartitionSubscription`) is the fill
itself: log reads into the read-ahead, skipping what is acknowledged or held
elsewhere, acknowledging control records, filtered-out and expired messages,
and parking delayed ones.
"""

from __future__ import annotations

from bisect import bisect_left
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass
from operator import attrgetter
from typing import TYPE_CHECKING

from core.batch import COMPRESSION_MASK
from core.cursor import Cursor
from core.errors import OffsetOutOfRange
from core.headers import any_timing_header, is_expired
from core.names import TopicName
from core.partition import ReadEntry
from core.records import FreshBatches, StoredMessage, decode_batch
from core.subscriptions.delayed import DelayedIndex, deliver_at_ms
from core.subscriptions.items import Buffered, Pending
from core.subscriptions.options import SubscriptionOptions
from core.subscriptions.redelivery import RedeliveryQueue
from core.subscriptions.types import SubscriptionType
from core.transactions.reads import read_committed, read_committed_nowait

if TYPE_CHECKING:
    from core.api import Core

__all__ = [
    "DEFAULT_SHARED_BATCHES",
    "DEFAULT_SHARED_BATCH_BYTES",
    "BatchCache",
    "DecodedBatch",
    "ReadAheadFill",
    "SharedBatchCache",
]

#: decoded batches a :class:`SharedBatchCache` holds by default (all partitions together)
DEFAULT_SHARED_BATCHES = 32
#: estimated bytes (see :meth:`SharedBatchCache.weight`) it holds by default
DEFAULT_SHARED_BATCH_BYTES = 32 << 20
#: estimated memory of one decoded record beyond its key and value bytes: the
#: StoredMessage, Message, headers list and bytes objects' overhead
_RECORD_OVERHEAD = 256
#: index of the low byte of a v2 batch header's attributes (compression codec bits)
_ATTRIBUTES_LOW = 22

_offset_of = attrgetter("offset")
#: fills in a row that may skip the scheduler (see :meth:`ReadAheadFill._read_nowait`)
_MAX_NOWAIT_FILLS = 4


@dataclass(frozen=True, slots=True)
class DecodedBatch:
    """One stored batch and its records (ascending offsets)."""

    base_offset: int
    last_offset: int
    broker_timestamp: int
    size: int
    records: list[StoredMessage]
    #: whether any record has an expiry or delivery-time header (else none is checked)
    timed: bool = True

    def start(self, position: int) -> int:
        """Index of the first record at or after ``position``."""
        records = self.records
        if not records or records[0].offset >= position:
            return 0
        return bisect_left(records, position, key=_offset_of)

    def same_entry(self, entry: ReadEntry) -> bool:
        """Whether ``entry`` is the stored batch this was decoded from."""
        return (
            entry.base_offset == self.base_offset
            and entry.last_offset == self.last_offset
            and entry.broker_timestamp == self.broker_timestamp
            and len(entry.batch) == self.size
        )


def _decoded(
    entry: ReadEntry, stored: bytes | None = None, fresh: FreshBatches | None = None
) -> DecodedBatch:
    """``entry`` (whose bytes are ``stored`` when given) decoded.

    When ``fresh`` holds the entry's messages (it was just appended), they are
    taken from there instead of decoding the bytes.
    """
    batch = entry.batch
    records = None
    if fresh is not None:
        records = fresh.records(batch, entry.base_offset, entry.last_offset - entry.base_offset + 1)
    if records is None:
        records = decode_batch(stored if stored is not None else bytes(batch))
    return DecodedBatch(
        entry.base_offset, entry.last_offset, entry.broker_timestamp, len(batch), records,
        any_timing_header([r.message.headers for r in records]),
    )


class SharedBatchCache:
    """Decoded batches shared by the subscriptions of every partition (an LRU).

    Keyed by (partition log name, base offset).  Bounded both by
    ``max_batches`` entries and by ``max_bytes`` of estimated memory
    (:meth:`weight`: the stored bytes kept for the hit check, plus the decoded
    records); a batch heavier than ``max_bytes`` is decoded but not kept.  The
    least recently used batches go first.  Batches are kept only for partitions
    with two readers or more (:meth:`attach`).  Not thread-safe (one trio run).
    """

    def __init__(
        self,
        max_batches: int = DEFAULT_SHARED_BATCHES,
        max_bytes: int = DEFAULT_SHARED_BATCH_BYTES,
        fresh: FreshBatches | None = None,
    ) -> None:
        if max_batches < 1 or max_bytes < 1:
            raise ValueError("max_batches and max_bytes must be positive")
        self.max_batches = max_batches
        self.max_bytes = max_bytes
        #: the core's recently appended messages, used instead of decoding them
        self.fresh = fresh
        # key -> (stored bytes, decoded, weight, the entry it was decoded from)
        self._held: OrderedDict[tuple[str, int], tuple[bytes, DecodedBatch, int, ReadEntry]] = (
            OrderedDict()
        )
        self._readers: dict[str, int] = {}  # log name -> subscriptions reading it
        #: estimated bytes held (the sum of the held batches' :meth:`weight`)
        self.bytes = 0
        #: batches decoded, and batches served without a decode (for tests and benchmarks)
        self.decodes = 0
        self.hits = 0

    def __len__(self) -> int:
        return len(self._held)

    def attach(self, log_name: str) -> None:
        """One more subscription reads the partition log ``log_name``."""
        self._readers[log_name] = self._readers.get(log_name, 0) + 1

    def detach(self, log_name: str) -> None:
        """A subscription of ``log_name`` closed (one :meth:`detach` per :meth:`attach`)."""
        left = self._readers.get(log_name, 0) - 1
        if left > 0:
            self._readers[log_name] = left
        else:
            self._readers.pop(log_name, None)

    @staticmethod
    def weight(stored: bytes, batch: DecodedBatch) -> int:
        """Estimated memory of a held batch: the stored bytes plus the decoded records.

        The stored bytes count twice (kept for the hit check, and again for the
        keys, values and headers decoded from them) plus a fixed overhead per
        record (the objects around them).  A compressed batch decodes to more
        than it stores: its keys and values are summed instead.
        """
        records = batch.records
        weight = 2 * len(stored) + _RECORD_OVERHEAD * len(records)
        if len(stored) > _ATTRIBUTES_LOW and stored[_ATTRIBUTES_LOW] & COMPRESSION_MASK:
            for stored_message in records:
                message = stored_message.message
                weight += len(message.key or b"") + len(message.value or b"")
        return weight

    def decode(self, log_name: str, entry: ReadEntry) -> DecodedBatch:
        """``entry`` of the partition log ``log_name``, decoded (held, or decoded now)."""
        key = (log_name, entry.base_offset)
        held = self._held.get(key)
        lone = self._readers.get(log_name, 0) < 2
        if held is None and lone:
            self.decodes += 1  # a lone reader: nobody else would use it, so not held
            return _decoded(entry, None, self.fresh)
        if held is not None and held[3] is entry:
            # the very entry object (the partition hands every reader the one it built
            # at append time): no copy and compare of its bytes
            self._held.move_to_end(key)
            self.hits += 1
            return held[1]
        stored = bytes(entry.batch)
        if held is not None:
            held_stored, batch, weight, _ = held
            if batch.same_entry(entry) and held_stored == stored:
                self._held.move_to_end(key)
                self.hits += 1
                return batch
            del self._held[key]  # that offset was rewritten (topic created again)
            self.bytes -= weight
        batch = _decoded(entry, stored, self.fresh)
        self.decodes += 1
        if lone:
            return batch
        weight = self.weight(stored, batch)
        if weight <= self.max_bytes:
            self._held[key] = (stored, batch, weight, entry)
            self.bytes += weight
            while len(self._held) > self.max_batches or self.bytes > self.max_bytes:
                _, (_, _, dropped, _) = self._held.popitem(last=False)
                self.bytes -= dropped
        return batch

    def forget(self, log_name: str) -> None:
        """Drop every batch held for the partition log ``log_name`` (it was deleted)."""
        for key in [k for k in self._held if k[0] == log_name]:
            self.bytes -= self._held.pop(key)[2]

    def clear(self) -> None:
        """Drop every held batch."""
        self._held.clear()
        self.bytes = 0


class BatchCache:
    """The last batch decoded for a read-ahead (see the module docstring).

    With ``shared`` (and the partition's ``log_name``) the batches it decodes
    come through that :class:`SharedBatchCache`, as one of its readers until
    :meth:`close`; without, it decodes itself.
    """

    def __init__(self, shared: SharedBatchCache | None = None, log_name: str = "") -> None:
        self._batch: DecodedBatch | None = None
        self._shared = shared
        self._log_name = log_name
        if shared is not None:
            shared.attach(log_name)
        #: how many batches this cache asked for (decoded, or taken from ``shared``)
        self.decodes = 0

    def covering(self, position: int) -> DecodedBatch | None:
        """The held batch when it has offsets at or after ``position``, else None."""
        batch = self._batch
        if batch is not None and batch.base_offset <= position <= batch.last_offset:
            return batch
        return None

    def decode(self, entry: ReadEntry) -> DecodedBatch:
        """``entry`` decoded: the held batch when it is the same, else decoded now (and held)."""
        batch = self._batch
        if batch is not None and batch.same_entry(entry):
            return batch
        self.decodes += 1
        shared = self._shared
        batch = shared.decode(self._log_name, entry) if shared is not None else _decoded(entry)
        self._batch = batch
        return batch

    def clear(self) -> None:
        """Forget the held batch (a seek, going idle)."""
        self._batch = None

    def close(self) -> None:
        """Forget the held batch and stop being a reader of the shared cache (idempotent)."""
        self._batch = None
        shared, self._shared = self._shared, None
        if shared is not None:
            shared.detach(self._log_name)


class ReadAheadFill:
    """Reading the log into the read-ahead (see the module docstring)."""

    core: Core
    topic: TopicName
    partition: int
    cursor: Cursor
    options: SubscriptionOptions
    type: SubscriptionType | None
    read_ahead_limit: int
    read_bytes: int
    expired: int
    _clock_ms: Callable[[], int]
    _batches: BatchCache
    _read_position: int
    _read_high: int
    _epoch: int
    _read_ahead: deque[Buffered]
    _pending: dict[int, Pending]
    _redeliver: RedeliveryQueue
    _dead: dict[int, Buffered]
    _delayed: DelayedIndex
    _due: dict[int, Buffered]
    #: fills in a row that read without a checkpoint (see :meth:`_read_nowait`)
    _nowait_fills: int = 0
    #: False while no read-ahead item came from a batch with timing headers (the dispatch
    #: then skips the header expiry check); set by :meth:`_take`, cleared when it empties
    _ahead_timed: bool = False

    if TYPE_CHECKING:  # provided by PartitionSubscription

        @property
        def _read_committed(self) -> bool: ...
        def _save(self) -> None: ...

    async def _fill(self) -> None:
        """Read the next entries into the read-ahead (skip acked, auto-ack filtered).

        The batch a full read-ahead stopped in stays decoded (:mod:`.read_ahead`):
        the next fill continues from memory, without a log read or a decode.
        """
        cached = self._batches.covering(self._read_position)
        if cached is not None:
            self._take(cached)
            return  # the task reads the log on its next pass if there is room
        epoch = self._epoch
        aborted = None
        entries = self._read_nowait()
        if entries is None:
            self._nowait_fills = 0
            try:
                if self._read_committed:
                    read = await read_committed(
                        self.core, self.topic, self.partition, self._read_position,
                        self.read_bytes,
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
        for entry in entries:
            if entry.last_offset < self._read_position:
                continue
            if aborted is not None and aborted(entry):  # an aborted transaction's data
                self.cursor.ack_range(self._read_position, entry.last_offset + 1)
                self._save()
                self._read_position = entry.last_offset + 1
                continue
            if not self._take(self._batches.decode(entry)):
                return

    def _read_nowait(self) -> list[ReadEntry] | None:
        """The next entries, when they can be had at once (no checkpoint), else None.

        A subscription keeping up with its partition reads what was just appended:
        the log holds it in memory (:meth:`core.partition.Partition.read_nowait`),
        and going through the scheduler for it would only delay the delivery by a
        round.  READ_COMMITTED reads through
        :func:`~core.transactions.reads.read_committed_nowait` (the same cut at the
        last stable offset as :func:`read_committed`) and takes this path only when
        no aborted transaction has data in what it read: then no entry needs the
        aborted check.  While catching up on a backlog, at most
        ``_MAX_NOWAIT_FILLS`` fills in a row skip the checkpoint; a fill that
        reaches the end is followed by the run loop's sleep.
        """
        if self._nowait_fills >= _MAX_NOWAIT_FILLS:
            return None
        opened = self.core._cache.get(self.topic)
        if opened is None or not 0 <= self.partition < len(opened.partitions):
            return None
        partition = opened.partitions[self.partition]
        if self._read_committed:
            read = read_committed_nowait(partition, self._read_position, self.read_bytes)
            if read is None or read.aborted:
                return None  # aborted data in range: read_committed and its is_aborted
            entries: list[ReadEntry] | None = read.entries
            end = read.last_stable_offset
        else:
            entries = partition.read_nowait(self._read_position, self.read_bytes)
            end = partition.high_watermark
        if not entries:
            return None
        if entries[-1].last_offset + 1 < end:
            self._nowait_fills += 1  # more to read: the run loop comes straight back
        else:
            self._nowait_fills = 0  # caught up: the run loop sleeps (a checkpoint) next
        return entries

    def _take(self, batch: DecodedBatch) -> bool:
        """Move ``batch``'s records from the read position on into the read-ahead.

        Returns False when the read-ahead (or the delayed index) filled up: the
        read position then stays on the first record not taken.
        """
        position = self._read_position
        records = batch.records
        start = batch.start(position)
        room = self.read_ahead_limit - len(self._read_ahead)
        now_ms = self._clock_ms()
        shared = self.type is SubscriptionType.SHARED
        options = self.options
        keep = options.filter
        ttl = options.message_ttl_ms
        timed = batch.timed
        if timed:
            self._ahead_timed = True
        honour = options.honour_expiry and timed
        may_delay = shared and timed
        to_dead = options.expired_to_dead_letters
        publish_ms = batch.broker_timestamp
        ttl_expired = ttl is not None and publish_ms + ttl <= now_ms
        cursor = self.cursor
        is_acked = cursor.is_acked
        # Below these bounds an offset may be acked / held elsewhere; above, it cannot
        # (acks made in this loop are of offsets already passed).
        last_acked = cursor.individually_acked.last()
        acked_below = cursor.mark_delete if last_acked is None else last_acked[1]
        pending, redeliver, dead = self._pending, self._redeliver, self._dead
        delayed, due = self._delayed, self._due
        held = bool(pending or redeliver or dead or delayed or due)
        held_below = self._read_high if held else 0
        append = self._read_ahead.append
        auto_acked = False
        try:
            for i in range(start, len(records)):
                stored = records[i]
                offset = stored.offset
                if offset < acked_below and is_acked(offset):
                    continue
                if offset < held_below and (
                    offset in pending or offset in redeliver or offset in dead
                    or offset in delayed or offset in due
                ):
                    continue
                message = stored.message
                headers = message.headers
                expired = ttl_expired or (
                    honour and bool(headers)
                    and is_expired(headers, message.timestamp_ms, now_ms)
                )
                to_dlq = expired and to_dead
                if not to_dlq and (
                    stored.control or expired or (keep is not None and not keep(message))
                ):
                    cursor.ack(offset)
                    self.expired += expired
                    auto_acked = True
                    continue
                if may_delay and not to_dlq and headers:
                    due_ms = deliver_at_ms(headers)
                    if due_ms is not None and due_ms > now_ms:
                        if not delayed.add(offset, due_ms):
                            self._read_position = offset  # index full: read again later
                            return False
                        continue
                if room <= 0:
                    # full: the rest of this batch is taken later (still decoded)
                    self._read_position = offset
                    return False
                item = Buffered(offset, message, publish_ms)
                if to_dlq:
                    dead[offset] = item
                    self.expired += 1
                else:
                    append(item)
                room -= 1
            self._read_position = max(position, batch.last_offset + 1)
            return True
        finally:
            if self._read_position > self._read_high:
                self._read_high = self._read_position
            if auto_acked:
                self._save()
