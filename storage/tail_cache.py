"""The tail cache of a log: its most recently published entries, held in memory.

As the writer publishes a group it also keeps its entries here (the very ``bytes``
objects that were appended, no copy), bounded by bytes, so a reader keeping up with the
log is served from memory (see :mod:`storage.partition_log`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from storage.api import EntryIn, StoredEntry

__all__ = ["FLOOR_SCAN", "TailCache"]

#: newest entries looked at for a reader's floor (see :meth:`TailCache.floor`)
FLOOR_SCAN = 16


class TailCache:
    """The most recently published entries of a log, contiguous, at most ``limit`` bytes.

    A list with a moving head (evicted entries are cut off in bulk), so that looking up a
    position is an index computation.
    """

    __slots__ = ("_head", "_items", "_limit", "_nbytes")

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._items: list[StoredEntry] = []
        self._head = 0  # index of the first live item
        self._nbytes = 0

    @property
    def nbytes(self) -> int:
        """Bytes of entry data held."""
        return self._nbytes

    def __len__(self) -> int:
        return len(self._items) - self._head

    def add(self, first: int, entries: Sequence[EntryIn]) -> None:
        """Remember ``entries``, just published at positions ``first``, ``first + 1``, ..."""
        if self._limit <= 0:
            return
        items = self._items
        if len(self) and items[-1].position + 1 != first:
            self.clear()  # never a gap: the cache is one contiguous run
        nbytes = self._nbytes
        for i, entry in enumerate(entries):
            data = entry.data if type(entry.data) is bytes else bytes(entry.data)
            items.append(StoredEntry(first + i, entry.key, entry.timestamp_ms, data))
            nbytes += len(data)
        self._nbytes = nbytes
        if nbytes > self._limit:
            self._evict(lambda: self._nbytes > self._limit)

    def floor(self, key: int, end: int) -> int | None:
        """Position of the last entry with a key ``<= key`` when the cache can tell at a
        glance: the cache ends at the published ``end`` and that entry is one of its
        newest ``FLOOR_SCAN`` (a reader keeping up); else None (ask the index)."""
        items = self._items
        i = len(items) - 1
        if i < self._head or items[i].position != end - 1:
            return None
        stop = max(self._head, i - FLOOR_SCAN)
        while i >= stop:
            item = items[i]
            if item.key <= key:
                return item.position
            i -= 1
        return None

    def drop_before(self, position: int) -> None:
        """Forget entries below ``position`` (retention removed them)."""
        self._evict(lambda: self._items[self._head].position < position)

    def clear(self) -> None:
        self._items = []
        self._head = 0
        self._nbytes = 0

    def _evict(self, while_true: Callable[[], bool]) -> None:
        items = self._items
        while self._head < len(items) and while_true():
            self._nbytes -= len(items[self._head].data)
            self._head += 1
        if self._head == len(items):
            self.clear()
        elif self._head > 64 and self._head * 2 > len(items):
            del items[: self._head]
            self._head = 0

    def read(
        self, position: int, end: int, max_bytes: int, max_entries: int | None
    ) -> list[StoredEntry] | None:
        """Entries from ``position`` as :meth:`LocalLog.read` would return them, or None
        when ``position`` is not cached.  Only entries below ``end`` are returned."""
        if not len(self) or (max_entries is not None and max_entries < 1):
            return None
        items = self._items
        first = items[self._head].position
        if not first <= position < end:
            return None
        i = self._head + position - first
        stop = min(len(items), self._head + end - first)
        if max_entries is not None:
            stop = min(stop, i + max_entries)
        out = [items[i]]
        used = len(items[i].data)
        for j in range(i + 1, stop):
            item = items[j]
            used += len(item.data)
            if used > max_bytes:
                break
            out.append(item)
        return out
