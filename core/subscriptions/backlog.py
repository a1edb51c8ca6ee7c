"""Which offsets of a backlog are *ready* (pure logic for purge and drop-head).

A subscription's backlog is every unacknowledged offset below the high
watermark.  Some of it is *held*: delivered to a consumer and not yet
acknowledged.  The rest is ready: waiting to be delivered (again).  AMQP's
``queue.purge`` and ``x-max-length`` (drop-head) act on ready messages only.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Iterator

from core.cursor import Cursor

__all__ = ["oldest", "ready_ranges"]


def ready_ranges(
    cursor: Cursor, held: Iterable[int], high_watermark: int
) -> Iterator[tuple[int, int]]:
    """Unacknowledged offsets below ``high_watermark`` that are not ``held``, as
    ascending half-open ranges."""
    marks = sorted(held)
    for lo, hi in cursor.unacked_ranges(high_watermark):
        start = lo
        i = bisect.bisect_left(marks, lo)
        while i < len(marks) and marks[i] < hi:
            if marks[i] > start:
                yield start, marks[i]
            start = max(start, marks[i] + 1)
            i += 1
        if hi > start:
            yield start, hi


def oldest(ranges: Iterable[tuple[int, int]], count: int) -> list[tuple[int, int]]:
    """The first ``count`` offsets of ascending ``ranges``, as ranges."""
    out: list[tuple[int, int]] = []
    left = count
    for lo, hi in ranges:
        if left <= 0:
            break
        n = min(hi - lo, left)
        out.append((lo, lo + n))
        left -= n
    return out
