"""An in-memory storage backend (``memory://``): for tests and as a reference model.

It keeps the same contract as the local backend, minus durability across
process restarts.  Entries are grouped into fixed-size "segments" so that
retention behaves like the on-disk backend.
"""

from __future__ import annotations

import bisect
import re
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager

import trio

from storage.api import (
    DurabilityPolicy,
    EntryIn,
    LogClosedError,
    MetadataStore,
    OutOfOrderKeyError,
    PartitionLog,
    PositionOutOfRangeError,
    RetentionPolicy,
    Storage,
    StoredEntry,
    VersionConflictError,
    Versioned,
)

LOG_NAME_RE = re.compile(r"^[A-Za-z0-9._=-]+(/[A-Za-z0-9._=-]+)*$")


def check_log_name(name: str) -> None:
    """Reject log names that are not safe path-like strings."""
    if not LOG_NAME_RE.match(name) or any(part in (".", "..") for part in name.split("/")):
        raise ValueError(f"invalid log name {name!r}")


class MemoryLog(PartitionLog):
    """A partition log held in a Python list."""

    def __init__(self, name: str, entries_per_segment: int = 64) -> None:
        self._name = name
        self._entries: list[StoredEntry] = []
        self._start = 0  # position of self._entries[0]
        self._keys: list[int] = []
        self._last_key: int | None = None
        self._closed = False
        self._per_segment = entries_per_segment

    @property
    def name(self) -> str:
        return self._name

    @property
    def start_position(self) -> int:
        return self._start

    @property
    def end_position(self) -> int:
        return self._start + len(self._entries)

    @property
    def last_key(self) -> int | None:
        return self._last_key

    @property
    def size_bytes(self) -> int:
        return sum(len(e.data) for e in self._entries)

    def _check_open(self) -> None:
        if self._closed:
            raise LogClosedError(self._name)

    async def append(self, entries: Sequence[EntryIn]) -> list[int]:
        self._check_open()
        last = self._last_key
        for entry in entries:
            if entry.key < 0 or (last is not None and entry.key <= last):
                raise OutOfOrderKeyError(f"key {entry.key} after {last}")
            last = entry.key
        # store before the first checkpoint: the order of calls is the order in the log
        positions = []
        for entry in entries:
            pos = self.end_position
            self._entries.append(StoredEntry(pos, entry.key, entry.timestamp_ms, entry.data))
            self._keys.append(entry.key)
            positions.append(pos)
        self._last_key = last
        await trio.lowlevel.checkpoint()
        return positions

    async def read(
        self, position: int, max_bytes: int, max_entries: int | None = None
    ) -> list[StoredEntry]:
        self._check_open()
        await trio.lowlevel.checkpoint()
        if position < self._start or position > self.end_position:
            raise PositionOutOfRangeError(
                f"{position} outside [{self._start}, {self.end_position}]"
            )
        return self._read(position, max_bytes, max_entries)

    def _read(self, position: int, max_bytes: int, max_entries: int | None) -> list[StoredEntry]:
        out: list[StoredEntry] = []
        used = 0
        entries = self._entries
        for i in range(position - self._start, len(entries)):
            entry = entries[i]
            if out and (used + len(entry.data) > max_bytes):
                break
            if max_entries is not None and len(out) >= max_entries:
                break
            out.append(entry)
            used += len(entry.data)
        return out

    async def floor_position(self, key: int) -> int | None:
        self._check_open()
        await trio.lowlevel.checkpoint()
        return self._floor(key)

    def _floor(self, key: int) -> int | None:
        i = bisect.bisect_right(self._keys, key)
        return None if i == 0 else self._start + i - 1

    def read_after_nowait(self, key: int | None, max_bytes: int) -> list[StoredEntry] | None:
        """Always answered: everything is in memory (see the base class)."""
        if self._closed:
            return None
        floor = None if key is None else self._floor(key)
        position = self._start if floor is None else floor + 1
        return self._read(position, max_bytes, None)

    async def position_for_timestamp(self, timestamp_ms: int) -> int:
        self._check_open()
        await trio.lowlevel.checkpoint()
        for entry in self._entries:
            if entry.timestamp_ms >= timestamp_ms:
                return entry.position
        return self.end_position

    def _droppable_segment(self) -> list[StoredEntry] | None:
        """The oldest segment when it is sealed (segments are aligned on absolute positions)."""
        active_base = self.end_position // self._per_segment * self._per_segment
        if self._start + self._per_segment > active_base:
            return None
        return self._entries[: self._per_segment]

    def _drop_oldest_segment(self) -> int:
        del self._entries[: self._per_segment]
        del self._keys[: self._per_segment]
        self._start += self._per_segment
        return self._per_segment

    async def apply_retention(self, policy: RetentionPolicy, now_ms: int) -> int:
        self._check_open()
        await trio.lowlevel.checkpoint()
        dropped = 0
        while (segment := self._droppable_segment()) is not None:
            too_old = (
                policy.max_age_ms is not None
                and segment[-1].timestamp_ms < now_ms - policy.max_age_ms
            )
            too_big = policy.max_bytes is not None and self.size_bytes - sum(
                len(e.data) for e in segment
            ) >= policy.max_bytes
            if not (too_old or too_big):
                break
            dropped += self._drop_oldest_segment()
        return dropped

    async def truncate_before(self, position: int) -> int:
        self._check_open()
        await trio.lowlevel.checkpoint()
        dropped = 0
        while (
            self._droppable_segment() is not None
            and self._start + self._per_segment <= position
        ):
            dropped += self._drop_oldest_segment()
        return dropped

    async def sync(self) -> None:
        self._check_open()
        await trio.lowlevel.checkpoint()

    async def close(self) -> None:
        self._closed = True


