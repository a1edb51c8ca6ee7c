"""Topic compaction: a compacted view of each partition (the latest value per key).

What the view holds
-------------------
For every key, the last record written with it.  A record whose value is null is
a *tombstone*: it deletes the key (Kafka's rule).  A zero-length value is a value
like any other, as in Kafka, so a Kafka client that writes ``b""`` reads ``b""``
back; MQTT, where an empty retained payload clears the retained message, asks
:func:`core.compacted_view.latest_by_key` with ``empty_is_delete=True``.  Records
without a key, and control batches (transaction markers), are not in the view.
Tombstones stay in the compacted log at least
``CompactionSettings.tombstone_retention_ms`` (by broker publish time) so that a
consumer that read the key earlier learns it was deleted; after that a run drops
them (Kafka's ``delete.retention.ms``).  Once in the compacted log a tombstone's
age is that of the newest record of its rebuilt batch, so it may stay longer.

How the view is stored
----------------------
The view of partition ``P`` below offset ``H`` (the *horizon*) is a separate log
``<P's log name>/compacted-<generation>`` in the same storage.  Its entries are
normal entries (:mod:`core.entry` framing around a v2 record batch, storage key =
offset of the batch's last record) and every record keeps its original offset: a
batch holds survivors in offset order, its base offset is the first one's offset
and the others are written with their own deltas, gaps included, as Kafka's log
cleaner writes them.  The last entry always ends at ``H - 1``: its batch header's
last offset delta is stretched past its last record (or, when no record is left
after the previous entry, it is a batch with no records), so a reader at any
offset below ``H`` gets an entry that carries it on to ``H`` (a Kafka consumer
continues at the batch's last offset + 1).  Batches are rebuilt uncompressed,
with no producer id.  The
metadata record ``core/compaction/<tenant>/<namespace>/<topic>/<partition>`` holds
``{"generation": g, "horizon": H}``.  Offsets from ``H`` on are read from the live
log (:mod:`core.compacted_view`).

How a run works
---------------
A run takes ``H`` = the high watermark and reads its *sources*: the current
compacted log (everything below the old horizon), then the live log from the old
horizon to ``H``; so each run is incremental.  Pass 1 maps a 128-bit BLAKE2b digest
of each key to the offset of the key's last record: memory is one dict entry per
distinct key, capped by ``max_keys`` (give or take one batch); at the cap the run
stops at an entry boundary, which becomes its horizon, and the next run goes on
from there.  Pass 2 reads the sources again and writes each record that is the
last of its key to a new log under the next generation, then fsyncs it.

The switch is atomic: the metadata record is flipped with compare-and-set, and
only then is the old generation's log deleted.  A crash before the flip leaves
the old view as it was (plus an orphan new log, which the next run deletes before
reusing its name); a crash after it leaves an orphan old log, which the next run
deletes too.  Readers that hold the old log see it closed and retry with the new
state.

Limits: records of aborted transactions are not filtered out (there is no abort
index yet), and the live log's retention still applies: records that retention
drops before a run has compacted them are lost from the view (run compaction
before retention).
"""

from __future__ import annotations

import hashlib
import json
import logging
import struct
import weakref
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import trio
from kafka.record.default_records import DefaultRecordBatchBuilder
from kafka.record.util import calc_crc32c

from core.batch import ATTRIBUTES_START, CRC_START
from core.entry import build_entry, decode_entry
from core.errors import CoreError, OffsetOutOfRange, UnknownTopic
from core.names import TopicName
from core.partition import ReadEntry
from core.records import Message, StoredMessage, decode_batch
from storage.api import EntryIn, PartitionLog, StorageError, VersionConflictError

if TYPE_CHECKING:
    from core.api import Core, TopicRef

__all__ = [
    "COMPACTION_PREFIX",
    "CompactionError",
    "CompactionResult",
    "CompactionSettings",
    "CompactionState",
    "Compactor",
    "compact_due_topics",
    "compact_now",
    "compacted_log_name",
    "compactor_for",
    "configure_compaction",
    "state_key",
]

log = logging.getLogger(__name__)

COMPACTION_PREFIX = "core/compaction/"
_MAX_DELTA = 2**31 - 1  # record offset deltas are int32 in a v2 batch
_MAX_BATCH_BUILD = 2**31 - 1
_LAST_DELTA = struct.Struct(">i")
_LAST_DELTA_AT = 23  # after base offset, length, leader epoch, magic, CRC, attributes
_CRC = struct.Struct(">I")


class CompactionError(CoreError):
    """A compaction could not run (too many keys, a concurrent run, ...)."""


