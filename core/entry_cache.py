"""What the core derived from recently appended log entries, found again by the entry object.

A partition frames each appended batch into one entry (a new ``bytes`` object)
and knows at that moment everything a reader decodes from it: index, broker
time, where the batch starts.  The log's tail cache then hands that very object
to every reader that keeps up.  :class:`RecentEntries` maps the object's
identity to the derived value, so those readers skip the decode (for log
entries: a protobuf parse and two objects per entry per reader).

Identity is checked on the object itself (a held entry keeps its ``id``
unique), so a copy, a file read or another log's entry never matches.
"""

from __future__ import annotations

from collections import deque
from typing import Generic, TypeVar

__all__ = ["RecentEntries"]

T = TypeVar("T")


class RecentEntries(Generic[T]):
    """A bounded identity map from entry objects to values derived from them.

    Holds at most ``max_entries`` entries and ``max_bytes`` of their weight (by
    default an entry's length); the oldest go first.  Not thread-safe (one trio run).
    """

    def __init__(self, max_entries: int = 256, max_bytes: int = 8 << 20) -> None:
        if max_entries < 1 or max_bytes < 1:
            raise ValueError("max_entries and max_bytes must be positive")
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self._held: dict[int, tuple[bytes, T, int]] = {}
        self._order: deque[int] = deque()
        #: weight (bytes) of the entries held
        self.bytes = 0
        #: lookups answered (for tests and benchmarks)
        self.hits = 0

    def __len__(self) -> int:
        return len(self._held)

    def add(self, entry: bytes, value: T, weight: int | None = None) -> None:
        """Remember ``value`` for ``entry``, counted as ``weight`` bytes (default: its length).

        An entry heavier than ``max_bytes`` is not held.
        """
        size = len(entry) if weight is None else weight
        key = id(entry)
        held = self._held
        if size > self.max_bytes or key in held:
            return
        held[key] = (entry, value, size)
        self._order.append(key)
        self.bytes += size
        while len(held) > self.max_entries or self.bytes > self.max_bytes:
            self.bytes -= held.pop(self._order.popleft())[2]

    def get(self, entry: object) -> T | None:
        """The value remembered for this very object, or None."""
        held = self._held.get(id(entry))
        if held is None or held[0] is not entry:
            return None
        self.hits += 1
        return held[1]

    def clear(self) -> None:
        """Forget every entry."""
        self._held.clear()
        self._order.clear()
        self.bytes = 0
