"""A compact set of non-negative integers kept as sorted half-open ranges ``[lo, hi)``.

Cursors use it for individually acknowledged offsets: an ack storm of a million
scattered acks that coalesce into a few ranges costs a few ranges, never a
million objects.

How it works
------------
Two parallel sorted lists, ``_lo`` and ``_hi``, hold the ranges.  The ranges are
kept *canonical*: non-empty, non-overlapping and non-adjacent
(``_hi[i] < _lo[i + 1]``), so every set has exactly one representation and a
range's end is never a member.  Every lookup is a ``bisect`` (O(log n) in the
number of ranges); adding a range replaces a slice of each list with at most one
merged range (the slice assignment is a C ``memmove``; it is O(n) pointer moves
only when a range lands in the middle of very many others).  The number of
members is kept up to date, so ``count`` is O(1).
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Iterator

__all__ = ["RangeSet"]


class RangeSet:
    """A set of non-negative integers stored as canonical half-open ranges.

    ``len(rs)`` is the number of *ranges*; :attr:`count` is the number of
    integers in the set.  Iteration yields ``(lo, hi)`` tuples in ascending
    order.
    """

    __slots__ = ("_count", "_hi", "_lo")

    def __init__(self, ranges: Iterable[tuple[int, int]] = ()) -> None:
        self._lo: list[int] = []
        self._hi: list[int] = []
        self._count = 0
        for lo, hi in ranges:
            self.add_range(lo, hi)

    # ------------------------------------------------------------ updates

    def add(self, value: int) -> bool:
        """Add one integer; return whether it was new."""
        if value < 0:
            raise ValueError(f"negative value {value}")
        lo_list, hi_list = self._lo, self._hi
        i = bisect.bisect_right(lo_list, value) - 1
        if i >= 0 and value < hi_list[i]:
            return False
        # fast paths: extend the range on the left, the one on the right, or both
        joins_left = i >= 0 and hi_list[i] == value
        joins_right = i + 1 < len(lo_list) and lo_list[i + 1] == value + 1
        if joins_left and joins_right:
            hi_list[i] = hi_list[i + 1]
            del lo_list[i + 1]
            del hi_list[i + 1]
        elif joins_left:
            hi_list[i] = value + 1
        elif joins_right:
            lo_list[i + 1] = value
        else:
            lo_list.insert(i + 1, value)
            hi_list.insert(i + 1, value + 1)
        self._count += 1
        return True

    def add_range(self, lo: int, hi: int) -> int:
        """Add every integer in ``[lo, hi)``; return how many were new.

        An empty range (``hi <= lo``) changes nothing.
        """
        if lo < 0:
            raise ValueError(f"negative value {lo}")
        if hi <= lo:
            return 0
        lo_list, hi_list = self._lo, self._hi
        # ranges i..j-1 overlap or touch [lo, hi): their end >= lo and their start <= hi
        i = bisect.bisect_left(hi_list, lo)
        j = bisect.bisect_right(lo_list, hi, i)
        if i == j:
            lo_list.insert(i, lo)
            hi_list.insert(i, hi)
            self._count += hi - lo
            return hi - lo
        new_lo = min(lo, lo_list[i])
        new_hi = max(hi, hi_list[j - 1])
        before = sum(hi_list[k] - lo_list[k] for k in range(i, j))
        lo_list[i:j] = [new_lo]
        hi_list[i:j] = [new_hi]
        added = (new_hi - new_lo) - before
        self._count += added
        return added

    def remove_below(self, bound: int) -> int:
        """Drop every integer ``< bound``; return how many were dropped."""
        lo_list, hi_list = self._lo, self._hi
        if not lo_list or lo_list[0] >= bound:
            return 0
        i = bisect.bisect_right(hi_list, bound)
        dropped = sum(hi_list[k] - lo_list[k] for k in range(i))
        del lo_list[:i]
        del hi_list[:i]
        if lo_list and lo_list[0] < bound:
            dropped += bound - lo_list[0]
            lo_list[0] = bound
        self._count -= dropped
        return dropped

    def clear(self) -> None:
        """Remove everything."""
        self._lo.clear()
        self._hi.clear()
        self._count = 0

    # ------------------------------------------------------------ queries

    def __contains__(self, value: object) -> bool:
        if not isinstance(value, int):
            return False
        i = bisect.bisect_right(self._lo, value) - 1
        return i >= 0 and value < self._hi[i]

    def contains(self, value: int) -> bool:
        """Whether ``value`` is in the set (same as ``value in rs``)."""
        return value in self

    @property
    def count(self) -> int:
        """The number of integers in the set."""
        return self._count

    def __len__(self) -> int:
        """The number of ranges."""
        return len(self._lo)

    def __bool__(self) -> bool:
        return bool(self._lo)

    def __iter__(self) -> Iterator[tuple[int, int]]:
        """The ranges ``(lo, hi)`` in ascending order."""
        return zip(list(self._lo), list(self._hi), strict=True)

    def ranges(self, limit: int | None = None) -> list[tuple[int, int]]:
        """The first ``limit`` ranges (all when None) as a list of ``(lo, hi)``."""
        end = len(self._lo) if limit is None else max(0, limit)
        return list(zip(self._lo[:end], self._hi[:end], strict=True))

    def first(self) -> tuple[int, int] | None:
        """The lowest range, or None when empty."""
        return (self._lo[0], self._hi[0]) if self._lo else None

    def last(self) -> tuple[int, int] | None:
        """The highest range, or None when empty."""
        return (self._lo[-1], self._hi[-1]) if self._lo else None

    def first_gap(self, start: int) -> int:
        """The smallest integer ``>= start`` that is *not* in the set."""
        i = bisect.bisect_right(self._lo, start) - 1
        if i >= 0 and start < self._hi[i]:
            return self._hi[i]  # canonical ranges: a range's end is never a member
        return start

    def next_member(self, start: int) -> int | None:
        """The smallest integer ``>= start`` that *is* in the set, or None."""
        i = bisect.bisect_right(self._lo, start) - 1
        if i >= 0 and start < self._hi[i]:
            return start
        return self._lo[i + 1] if i + 1 < len(self._lo) else None

    def count_in(self, lo: int, hi: int) -> int:
        """How many members lie in ``[lo, hi)``.

        O(log n + k), k being the number of ranges wholly outside ``[lo, hi)``
        on the shorter side (a cursor asks with ``lo`` below every range and
        ``hi`` usually above them all, so k is 0).
        """
        if hi <= lo or not self._lo:
            return 0
        lo_list, hi_list = self._lo, self._hi
        i = bisect.bisect_left(hi_list, lo + 1)  # first range with a member >= lo
        j = bisect.bisect_left(lo_list, hi)  # ranges i..j-1 have a member < hi
        if j <= i:
            return 0
        inside = j - i
        if inside <= len(lo_list) - inside:
            total = sum(hi_list[k] - lo_list[k] for k in range(i, j))
        else:
            outside = sum(hi_list[k] - lo_list[k] for k in range(i))
            outside += sum(hi_list[k] - lo_list[k] for k in range(j, len(lo_list)))
            total = self._count - outside
        # clip the two boundary ranges
        total -= max(0, lo - lo_list[i])
        total -= max(0, hi_list[j - 1] - hi)
        return total

    def gaps(self, lo: int, hi: int) -> Iterator[tuple[int, int]]:
        """The ranges of non-members inside ``[lo, hi)``, ascending."""
        pos = self.first_gap(lo)
        lo_list, hi_list = self._lo, self._hi
        i = bisect.bisect_right(lo_list, pos)
        while pos < hi:
            end = lo_list[i] if i < len(lo_list) else hi
            end = min(end, hi)
            if end > pos:
                yield pos, end
            if i >= len(lo_list):
                return
            pos = hi_list[i]
            i += 1

    # ------------------------------------------------------------ misc

    def copy(self) -> RangeSet:
        """An independent copy."""
        other = RangeSet()
        other._lo = list(self._lo)
        other._hi = list(self._hi)
        other._count = self._count
        return other

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, RangeSet):
            return NotImplemented
        return self._lo == other._lo and self._hi == other._hi

    __hash__ = None  # type: ignore[assignment]  # mutable

    def __repr__(self) -> str:
        shown = ", ".join(f"[{lo}, {hi})" for lo, hi in self.ranges(8))
        more = f", ... {len(self) - 8} more" if len(self) > 8 else ""
        return f"RangeSet({shown}{more})"
