"""The in-memory (and ``.idx`` file) index of one segment.

Three parallel ``array('q')`` columns, one row per entry:

* ``ends`` — file offset just past the entry (so entry ``i`` spans
  ``ends[i-1]`` (or the first offset) to ``ends[i]``; a reader never needs the
  segment's size, which the writer thread may be growing);
* ``keys`` — the entry keys, strictly increasing, for floor lookups;
* ``max_ts`` — the running maximum of timestamps, non-decreasing even if the
  timestamps are not, so "first entry with timestamp >= t" is a bisection.

24 bytes per entry.  A writer thread only appends; readers look only at rows
below the count they were told is visible.  The ``.idx`` file holds the same
columns followed by a CRC-32C of everything before it.
"""

from __future__ import annotations

import struct
import sys
from array import array
from bisect import bisect_left, bisect_right

from crc32c import crc32c

_MAGIC = b"PSIX"
_HEAD = struct.Struct("<4sIQ")


class SegmentIndex:
    """Offsets, keys and timestamps of the entries of one segment."""

    __slots__ = ("ends", "first_offset", "keys", "max_ts")

    def __init__(self, first_offset: int) -> None:
        self.first_offset = first_offset
        self.ends = array("q")
        self.keys = array("q")
        self.max_ts = array("q")

    @property
    def count(self) -> int:
        """Number of entries indexed."""
        return len(self.keys)

    def append(self, end_offset: int, key: int, timestamp_ms: int) -> None:
        """Add the next entry (keys first, so ``count`` grows last)."""
        ts = timestamp_ms
        if self.max_ts and self.max_ts[-1] > ts:
            ts = self.max_ts[-1]
        self.ends.append(end_offset)
        self.max_ts.append(ts)
        self.keys.append(key)

    def truncate(self, count: int) -> None:
        """Forget entries from ``count`` on."""
        del self.keys[count:]
        del self.ends[count:]
        del self.max_ts[count:]

    def last_key(self) -> int:
        return self.keys[-1]

    def start_offset(self, i: int) -> int:
        """File offset where entry ``i`` starts."""
        return self.ends[i - 1] if i else self.first_offset

    def end_offset(self, i: int) -> int:
        """File offset just past entry ``i``."""
        return self.ends[i]

    def floor(self, key: int, hi: int) -> int:
        """Index of the last of the first ``hi`` entries with key <= ``key``, or -1."""
        return bisect_right(self.keys, key, 0, hi) - 1

    def first_at_or_after(self, timestamp_ms: int, hi: int) -> int:
        """Index of the first of the first ``hi`` entries with timestamp >= ``timestamp_ms``.

        ``hi`` when there is none.
        """
        return bisect_left(self.max_ts, timestamp_ms, 0, hi)

    def to_bytes(self) -> bytes:
        """Serialise for the ``.idx`` file."""
        cols = [self.ends, self.keys, self.max_ts]
        if sys.byteorder != "little":
            cols = [array("q", c) for c in cols]
            for c in cols:
                c.byteswap()
        body = _HEAD.pack(_MAGIC, 1, self.count) + b"".join(c.tobytes() for c in cols)
        return body + crc32c(body).to_bytes(4, "little")

    @classmethod
    def from_bytes(cls, raw: bytes, first_offset: int) -> SegmentIndex | None:
        """Parse an ``.idx`` file; None when it is damaged or not an index."""
        if len(raw) < _HEAD.size + 4:
            return None
        body, crc = raw[:-4], raw[-4:]
        if crc32c(body).to_bytes(4, "little") != crc:
            return None
        magic, version, count = _HEAD.unpack_from(body)
        if magic != _MAGIC or version != 1 or len(body) != _HEAD.size + 24 * count:
            return None
        index = cls(first_offset)
        cols = [index.ends, index.keys, index.max_ts]
        for n, col in enumerate(cols):
            start = _HEAD.size + 8 * count * n
            col.frombytes(body[start : start + 8 * count])
            if sys.byteorder != "little":
                col.byteswap()
        return index
