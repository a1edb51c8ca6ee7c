"""One open partition: offset assignment, high watermark, reads and waits.

How offsets work
----------------
The core, not storage, numbers records.  Each appended batch becomes one log
entry whose broker entry metadata ``index`` is the offset of its first record;
``next_offset`` then grows by the batch's record count.

The storage *key* of an entry is the offset of the batch's **last** record.
Keys grow strictly, and ``log.last_key`` survives retention, so after a restart
``next_offset = last_key + 1`` even when retention has dropped every entry; no
extra metadata write is needed.  To find the entry holding offset ``o``, take
the entry after the last one whose key is ``<= o - 1``.

Offsets are assigned and ``log.append`` is called with no checkpoint in
between, so appends reach the log in offset order and pipelined appends to one
partition share a group commit.

The high watermark is the end of acknowledged data: appends complete out of
order, so in-flight appends are kept in a FIFO and the watermark moves over its
completed prefix only.  Reads stop at the watermark.  An append is complete as
soon as the log reports it durable (:meth:`storage.api.PartitionLog.append_notify`
calls back from the event loop before the appending task resumes), so readers
are woken without waiting for that task's turn.  A reader keeping up with the
appends reads them from the log's memory (:meth:`Partition.read_nowait`).  Readers
wait with :meth:`Partition.wait_for_data`, or register a one-shot callback
(:meth:`Partition.call_on_data`) that runs right where the watermark moves.

The storage call is shielded from cancellation (by a cancel scope, or by the log
itself when its ``append_notify_uncancellable`` says so): a producer that goes away
mid-append still gets its entries written, so offsets never have holes.  A
storage failure during an append leaves the partition *failed*: the watermark
stops and later appends raise :class:`PartitionUnavailable` until every
in-flight append has finished; then offsets and watermark are reset from the
log (``last_key + 1``), which holds exactly the appends that succeeded.

Idempotent producers
--------------------
Batches that carry a producer id go through :class:`core.dedup.DedupState`
in the same no-checkpoint stretch that assigns offsets: a retried batch is
answered with its first copy's offsets (once those are acknowledged) and not
stored again; a batch that does not fit its producer's state raises a
:class:`core.dedup.ProducerStateError` and nothing of the append is stored.
Appends without producer ids pay one pass over their batch headers.  With a
:class:`core.producers.ProducerStateStore` the state is recovered at open
(snapshot + log replay) and snapshotted every ``snapshot_every`` appends and
at close; after a failed append it is cut back to the log's end.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

import trio

from core.batch import BatchInfo
from core.dedup import DedupState, Duplicate
from core.entry import build_entry, decode_entry, framed_batch
from core.entry_cache import RecentEntries
from core.errors import OffsetOutOfRange, PartitionUnavailable, UnknownTopic
from core.names import TopicName
from core.producers import ProducerStateStore
from core.records import FreshBatches, Message
from core.transactions.replay import recover_index
from core.transactions.visibility import TxnIndex
from storage.api import (
    EntryIn,
    LogClosedError,
    MetadataStore,
    PartitionLog,
    PositionOutOfRangeError,
    RetentionPolicy,
    StorageError,
    StoredEntry,
)

_READ_RETRIES = 4


@dataclass(frozen=True, slots=True)
class AppendResult:
    """Where an append landed: offsets of its first and last record, and the broker time."""

    base_offset: int
    last_offset: int
    broker_timestamp: int


@dataclass(frozen=True, slots=True)
class ReadEntry:
    """One stored batch; ``batch`` is its v2 bytes with the base offset already set."""

    base_offset: int
    last_offset: int
    broker_timestamp: int
    batch: memoryview

    @property
    def record_count(self) -> int:
        return self.last_offset - self.base_offset + 1


class _Pending:
    __slots__ = ("done", "end")

    def __init__(self, end: int) -> None:
        self.end = end
        self.done = False


class Partition:
    """The runtime state of one partition of an open topic."""

    def __init__(self, topic: TopicName, number: int, log: PartitionLog) -> None:
        self.topic = topic
        self.number = number
        self.log = log
        self.next_offset = 0
        self.high_watermark = 0
        self._last_broker_ts = 0
        self._pending: deque[_Pending] = deque()
        self._data_event: trio.Event | None = None
        # one-shot callbacks of the next watermark change or close (see call_on_data)
        self._data_callbacks: list[Callable[[], object]] = []
        self._failed = False
        self._closed = False
        self._earliest_cache: tuple[int, int] = (-1, 0)  # (start position, offset)
        self.dedup = DedupState()
        self._states: ProducerStateStore | None = None
        self._since_snapshot = 0
        self._failures = 0
        #: open transactions and aborted index (see core.transactions.visibility)
        self.txns = TxnIndex()
        #: where appends of plain messages are remembered for readers (set by the core)
        self.fresh: FreshBatches | None = None
        #: appended entries as readers see them, so that they skip decoding them (set by
        #: the core, shared by its partitions)
        self.recent: RecentEntries[ReadEntry] | None = None

    @classmethod
    async def open(
        cls, topic: TopicName, number: int, log: PartitionLog,
        producer_states: ProducerStateStore | None = None,
        txn_metadata: MetadataStore | None = None,
    ) -> Partition:
        """Wrap ``log`` and recover ``next_offset`` and the broker time from it.

        With ``producer_states`` the idempotent-producer state is recovered too
        and persisted from then on; without, it starts empty and lives in memory.
        With ``txn_metadata`` the transaction index is rebuilt
        (:func:`core.transactions.replay.recover_index`).
        """
        partition = cls(topic, number, log)
        await partition._recover()
        partition.txns = await recover_index(txn_metadata, log)
        if producer_states is not None:
            partition.dedup = await producer_states.recover(log, partition.next_offset)
            partition._states = producer_states
        return partition

    async def _recover(self) -> None:
        self._reset_from_log()
        end = self.log.end_position
        if end > self.log.start_position:
            (last,) = await self.log.read(end - 1, 1, max_entries=1)
            self._last_broker_ts = max(self._last_broker_ts, last.timestamp_ms)

    def _reset_from_log(self) -> None:
        # Synchronous, so a concurrent append never sees half-recovered state.
        last_key = self.log.last_key
        self.next_offset = 0 if last_key is None else last_key + 1
        self.dedup.truncate(self.next_offset)
        self._failed = False
        self._set_high_watermark(self.next_offset)

    @property
    def failed(self) -> bool:
        return self._failed

    async def append(
        self, batches: list[BatchInfo], now_ms: int, *, messages: list[Message] | None = None
    ) -> AppendResult:
        """Store validated batches as one entry each; return once durable per policy.

        ``messages``: the plain messages (:func:`core.records.build_plain_batch`) that
        the one batch in ``batches`` encodes; its entry is then remembered in
        :attr:`fresh`, so that readers skip decoding it.
        """
        if self._closed:
            raise UnknownTopic(f"{self.topic} was deleted")
        if self._failed:
            if self._pending:
                raise PartitionUnavailable(f"{self.topic} partition {self.number} is recovering")
            self._reset_from_log()
        # From here to log.append: no checkpoint (offset order == log order).
        verdicts = self.dedup.plan(batches)  # None unless a batch has a producer id
        if verdicts is not None:
            fresh = [b for b, v in zip(batches, verdicts, strict=True) if v is None]
            if not fresh:
                return await self._duplicate(verdicts)
        else:
            fresh = batches
        broker_ts = self._last_broker_ts = max(now_ms, self._last_broker_ts)
        base = offset = self.next_offset
        entries = []
        starts = []
        record = self.dedup.record
        for batch in fresh:
            starts.append(offset)
            last = offset + batch.last_offset_delta
            entries.append(EntryIn(last, broker_ts, build_entry(offset, broker_ts, batch.view)))
            if batch.is_transactional:
                self.txns.on_append(batch, offset)
            if verdicts is not None and not batch.is_control:
                record(batch.producer_id, batch.producer_epoch, batch.base_sequence,
                       batch.record_count, offset, broker_ts)
            offset = last + 1
        self.next_offset = offset
        slot = _Pending(offset)
        self._pending.append(slot)

        def durable() -> None:
            # Called by the log as soon as the entries are durable (before this task
            # resumes), or below: the watermark moves and readers wake a round sooner.
            if slot.done:
                return
            slot.done = True
            if messages is not None and self.fresh is not None and len(entries) == 1:
                data = entries[0].data
                if type(data) is bytes:
                    self.fresh.add(data, messages)
            recent = self.recent
            if recent is not None:
                for start, entry in zip(starts, entries, strict=True):
                    data = entry.data
                    if type(data) is bytes:
                        recent.add(data, ReadEntry(start, entry.key, broker_ts, framed_batch(data)))
            self._advance()

        try:
            # Shielded: once offsets are assigned the append must finish, or a
            # cancelled producer would leave a hole the watermark cannot pass.  A log
            # whose append_notify cannot be cancelled anyway spares the scope.
            log = self.log
            if log.append_notify_uncancellable:
                await log.append_notify(entries, durable)
            else:
                with trio.CancelScope(shield=True):
                    await log.append_notify(entries, durable)
        except LogClosedError:
            self._failed = True
            self._drop_pending(slot)
            raise UnknownTopic(f"{self.topic} was deleted") from None
        except StorageError as exc:
            self._failed = True
            self._drop_pending(slot)
            raise PartitionUnavailable(f"{self.topic} partition {self.number}: {exc}") from exc
        except BaseException:
            self._failed = True
            self._drop_pending(slot)
            raise
        durable()
        if self._states is not None:
            self._since_snapshot += 1
            if self._since_snapshot >= self._states.snapshot_every:
                self._save_state()
        if verdicts is not None and len(fresh) != len(batches):
            first, last_verdict = verdicts[0], verdicts[-1]
            return AppendResult(base if first is None else first.base_offset,
                                offset - 1 if last_verdict is None else last_verdict.last_offset,
                                broker_ts)
        return AppendResult(base, offset - 1, broker_ts)

    async def _duplicate(self, verdicts: list[Duplicate | None]) -> AppendResult:
        """The answer to a retry: its first copy's offsets, once those are acknowledged."""
        first, last = verdicts[0], verdicts[-1]
        assert first is not None and last is not None
        failures = self._failures
        while self.high_watermark <= last.last_offset:
            if self._failures != failures or self._closed:
                # the first copy may not be in the log: let the producer retry
                raise PartitionUnavailable(
                    f"{self.topic} partition {self.number}: the original append failed")
            if self._data_event is None:
                self._data_event = trio.Event()
            await self._data_event.wait()
        return AppendResult(first.base_offset, last.last_offset, first.broker_timestamp)

    def _save_state(self) -> None:
        assert self._states is not None
        self._since_snapshot = 0
        self._states.save(self.log.name, self.dedup, self.high_watermark)

    def _drop_pending(self, slot: _Pending) -> None:
        # After a failure the watermark stays where it is until recovery.
        self._failures += 1
        if slot in self._pending:  # not when the log called it durable and failed after
            self._pending.remove(slot)
        self._advance()
        self._wake()

    def _wake(self) -> None:
        event, self._data_event = self._data_event, None
        if event is not None:
            event.set()
        if self._data_callbacks:
            self._run_data_callbacks()

    def _run_data_callbacks(self) -> None:
        callbacks, self._data_callbacks = self._data_callbacks, []
        for callback in callbacks:
            callback()

    def call_on_data(self, callback: Callable[[], object]) -> None:
        """Call ``callback()`` once, at the next move of the high watermark, a failed
        append or :meth:`close` (what wakes :meth:`wait_for_data`), from whatever runs that.

        The synchronous form of :meth:`wait_for_data` for a task that waits for other
        things too (:class:`core.subscriptions.subscription.PartitionSubscription`):
        no event, no checkpoint.  ``callback`` must be quick and must not raise; each
        registration fires once, so a caller registers again only after it fired (the
        list stays bounded by the number of waiters).
        """
        self._data_callbacks.append(callback)

    @property
    def closed(self) -> bool:
        """Whether the partition was closed (topic deleted or core shut down)."""
        return self._closed

    def _advance(self) -> None:
        pending = self._pending
        hw = self.high_watermark
        while pending and pending[0].done:
            end = pending.popleft().end
            if not self._failed:
                hw = end
        if self._failed and not pending:
            self._reset_from_log()  # every in-flight append is over: the log is the truth
        else:
            self._set_high_watermark(hw)

    def _set_high_watermark(self, hw: int) -> None:
        if hw != self.high_watermark:
            self.high_watermark = hw
            event, self._data_event = self._data_event, None
            if event is not None:
                event.set()
            if self._data_callbacks:
                self._run_data_callbacks()

    async def wait_for_data(self, offset: int) -> None:
        """Return once the high watermark is above ``offset`` (no polling)."""
        while self.high_watermark <= offset:
            if self._closed:
                raise UnknownTopic(f"{self.topic} was deleted")
            if self._data_event is None:
                self._data_event = trio.Event()
            await self._data_event.wait()

    @property
    def last_stable_offset(self) -> int:
        """First offset of the oldest open transaction, else the high watermark."""
        return self.txns.stable_offset(self.high_watermark)

    async def wait_for_stable(self, offset: int) -> None:
        """Return once the last stable offset is above ``offset`` (no polling)."""
        while self.last_stable_offset <= offset:
            if self._closed:
                raise UnknownTopic(f"{self.topic} was deleted")
            if self._data_event is None:
                self._data_event = trio.Event()
            await self._data_event.wait()

    async def earliest_offset(self) -> int:
        """Offset of the first record still stored (== high watermark when none)."""
        for _ in range(_READ_RETRIES):
            start = self.log.start_position
            if start >= self.log.end_position:
                return self.high_watermark
            if self._earliest_cache[0] == start:
                return self._earliest_cache[1]
            try:
                first = await self.log.read(start, 1, max_entries=1)
            except PositionOutOfRangeError:
                continue
            offset = min(decode_entry(first[0].data).index, self.high_watermark)
            self._earliest_cache = (start, offset)
            return offset
        raise PartitionUnavailable("retention kept moving the start of the log")

    async def read(self, offset: int, max_bytes: int) -> list[ReadEntry]:
        """Entries from the one holding ``offset``, up to ``max_bytes`` (at least one).

        Stops at the high watermark.  Raises :class:`OffsetOutOfRange` when
        ``offset`` is past the watermark or before the earliest stored offset.
        """
        hw = self.high_watermark
        if offset == hw:
            return []
        if offset > hw or offset < 0:
            raise OffsetOutOfRange(offset, await self.earliest_offset(), hw)
        found = self.read_nowait(offset, max_bytes)
        if found is not None:  # a reader keeping up: one checkpoint in all
            await trio.lowlevel.checkpoint()
            return found
        for _ in range(_READ_RETRIES):
            log = self.log
            start = log.start_position
            floor = await log.floor_position(offset - 1) if offset > 0 else None
            position = start if floor is None else max(floor + 1, start)
            try:
                stored = await log.read(position, max_bytes)
            except PositionOutOfRangeError:
                continue
            out = _read_entries(stored, hw, self.recent)
            if not out or out[0].base_offset > offset:
                # retention dropped the entry holding ``offset``
                raise OffsetOutOfRange(offset, await self.earliest_offset(), hw)
            return out
        raise PartitionUnavailable("retention kept moving the start of the log")

    def read_nowait(self, offset: int, max_bytes: int) -> list[ReadEntry] | None:
        """What :meth:`read` returns, when the log can answer at once from memory
        (:meth:`storage.api.PartitionLog.read_after_nowait`); else None, also
        where :meth:`read` would raise.  No checkpoint: a caller that loops on it
        must checkpoint by itself now and then.
        """
        hw = self.high_watermark
        if offset == hw:
            return []
        if not 0 <= offset < hw:
            return None
        cached = self.log.read_after_nowait(offset - 1 if offset > 0 else None, max_bytes)
        if not cached:
            return None
        out = _read_entries(cached, hw, self.recent)
        if not out or out[0].base_offset > offset:
            return None  # retention dropped the entry holding ``offset``
        return out

    async def offset_for_timestamp(self, timestamp_ms: int) -> int | None:
        """First offset of the first entry with broker time >= ``timestamp_ms``, else None."""
        for _ in range(_READ_RETRIES):
            position = await self.log.position_for_timestamp(timestamp_ms)
            if position >= self.log.end_position:
                return None
            try:
                found = await self.log.read(position, 1, max_entries=1)
            except PositionOutOfRangeError:
                continue
            if not found or found[0].key >= self.high_watermark:
                return None
            return decode_entry(found[0].data).index
        raise PartitionUnavailable("retention kept moving the start of the log")

    async def apply_retention(self, policy: RetentionPolicy, now_ms: int) -> int:
        """Drop whole segments past ``policy``; return how many entries went."""
        if policy.max_age_ms is None and policy.max_bytes is None:
            return 0
        return await self.log.apply_retention(policy, now_ms)

    def close(self) -> None:
        """Mark closed (topic deleted or core shut down) and wake every waiter.

        Records a last producer-state snapshot (coalesced) when persisting.
        """
        if self._states is not None and not self._closed:
            self._save_state()
        self._closed = True
        self._wake()


def _read_entries(
    stored: list[StoredEntry], hw: int, recent: RecentEntries[ReadEntry] | None = None
) -> list[ReadEntry]:
    """``stored`` entries below the watermark ``hw``, decoded (or found in ``recent``)."""
    out: list[ReadEntry] = []
    for item in stored:
        if item.key >= hw:
            break
        if recent is not None:
            known = recent.get(item.data)
            if known is not None:
                out.append(known)
                continue
        entry = decode_entry(item.data)
        out.append(ReadEntry(entry.index, item.key, entry.broker_timestamp, entry.batch))
    return out
