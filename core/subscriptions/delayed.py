"""Delayed delivery: messages held back until their ``ps.deliver-at-ms`` (pure logic).

A message carrying the gateway header :data:`core.headers.DELIVER_AT_MS`
(absolute epoch milliseconds, canonical ASCII decimal) is not delivered before
that time on a **Shared** subscription (Pulsar's rule: Exclusive, Failover and
Key_Shared subscriptions deliver it at once, the header is then just a header).

The subscription keeps held messages in a :class:`DelayedIndex`: only
``(due time, offset)`` pairs, never the message itself, so a held message costs
a few dozen bytes; when it becomes due the subscription reads it from the log
again.  The index has a cap (``max_size``); when it is full the subscription
stops reading ahead (every later message waits, delayed or not) until some held
messages become due and leave the index.

Held messages are not acknowledged, so the cursor's mark-delete never passes
them and a restart (or the last consumer leaving) finds them again from the
cursor: they are read once more and held again until due.  This module does no
I/O and knows no clock: callers pass ``now_ms`` (the manager's ``clock_ms``).
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Iterable

from core.headers import DELIVER_AT_MS, first_header, parse_uint

__all__ = ["DEFAULT_MAX_DELAYED", "DelayedIndex", "deliver_at_ms"]

#: default cap on the messages one subscription holds back per partition
DEFAULT_MAX_DELAYED = 10_000


def deliver_at_ms(headers: Iterable[tuple[str, bytes]]) -> int | None:
    """The delivery time (epoch ms) from the first ``ps.deliver-at-ms`` header.

    ``None`` when there is none or its value is not a canonical integer (the
    message is then delivered at once).
    """
    raw = first_header(headers, DELIVER_AT_MS)
    return None if raw is None else parse_uint(raw)


class DelayedIndex:
    """Offsets held back until a due time, popped in ``(due, offset)`` order.

    Bounded: :meth:`add` refuses (returns False) once ``max_size`` offsets are held.
    """

    __slots__ = ("_due", "_heap", "max_size")

    def __init__(self, max_size: int = DEFAULT_MAX_DELAYED) -> None:
        if max_size < 1:
            raise ValueError("max_size must be at least 1")
        self.max_size = max_size
        self._heap: list[tuple[int, int]] = []
        self._due: dict[int, int] = {}  # offset -> due time, the live entries

    def __len__(self) -> int:
        return len(self._due)

    def __contains__(self, offset: object) -> bool:
        return offset in self._due

    @property
    def full(self) -> bool:
        """Whether the cap is reached (the subscription must stop reading ahead)."""
        return len(self._due) >= self.max_size

    def add(self, offset: int, due_ms: int) -> bool:
        """Hold ``offset`` until ``due_ms``; False (nothing changes) when full or held."""
        if offset in self._due or self.full:
            return False
        self._due[offset] = due_ms
        heapq.heappush(self._heap, (due_ms, offset))
        return True

    def next_due_ms(self) -> int | None:
        """The earliest due time held, or None when empty."""
        self._drop_stale()
        return self._heap[0][0] if self._heap else None

    def pop_due(self, now_ms: int, limit: int) -> list[tuple[int, int]]:
        """Take up to ``limit`` offsets due at ``now_ms``, as ``(due, offset)``, in due order."""
        out: list[tuple[int, int]] = []
        heap = self._heap
        while len(out) < limit:
            self._drop_stale()
            if not heap or heap[0][0] > now_ms:
                break
            due, offset = heapq.heappop(heap)
            del self._due[offset]
            out.append((due, offset))
        return out

    def discard(self, offset: int) -> bool:
        """Stop holding ``offset`` (acknowledged meanwhile); return whether it was held."""
        # the heap entry stays until it reaches the top (:meth:`_drop_stale`)
        held = self._due.pop(offset, None) is not None
        self._drop_stale()
        return held

    def discard_if(self, drop: Callable[[int], bool]) -> int:
        """Stop holding every offset for which ``drop(offset)``; return how many."""
        gone = [o for o in self._due if drop(o)]
        for o in gone:
            del self._due[o]
        if gone:
            self._heap = [(d, o) for o, d in self._due.items()]
            heapq.heapify(self._heap)
        return len(gone)

    def lowest_offset(self) -> int | None:
        """The smallest offset held, or None."""
        return min(self._due) if self._due else None

    def clear(self) -> None:
        self._heap.clear()
        self._due.clear()

    def _drop_stale(self) -> None:
        heap, live = self._heap, self._due
        while heap and live.get(heap[0][1]) != heap[0][0]:
            heapq.heappop(heap)
        if len(heap) > 2 * len(live) + 64:  # many discards: rebuild to stay bounded
            self._heap = [(d, o) for o, d in live.items()]
            heapq.heapify(self._heap)