@dataclass(frozen=True, slots=True)
class CompactionSettings:
    """Tuning of the compactor; every buffer it uses is bounded by these.

    ``max_keys``: distinct keys one run maps (pass 1 memory, ~120 bytes each).
    ``tombstone_retention_ms``: how long tombstones stay in the view.
    ``batch_bytes``/``batch_records``: size of the rebuilt batches.
    ``read_bytes``: budget of each read from a source log.
    ``append_entries``: entries written to the new log per append call.
    ``min_new_offsets``: the periodic task skips partitions with fewer new offsets.
    """

    max_keys: int = 250_000
    tombstone_retention_ms: int = 24 * 3600 * 1000
    batch_bytes: int = 256 * 1024
    batch_records: int = 4096
    read_bytes: int = 1024 * 1024
    append_entries: int = 64
    min_new_offsets: int = 1

    def __post_init__(self) -> None:
        for name in ("max_keys", "batch_bytes", "batch_records", "read_bytes",
                     "append_entries", "min_new_offsets"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1")
        if self.tombstone_retention_ms < 0:
            raise ValueError("tombstone_retention_ms must not be negative")


@dataclass(frozen=True, slots=True)
class CompactionState:
    """The committed view of one partition: offsets below ``horizon`` are in
    generation ``generation``'s log (generation 0: no view yet).

    ``version`` is the metadata record's version (0 when there is none).
    """

    generation: int = 0
    horizon: int = 0
    version: int = 0

    def to_json(self) -> bytes:
        return json.dumps({"generation": self.generation, "horizon": self.horizon}).encode()

    @classmethod
    def from_json(cls, data: bytes, version: int) -> CompactionState:
        raw = json.loads(data)
        return cls(int(raw["generation"]), int(raw["horizon"]), version)


@dataclass(frozen=True, slots=True)
class CompactionResult:
    """What one run did; ``compacted`` is False when it had nothing to do."""

    topic: TopicName
    partition: int
    compacted: bool
    generation: int
    horizon: int
    previous_horizon: int
    records_read: int = 0
    records_kept: int = 0
    tombstones_kept: int = 0
    entries_written: int = 0


@dataclass(frozen=True, slots=True)
class LoadedView:
    """A committed state and its open compacted log (None for generation 0)."""

    state: CompactionState
    log: PartitionLog | None


def state_key(topic: TopicName, partition: int) -> str:
    """Metadata key of a partition's compaction state."""
    return f"{COMPACTION_PREFIX}{topic.base.metadata_path}/{partition}"


def compacted_log_name(topic: TopicName, partition: int, generation: int) -> str:
    """Storage log name of one generation of a partition's compacted view."""
    return f"{topic.base.log_name(partition)}/compacted-{generation}"


def key_digest(key: bytes) -> bytes:
    """The 128-bit digest pass 1 maps keys by."""
    return hashlib.blake2b(key, digest_size=16).digest()


def data_records(entry: ReadEntry) -> list[StoredMessage]:
    """The records of ``entry`` that can be in a view: keyed, not control."""
    records = decode_batch(entry.batch)
    if records and records[0].control:
        return []
    return [r for r in records if r.message.key is not None]


# ------------------------------------------------------------------ reading sources

EntryVisitor = Callable[[ReadEntry], Awaitable[bool]]


async def scan_compacted_log(clog: PartitionLog, read_bytes: int, visit: EntryVisitor) -> bool:
    """Feed every entry of a compacted log to ``visit`` in order.

    Returns False as soon as ``visit`` does (it asks to stop), else True.  Raises
    the storage errors of a log deleted meanwhile (``LogClosedError``,
    ``PositionOutOfRangeError``); callers retry with a fresh state.
    """
    position = clog.start_position
    while position < clog.end_position:
        stored = await clog.read(position, read_bytes)
        if not stored:
            break
        for item in stored:
            entry = decode_entry(item.data)
            if not await visit(ReadEntry(entry.index, item.key, entry.broker_timestamp,
                                         entry.batch)):
                return False
            await trio.lowlevel.checkpoint()  # decoding is CPU work: let others run
        position = stored[-1].position + 1
    return True


async def scan_live_log(
    core: Core, topic: TopicName, partition: int, start: int, end: int, read_bytes: int,
    visit: EntryVisitor,
) -> bool:
    """Feed the live entries holding offsets ``[start, end)`` to ``visit`` in order.

    Entries that retention already dropped are skipped (with a warning).  Returns
    False as soon as ``visit`` does, else True.
    """
    offset = start
    while offset < end:
        try:
            entries = await core.read(topic, partition, offset, read_bytes)
        except OffsetOutOfRange:
            earliest = await core.earliest_offset(topic, partition)
            if earliest <= offset:
                raise
            log.warning("%s partition %d: offsets %d..%d were dropped by retention before "
                        "compaction", topic, partition, offset, earliest - 1)
            offset = earliest
            continue
        if not entries:
            break
        for entry in entries:
            if entry.base_offset >= end:
                return True
            if not await visit(entry):
                return False
            offset = entry.last_offset + 1
            await trio.lowlevel.checkpoint()  # decoding is CPU work: let others run
    return True


# ------------------------------------------------------------------ writing the view


class _ViewWriter:
    """Groups surviving records into batches and appends them, a bounded chunk at a time."""

    def __init__(self, clog: PartitionLog, settings: CompactionSettings) -> None:
        self._log = clog
        self._settings = settings
        self._records: list[tuple[int, Message]] = []
        self._size = 0
        self._broker_ts = 0  # newest broker time of the batch being built
        self._last_ts = 0  # of the last entry: entry timestamps never decrease
        self._last_key = -1
        self._entries: list[EntryIn] = []
        self.entries_written = 0

    async def add(self, offset: int, broker_ts: int, message: Message) -> None:
        if self._records and offset - self._records[0][0] > _MAX_DELTA:
            self._seal()
        self._records.append((offset, message))
        self._size += _record_size(message)
        self._broker_ts = max(self._broker_ts, broker_ts)
        s = self._settings
        if self._size >= s.batch_bytes or len(self._records) >= s.batch_records:
            self._seal()
            if len(self._entries) >= s.append_entries:
                await self._append()

    async def finish(self, horizon: int) -> None:
        """Write what is left so that the last entry ends at ``horizon - 1``; fsync."""
        if horizon > 0:
            if self._records and horizon - 1 - self._records[0][0] <= _MAX_DELTA:
                self._seal(horizon - 1)
            else:
                self._seal()
                if self._last_key < horizon - 1:
                    self._add_entry(horizon - 1, horizon - 1, [])
        await self._append()
        await self._log.sync()

    def _seal(self, last: int | None = None) -> None:
        if self._records:
            base = self._records[0][0]
            self._add_entry(base, self._records[-1][0] if last is None else last, self._records)
            self._records = []
            self._size = 0

    def _add_entry(self, base: int, last: int, records: list[tuple[int, Message]]) -> None:
        batch = build_rebased_batch(base, last, records)
        ts = self._last_ts = max(self._last_ts, self._broker_ts)
        self._entries.append(EntryIn(last, ts, build_entry(base, ts, memoryview(batch))))
        self._last_key = last
        self._broker_ts = 0

    async def _append(self) -> None:
        if self._entries:
            entries, self._entries = self._entries, []
            await self._log.append(entries)
            self.entries_written += len(entries)


def _record_size(message: Message) -> int:
    size = 24 + len(message.key or b"") + len(message.value or b"")
    return size + sum(len(k) + len(v) + 4 for k, v in message.headers)


def build_rebased_batch(base: int, last: int, records: list[tuple[int, Message]]) -> bytes:
    """One uncompressed v2 batch spanning offsets ``base..last`` holding ``(offset, message)``.

    Each record is written at its own offset (delta from ``base``; gaps allowed);
    ``last`` may be past the last record and ``records`` may be empty (the header's
    last offset delta still says where the batch ends, as after Kafka's cleaner).
    The batch's base offset field is left 0: :func:`core.entry.build_entry` sets it.
    """
    builder = DefaultRecordBatchBuilder(
        magic=2, compression_type=0, is_transactional=False, producer_id=-1,
        producer_epoch=-1, base_sequence=-1, batch_size=_MAX_BATCH_BUILD,
    )
    for offset, msg in records:
        builder.append(offset - base, msg.timestamp_ms, msg.key, msg.value, list(msg.headers))
    batch = builder.build()
    _LAST_DELTA.pack_into(batch, _LAST_DELTA_AT, last - base)
    _CRC.pack_into(batch, CRC_START, calc_crc32c(memoryview(batch)[ATTRIBUTES_START:]))
    return bytes(batch)


# ------------------------------------------------------------------ the compactor


class Compactor:
    """Compacts partitions of one core and caches their committed views.

    One run at a time per compactor (compaction is CPU-bound: runs are serialized).
    Get the core's compactor with :func:`compactor_for`.
    """

    def __init__(
        self, core: Core, settings: CompactionSettings | None = None,
        clock_ms: Callable[[], int] | None = None,
    ) -> None:
        self.core = core
        self.settings = settings or CompactionSettings()
        # default: the broker publish-time clock, which tombstone ages are measured on
        self._clock_ms = clock_ms or core._clock_ms
        self._views: dict[tuple[TopicName, int], LoadedView] = {}
        self._lock = trio.Lock()

    # ---------------------------------------------------------------- state

    async def view(self, topic: TopicName, partition: int) -> LoadedView:
        """The committed view of a partition (cached; loaded from metadata once)."""
        topic = topic.base
        found = self._views.get((topic, partition))
        if found is not None:
            return found
        record = await self.core.storage.metadata.get(state_key(topic, partition))
        if record is None:
            loaded = LoadedView(CompactionState(), None)
        else:
            state = CompactionState.from_json(record.value, record.version)
            clog = await self.core.storage.open_log(
                compacted_log_name(topic, partition, state.generation))
            loaded = LoadedView(state, clog)
        self._views[(topic, partition)] = loaded
        return loaded

    def invalidate(self, topic: TopicName, partition: int) -> None:
        """Forget the cached view (reloaded from metadata on next use)."""
        self._views.pop((topic.base, partition), None)

    # ---------------------------------------------------------------- runs

    async def compact(
        self, topic: TopicRef, partition: int, *, now_ms: int | None = None,
        min_new_offsets: int = 1,
    ) -> CompactionResult:
        """Compact one partition up to its current high watermark.

        Skips (``compacted=False``) when fewer than ``min_new_offsets`` offsets were
        written since the last run.  Raises :class:`CompactionError` when the
        committed view alone has ``max_keys`` keys or more, or another process
        flipped the state meanwhile; storage errors propagate.  Either way the
        committed view is left as it was.
        """
        name = self.core.parse_topic(topic).base
        async with self._lock:
            return await self._compact(name, partition, now_ms, min_new_offsets)

    async def _compact(
        self, name: TopicName, partition: int, now_ms: int | None, min_new_offsets: int
    ) -> CompactionResult:
        core = self.core
        settings = self.settings
        hw = await core.latest_offset(name, partition)
        self.invalidate(name, partition)  # the metadata store is the truth for a run
        current = await self.view(name, partition)
        state = current.state
        source_log = current.log
        old_horizon = state.horizon
        if old_horizon > hw:  # left over from an earlier topic of this name
            log.warning("%s partition %d: stale compaction state (horizon %d > %d) ignored",
                        name, partition, old_horizon, hw)
            source_log, old_horizon = None, 0
        if hw - old_horizon < max(1, min_new_offsets):
            return CompactionResult(name, partition, False, state.generation, old_horizon,
                                    old_horizon)
        now = self._clock_ms() if now_ms is None else now_ms
        if state.generation > 1:  # an orphan from a crash after an earlier flip
            await core.storage.delete_log(compacted_log_name(name, partition,
                                                             state.generation - 1))

        # pass 1: the last offset of every key
        latest: dict[bytes, int] = {}
        horizon = hw
        read = 0

        async def map_entry(entry: ReadEntry) -> bool:
            nonlocal read
            for rec in data_records(entry):
                assert rec.message.key is not None
                latest[key_digest(rec.message.key)] = rec.offset
                read += 1
            return True

        async def map_live_entry(entry: ReadEntry) -> bool:
            nonlocal horizon
            if len(latest) >= settings.max_keys:
                horizon = entry.base_offset
                return False
            return await map_entry(entry)

        if source_log is not None:
            await scan_compacted_log(source_log, settings.read_bytes, map_entry)
        await scan_live_log(core, name, partition, old_horizon, hw, settings.read_bytes,
                            map_live_entry)
        if horizon <= old_horizon:
            raise CompactionError(
                f"{name} partition {partition}: more than {settings.max_keys} keys "
                "(raise CompactionSettings.max_keys)")

        # pass 2: write each key's last record to the next generation
        generation = state.generation + 1
        new_name = compacted_log_name(name, partition, generation)
        await core.storage.delete_log(new_name)  # an orphan from a crash before a flip
        new_log = await core.storage.open_log(new_name)
        writer = _ViewWriter(new_log, settings)
        kept = tombstones = 0
        tombstone_floor = now - settings.tombstone_retention_ms

        async def copy_entry(entry: ReadEntry) -> bool:
            nonlocal kept, tombstones
            for rec in data_records(entry):
                msg = rec.message
                assert msg.key is not None
                if latest.get(key_digest(msg.key)) != rec.offset:
                    continue
                if msg.value is None:
                    if entry.broker_timestamp < tombstone_floor:
                        continue
                    tombstones += 1
                else:
                    kept += 1
                await writer.add(rec.offset, entry.broker_timestamp, msg)
            return True

        if source_log is not None:
            await scan_compacted_log(source_log, settings.read_bytes, copy_entry)
        await scan_live_log(core, name, partition, old_horizon, horizon, settings.read_bytes,
                            copy_entry)
        await writer.finish(horizon)
        # the flip: shielded so that this process's cache agrees with the metadata store
        with trio.CancelScope(shield=True):
            try:
                version = await core.storage.metadata.put(
                    state_key(name, partition), CompactionState(generation, horizon).to_json(),
                    expected_version=state.version)
            except VersionConflictError:
                await core.storage.delete_log(new_name)
                raise CompactionError(
                    f"{name} partition {partition}: compaction state changed meanwhile"
                ) from None
            self._views[(name, partition)] = LoadedView(
                CompactionState(generation, horizon, version), new_log)
        if state.generation > 0:
            await core.storage.delete_log(compacted_log_name(name, partition, state.generation))
        log.info("compacted %s partition %d up to offset %d: %d records read, %d kept, "
                 "%d tombstones", name, partition, horizon, read, kept, tombstones)
        return CompactionResult(name, partition, True, generation, horizon, old_horizon,
                                read, kept, tombstones, writer.entries_written)

    async def compact_topic(
        self, topic: TopicRef, *, now_ms: int | None = None
    ) -> list[CompactionResult]:
        """Compact every partition of a topic (whatever its policy)."""
        info = await self.core.topic_metadata(topic)
        return [await self.compact(info.name, p, now_ms=now_ms)
                for p in range(info.partitions)]

    async def compact_due(self, *, now_ms: int | None = None) -> list[CompactionResult]:
        """One pass of the periodic task: compact topics whose policy says ``compacted``.

        A partition that fails is logged and skipped; the others still run.
        Returns the runs that compacted something.
        """
        done: list[CompactionResult] = []
        for name in await self.core.topics.list_all():
            try:
                info = await self.core.topic_metadata(name)
            except UnknownTopic:
                continue  # deleted meanwhile
            if not info.policies.compacted:
                continue
            for p in range(info.partitions):
                try:
                    result = await self.compact(
                        name, p, now_ms=now_ms, min_new_offsets=self.settings.min_new_offsets)
                except UnknownTopic:
                    break
                except (CoreError, StorageError) as exc:
                    log.warning("compaction of %s partition %d failed: %r", name, p, exc)
                    continue
                if result.compacted:
                    done.append(result)
        return done

    async def drop(self, topic: TopicRef, partitions: int) -> None:
        """Delete the views and states of a topic's first ``partitions`` partitions.

        For topic deletion (and creation over leftovers); no error when absent.  It
        takes no lock, so the core may call it under its own: a run racing with it
        fails its compare-and-set, or at worst leaves a state whose horizon is past
        the new topic's high watermark, which is ignored.
        """
        name = self.core.parse_topic(topic).base
        storage = self.core.storage
        for p in range(partitions):
            self.invalidate(name, p)
            key = state_key(name, p)
            record = await storage.metadata.get(key)
            gen = 0 if record is None else CompactionState.from_json(
                record.value, record.version).generation
            for g in (gen - 1, gen, gen + 1):
                if g > 0:
                    await storage.delete_log(compacted_log_name(name, p, g))
            if record is not None:
                await storage.metadata.delete(key)


_compactors: weakref.WeakKeyDictionary[Core, Compactor] = weakref.WeakKeyDictionary()


def compactor_for(core: Core) -> Compactor:
    """The compactor of ``core`` (created with default settings on first use)."""
    found = _compactors.get(core)
    if found is None:
        found = _compactors[core] = Compactor(core)
    return found


def configure_compaction(
    core: Core, settings: CompactionSettings, clock_ms: Callable[[], int] | None = None
) -> Compactor:
    """Give ``core`` a compactor with these settings (call before the first compaction)."""
    found = _compactors[core] = Compactor(core, settings, clock_ms)
    return found


async def compact_now(
    core: Core, topic: TopicRef, partition: int | None = None, *, now_ms: int | None = None
) -> list[CompactionResult]:
    """Compact one partition, or every partition of the topic, right now."""
    compactor = compactor_for(core)
    if partition is None:
        return await compactor.compact_topic(topic, now_ms=now_ms)
    return [await compactor.compact(topic, partition, now_ms=now_ms)]


async def compact_due_topics(core: Core) -> list[CompactionResult]:
    """Compact every topic whose policy says ``compacted`` (for the core's periodic task)."""
    return await compactor_for(core).compact_due()
