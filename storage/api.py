"""The storage interface every backend implements.

Storage knows bytes, not protocols.  It offers two things:

* :class:`PartitionLog` — an append-only sequence of entries.  Each entry has a
  storage *position* (the backend's own contiguous numbering, starting at 0 and
  never reused), a caller-supplied *key* (a non-negative integer that must grow
  strictly from entry to entry; the core puts the offset of the batch's last record
  here) and a caller-supplied *timestamp* in milliseconds (non-decreasing; the
  core puts the broker publish time here).  Positions are storage bookkeeping:
  offsets that clients see never come from them.
* :class:`MetadataStore` — small versioned records with compare-and-set.

A backend is opened with :func:`storage.open_storage` as an async context
manager that owns whatever background tasks the backend needs.
"""

from __future__ import annotations

import enum
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass


class StorageError(Exception):
    """Base class for storage failures."""


class LogClosedError(StorageError):
    """The log was closed (or deleted) while an operation was in progress."""


class OutOfOrderKeyError(StorageError, ValueError):
    """An appended entry's key is not greater than the previous key."""


class PositionOutOfRangeError(StorageError, ValueError):
    """A read asked for a position before the start or after the end of the log."""


class VersionConflictError(StorageError):
    """A compare-and-set on the metadata store found another version."""

    def __init__(self, key: str, expected: int | None, actual: int | None) -> None:
        super().__init__(f"version conflict on {key!r}: expected {expected}, found {actual}")
        self.key = key
        self.expected = expected
        self.actual = actual


class SyncMode(enum.Enum):
    ALWAYS = "always"
    INTERVAL = "interval"
    NEVER = "never"


@dataclass(frozen=True, slots=True)
class DurabilityPolicy:
    """When an append counts as durable.

    ``always``: fsync before acknowledging; concurrent appends share one fsync
    (group commit).  ``interval:<ms>``: acknowledge once written to the OS, fsync
    at least every ``interval_ms``.  ``never``: acknowledge once written to the
    OS and leave syncing to the OS.
    """

    mode: SyncMode = SyncMode.ALWAYS
    interval_ms: int = 0

    @classmethod
    def parse(cls, text: str) -> DurabilityPolicy:
        text = text.strip().lower()
        if text == "always":
            return cls(SyncMode.ALWAYS)
        if text == "never":
            return cls(SyncMode.NEVER)
        if text.startswith("interval:"):
            try:
                ms = int(text.split(":", 1)[1])
            except ValueError:
                ms = -1
            if ms <= 0:
                raise ValueError(f"interval needs a positive number of milliseconds: {text!r}")
            return cls(SyncMode.INTERVAL, ms)
        raise ValueError(f"unknown durability policy {text!r} (always, interval:<ms>, never)")

    def __str__(self) -> str:
        if self.mode is SyncMode.INTERVAL:
            return f"interval:{self.interval_ms}"
        return str(self.mode.value)


@dataclass(frozen=True, slots=True)
class EntryIn:
    """An entry handed to :meth:`PartitionLog.append`."""

    key: int
    timestamp_ms: int
    data: bytes


@dataclass(frozen=True, slots=True)
class StoredEntry:
    """An entry read back from a :class:`PartitionLog`."""

    position: int
    key: int
    timestamp_ms: int
    data: bytes


@dataclass(frozen=True, slots=True)
class RetentionPolicy:
    """Whole segments are dropped once every entry in them is past a limit.

    ``None`` means unlimited.  The active (last) segment is never dropped.
    """

    max_age_ms: int | None = None
    max_bytes: int | None = None


