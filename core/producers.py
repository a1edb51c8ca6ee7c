"""Producer ids, and the persisted per-partition producer (dedup) state.

Metadata keys::

    core/producer-ids              {"next": N}   the next unallocated producer id
    producer-state/<log name>      a DedupState snapshot (JSON, see core.dedup)

**Producer ids** (:class:`ProducerIdAllocator`) are unique across restarts: the
counter in the metadata store is advanced a block at a time with compare-and-set
and ids are handed out from the block in memory, so an allocation costs a metadata
write only once per :data:`ID_BLOCK` ids.  A restart abandons the rest of its
block (ids are never reused; gaps are harmless).

**Producer state** (:class:`ProducerStateStore`) survives restart in two parts:
a snapshot, written with ``put_coalesced`` (never waited for on the append path)
every :data:`SNAPSHOT_EVERY` appends and when the partition closes; and the log
itself: at partition open, :meth:`ProducerStateStore.recover` loads the snapshot
and replays the entries after its offset, reading only each batch's fixed header
(producer id, epoch, base sequence, record count), never its records.  So even
after ``kill -9`` a retried batch finds the state of every batch in the log.

A snapshot only holds batches below its offset, which is the high watermark when
it was taken (acknowledged data).  A snapshot ahead of the log (a log that lost
its unsynced tail) is cut back to the log's end.
"""

from __future__ import annotations

import json
import logging

import trio

from core.batch import read_header
from core.dedup import DedupState
from core.entry import decode_entry
from core.errors import CoreError
from storage.api import MetadataStore, PartitionLog, StorageError, VersionConflictError

__all__ = [
    "ID_BLOCK",
    "PRODUCER_IDS_KEY",
    "PRODUCER_STATE_PREFIX",
    "SNAPSHOT_EVERY",
    "ProducerIdAllocator",
    "ProducerStateStore",
]

log = logging.getLogger(__name__)

PRODUCER_IDS_KEY = "core/producer-ids"
PRODUCER_STATE_PREFIX = "producer-state/"
ID_BLOCK = 1000
SNAPSHOT_EVERY = 1000
MAX_PRODUCER_ID = (1 << 63) - 1
_CAS_ATTEMPTS = 16
_REPLAY_READ_BYTES = 1 << 20


class ProducerIdsExhausted(CoreError):
    """The 63-bit producer id space is used up (or the counter is corrupt)."""


class ProducerIdAllocator:
    """Hands out producer ids, unique across restarts; see the module docstring."""

    def __init__(self, metadata: MetadataStore, block: int = ID_BLOCK) -> None:
        if block < 1:
            raise ValueError("block must be at least 1")
        self._md = metadata
        self._block = block
        self._next = 0
        self._limit = 0  # exclusive end of the block in hand
        self._lock = trio.Lock()

    async def allocate(self) -> int:
        """A fresh producer id (>= 0)."""
        if self._next < self._limit:  # no checkpoint: concurrent callers get distinct ids
            pid = self._next
            self._next += 1
            return pid
        async with self._lock:
            if self._next >= self._limit:
                self._next, self._limit = await self._claim_block()
            pid = self._next
            self._next += 1
            return pid

    async def _claim_block(self) -> tuple[int, int]:
        for _ in range(_CAS_ATTEMPTS):
            record = await self._md.get(PRODUCER_IDS_KEY)
            start = 0 if record is None else int(json.loads(record.value)["next"])
            end = start + self._block
            if start < 0 or end > MAX_PRODUCER_ID:
                raise ProducerIdsExhausted(f"producer id counter at {start}")
            try:
                await self._md.put(PRODUCER_IDS_KEY, json.dumps({"next": end}).encode(),
                                   expected_version=0 if record is None else record.version)
            except VersionConflictError:
                continue
            return start, end
        raise VersionConflictError(PRODUCER_IDS_KEY, None, None)


def state_key(log_name: str) -> str:
    """The metadata key of a partition log's producer-state snapshot."""
    return f"{PRODUCER_STATE_PREFIX}{log_name}"


class ProducerStateStore:
    """Snapshots of per-partition dedup state, and their recovery from the log."""

    def __init__(self, metadata: MetadataStore, snapshot_every: int = SNAPSHOT_EVERY) -> None:
        if snapshot_every < 1:
            raise ValueError("snapshot_every must be at least 1")
        self._md = metadata
        self.snapshot_every = snapshot_every

    def save(self, log_name: str, state: DedupState, offset: int) -> None:
        """Record ``state`` as of ``offset`` (coalesced: returns at once).

        A snapshot only shortens the replay at the next open, so a metadata store
        that refuses it (too many coalesced writes pending) is logged, not raised.
        """
        try:
            self._md.put_coalesced(state_key(log_name), state.snapshot(offset))
        except StorageError as exc:
            log.warning("%s: producer-state snapshot skipped: %s", log_name, exc)

    async def delete(self, log_name: str) -> None:
        """Forget a partition's snapshot (its topic is deleted or created afresh)."""
        await self._md.delete(state_key(log_name))

    async def recover(self, log_: PartitionLog, end_offset: int) -> DedupState:
        """The state of every batch in ``log_``: the snapshot, then the entries after it.

        ``end_offset`` is the partition's next offset (one past the log's last record).
        A new snapshot is recorded at the end, so the next open replays less.
        """
        state, offset = DedupState(), 0
        record = await self._md.get(state_key(log_.name))
        if record is not None:
            try:
                state, offset = DedupState.from_snapshot(record.value)
            except ValueError as exc:
                log.warning("%s: %s; rebuilding from the whole log", log_.name, exc)
                state, offset = DedupState(), 0
        if offset > end_offset:
            state.truncate(end_offset)
            offset = end_offset
        replayed = await self._replay(log_, state, offset)
        if replayed or record is None or offset != end_offset:
            self.save(log_.name, state, end_offset)
        return state

    async def _replay(self, log_: PartitionLog, state: DedupState, offset: int) -> int:
        """Apply the headers of the entries holding offsets ``>= offset``; return how many."""
        start = log_.start_position
        floor = await log_.floor_position(offset - 1) if offset > 0 else None
        position = start if floor is None else max(floor + 1, start)
        count = 0
        while position < log_.end_position:
            entries = await log_.read(position, _REPLAY_READ_BYTES)
            if not entries:
                break
            for stored in entries:
                entry = decode_entry(stored.data)
                header = read_header(entry.batch)
                if header.is_control:
                    continue
                state.record(header.producer_id, header.producer_epoch, header.base_sequence,
                             header.record_count, entry.index, entry.broker_timestamp)
                count += 1
            position = entries[-1].position + 1
        return count