class MemoryMetadataStore(MetadataStore):
    """Versioned records in a dict."""

    def __init__(self) -> None:
        self._records: dict[str, Versioned] = {}

    async def get(self, key: str) -> Versioned | None:
        await trio.lowlevel.checkpoint()
        return self._records.get(key)

    def _check(self, key: str, expected_version: int | None) -> int:
        current = self._records.get(key)
        actual = current.version if current else 0
        if expected_version is not None and expected_version != actual:
            raise VersionConflictError(key, expected_version, actual or None)
        return actual

    # writes apply before their checkpoint (which cannot cancel them): a key's writes take
    # effect in the order they were called, whichever method made them (a ``put_coalesced``
    # made while a ``put`` waited in its checkpoint was once overwritten by that older put)

    async def put(self, key: str, value: bytes, expected_version: int | None = None) -> int:
        await trio.lowlevel.checkpoint_if_cancelled()
        version = self._check(key, expected_version) + 1
        self._records[key] = Versioned(bytes(value), version)
        await trio.lowlevel.cancel_shielded_checkpoint()
        return version

    async def delete(self, key: str, expected_version: int | None = None) -> bool:
        await trio.lowlevel.checkpoint_if_cancelled()
        actual = self._check(key, expected_version)
        self._records.pop(key, None)
        await trio.lowlevel.cancel_shielded_checkpoint()
        return actual > 0

    async def list(self, prefix: str) -> list[tuple[str, Versioned]]:
        await trio.lowlevel.checkpoint()
        return sorted((k, v) for k, v in self._records.items() if k.startswith(prefix))

    def put_coalesced(self, key: str, value: bytes) -> None:
        current = self._records.get(key)
        self._records[key] = Versioned(bytes(value), (current.version if current else 0) + 1)

    async def flush(self) -> None:
        await trio.lowlevel.checkpoint()

    async def close(self) -> None:
        await trio.lowlevel.checkpoint()


class MemoryStorage(Storage):
    """Logs and metadata that live as long as the process."""

    def __init__(self, policy: DurabilityPolicy | None = None) -> None:
        self._logs: dict[str, MemoryLog] = {}
        self._metadata = MemoryMetadataStore()
        self._policy = policy or DurabilityPolicy()

    @property
    def metadata(self) -> MetadataStore:
        return self._metadata

    @property
    def policy(self) -> DurabilityPolicy:
        return self._policy

    async def open_log(self, name: str) -> PartitionLog:
        check_log_name(name)
        await trio.lowlevel.checkpoint()
        log = self._logs.get(name)
        if log is None:
            log = self._logs[name] = MemoryLog(name)
        return log

    async def delete_log(self, name: str) -> None:
        await trio.lowlevel.checkpoint()
        log = self._logs.pop(name, None)
        if log is not None:
            await log.close()

    async def list_logs(self) -> list[str]:
        await trio.lowlevel.checkpoint()
        return sorted(self._logs)


@asynccontextmanager
async def open_memory_storage(policy: DurabilityPolicy | None = None) -> AsyncIterator[Storage]:
    storage = MemoryStorage(policy)
    try:
        yield storage
    finally:
        for log in list(storage._logs.values()):
            await log.close()