class PartitionLog(ABC):
    """An append-only log of entries, the unit of ordering and durability."""

    @property
    @abstractmethod
    def name(self) -> str:
        """The name the log was opened with."""

    @property
    @abstractmethod
    def start_position(self) -> int:
        """Position of the first entry still stored (== end_position when empty)."""

    @property
    @abstractmethod
    def end_position(self) -> int:
        """End of the acknowledged entries: the position after the last one.

        Appends still in flight are not counted.
        """

    @property
    @abstractmethod
    def last_key(self) -> int | None:
        """Key of the last entry ever appended (kept across retention), or None."""

    @property
    @abstractmethod
    def size_bytes(self) -> int:
        """Bytes currently stored for this log (all segments)."""

    @abstractmethod
    async def append(self, entries: Sequence[EntryIn]) -> list[int]:
        """Append entries atomically in order; return their positions.

        Returns only once the entries are as durable as the durability policy
        promises.  Keys must be strictly increasing (also against the last key
        already in the log) or :class:`OutOfOrderKeyError` is raised and nothing
        is written.  Concurrent appends are ordered by arrival: the order of the
        calls (keys are checked and entries queued before the first checkpoint),
        and they return in that order too.  Timestamps are not checked; a
        non-decreasing sequence keeps :meth:`position_for_timestamp` meaningful.
        """

    #: True when :meth:`append_notify` cannot be cancelled (a cancellation arriving meanwhile
    #: is delivered at the caller's next checkpoint): callers need no shield of their own
    append_notify_uncancellable: bool = False

    async def append_notify(
        self, entries: Sequence[EntryIn], on_durable: Callable[[], object]
    ) -> list[int]:
        """:meth:`append`, calling ``on_durable()`` on the event loop once the entries
        are durable, possibly before this call returns (a scheduler round earlier).

        ``on_durable`` is called at most once, only when the append succeeds, and
        must neither block nor raise.  The default calls it when :meth:`append`
        returns; a backend may call it sooner.
        """
        positions = await self.append(entries)
        on_durable()
        return positions

    @abstractmethod
    async def read(
        self, position: int, max_bytes: int, max_entries: int | None = None
    ) -> list[StoredEntry]:
        """Read entries starting at ``position``.

        Returns at least one entry when one exists at ``position`` (even if it
        alone exceeds ``max_bytes``), then more while their data fits in
        ``max_bytes``.  Reading at ``end_position`` returns ``[]``.  A position
        before ``start_position`` or after ``end_position`` raises
        :class:`PositionOutOfRangeError`.  Only acknowledged entries are returned.
        """

    @abstractmethod
    async def floor_position(self, key: int) -> int | None:
        """Position of the last stored entry whose key is <= ``key``, else None."""

    def read_after_nowait(self, key: int | None, max_bytes: int) -> list[StoredEntry] | None:
        """What :meth:`read` returns from the entry after the last one whose key is
        <= ``key`` (from ``start_position`` when ``key`` is None), if the log can
        answer at once from memory; else None (and on a closed log).

        The fast path of ``read(floor_position(key) + 1, max_bytes)`` for a reader
        keeping up with the appends: no I/O, no checkpoint.  The default always
        answers None (callers then use :meth:`floor_position` and :meth:`read`).
        """
        return None

    @abstractmethod
    async def position_for_timestamp(self, timestamp_ms: int) -> int:
        """Position of the first stored entry with timestamp >= ``timestamp_ms``.

        ``end_position`` when there is none.
        """

    @abstractmethod
    async def apply_retention(self, policy: RetentionPolicy, now_ms: int) -> int:
        """Drop whole segments past the policy; return how many entries were dropped."""

    @abstractmethod
    async def truncate_before(self, position: int) -> int:
        """Drop whole segments that lie entirely before ``position``; return entries dropped."""

    @abstractmethod
    async def sync(self) -> None:
        """Make everything appended so far durable (fsync), whatever the policy."""

    @abstractmethod
    async def close(self) -> None:
        """Flush and close; further calls raise :class:`LogClosedError`."""


@dataclass(frozen=True, slots=True)
class Versioned:
    """A metadata record: its value and version (1 for a new record, +1 per write)."""

    value: bytes
    version: int


class MetadataStore(ABC):
    """Small versioned records under ``/``-separated keys, with compare-and-set.

    Versions start at 1 and grow by one on every write of a key.  In
    ``put``/``delete``, ``expected_version=None`` writes unconditionally,
    ``expected_version=0`` requires that the key does not exist, and any other
    value requires the current version to match, else
    :class:`VersionConflictError` is raised and nothing changes.
    """

    @abstractmethod
    async def get(self, key: str) -> Versioned | None: ...

    @abstractmethod
    async def put(self, key: str, value: bytes, expected_version: int | None = None) -> int:
        """Write ``value``; return the new version."""

    @abstractmethod
    async def delete(self, key: str, expected_version: int | None = None) -> bool:
        """Delete ``key``; return whether it existed."""

    @abstractmethod
    async def list(self, prefix: str) -> list[tuple[str, Versioned]]:
        """All records whose key starts with ``prefix``, ordered by key."""

    @abstractmethod
    def put_coalesced(self, key: str, value: bytes) -> None:
        """Record a frequently rewritten value (a cursor) without waiting.

        Only the latest value per key is kept and written in the next batch;
        ``get``/``list`` see it at once.  Use :meth:`flush` to wait for it.
        """

    @abstractmethod
    async def flush(self) -> None:
        """Wait until every coalesced write made so far is stored."""

    @abstractmethod
    async def close(self) -> None: ...


class Storage(ABC):
    """A storage backend: named partition logs and one metadata store."""

    @property
    @abstractmethod
    def metadata(self) -> MetadataStore: ...

    @property
    @abstractmethod
    def policy(self) -> DurabilityPolicy: ...

    @abstractmethod
    async def open_log(self, name: str) -> PartitionLog:
        """Open (creating if needed) the log called ``name``; the same object for the same name.

        Names are ``/``-separated path-like strings made of ``[A-Za-z0-9._=-]``.
        """

    @abstractmethod
    async def delete_log(self, name: str) -> None:
        """Close and delete a log and all its data (no error when absent)."""

    @abstractmethod
    async def list_logs(self) -> list[str]: ...
