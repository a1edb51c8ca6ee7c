"""The cursor of one durable subscription on one partition (sans-IO).

A cursor is the consumer position the core keeps for a subscription: Kafka
consumer-group offsets, AMQP queues and MQTT sessions are all subscriptions with
a cursor.  It holds

* ``mark_delete`` — the first offset not acknowledged cumulatively: every offset
  below it is acknowledged;
* ``individually_acked`` — a :class:`~core.rangeset.RangeSet` of offsets at or
  above ``mark_delete`` acknowledged one by one (or range by range).

Whenever the acknowledged ranges reach ``mark_delete``, it moves forward across
them, so ``individually_acked`` never holds an offset below ``mark_delete`` and
never a range starting at it.  ``mark_delete`` only moves backwards through
:meth:`Cursor.reset` (a seek).

The cursor also counts redeliveries per offset (for negative acks and the
dead-letter rule).  The counts live in memory only, in a bounded table; see
:meth:`Cursor.record_redelivery`.

No I/O here: :mod:`core.cursor_store` persists cursors with :meth:`Cursor.to_bytes`.

Binary form (:meth:`Cursor.to_bytes`)
-------------------------------------
::

    version      1 byte, FORMAT_VERSION (1)
    mark_delete  unsigned LEB128 varint
    n            varint: number of acked ranges that follow
    n times:     varint gap    = range start - previous range end (mark_delete first), >= 1
                 varint length = range end - range start, >= 1

Varints are minimal and at most 10 bytes; offsets are below 2**63 (``MAX_OFFSET`` + 1).
"""

from __future__ import annotations

from collections.abc import Iterator

from core.errors import CoreError
from core.rangeset import RangeSet

__all__ = [
    "DEFAULT_MAX_PERSISTED_RANGES",
    "DEFAULT_MAX_TRACKED_REDELIVERIES",
    "FORMAT_VERSION",
    "CorruptCursor",
    "Cursor",
    "CursorClosed",
    "CursorError",
    "UnknownPosition",
]

FORMAT_VERSION = 1
DEFAULT_MAX_PERSISTED_RANGES = 10_000
DEFAULT_MAX_TRACKED_REDELIVERIES = 10_000
#: the largest offset (Kafka offsets are signed 64-bit); mark-delete may be one past it
MAX_OFFSET = 2**63 - 1
_MAX_VARINT_BYTES = 10


class CursorError(CoreError):
    """Base class of cursor errors."""


class UnknownPosition(CursorError, IndexError):
    """An offset that cannot be acknowledged: negative, or at/after the high watermark."""

    def __init__(self, offset: int, high_watermark: int | None) -> None:
        if high_watermark is None:
            msg = f"offset {offset} is not a valid position"
        else:
            msg = f"offset {offset} is not below the high watermark {high_watermark}"
        super().__init__(msg)
        self.offset = offset
        self.high_watermark = high_watermark


class CursorClosed(CursorError):
    """The cursor was closed (subscription deleted or partition unloaded)."""


class CorruptCursor(CursorError, ValueError):
    """Bytes given to :meth:`Cursor.from_bytes` are not a valid serialised cursor."""


def _check_offset(offset: int, high_watermark: int | None) -> None:
    if offset < 0 or offset > MAX_OFFSET or (
        high_watermark is not None and offset >= high_watermark
    ):
        raise UnknownPosition(offset, high_watermark)


def _check_mark_delete(offset: int) -> None:
    if not 0 <= offset <= MAX_OFFSET + 1:
        raise UnknownPosition(offset, None)


class Cursor:
    """Mark-delete position, individual acks and redelivery counts of one subscription.

    Offsets are the core's record offsets (contiguous per partition).  Every
    acknowledging method takes an optional ``high_watermark``; when given, an
    offset at or beyond it raises :class:`UnknownPosition` and nothing changes.
    After :meth:`close` every mutating method raises :class:`CursorClosed`.

    ``max_persisted_ranges`` caps how many acked ranges :meth:`to_bytes` writes;
    ``max_tracked_redeliveries`` caps the redelivery-count table.
    """

    __slots__ = (
        "_acked",
        "_closed",
        "_mark_delete",
        "_max_redeliveries",
        "_redeliveries",
        "max_persisted_ranges",
    )

    def __init__(
        self,
        mark_delete: int = 0,
        individually_acked: RangeSet | None = None,
        *,
        max_persisted_ranges: int = DEFAULT_MAX_PERSISTED_RANGES,
        max_tracked_redeliveries: int = DEFAULT_MAX_TRACKED_REDELIVERIES,
    ) -> None:
        _check_mark_delete(mark_delete)
        if max_persisted_ranges < 0 or max_tracked_redeliveries < 1:
            raise ValueError("need max_persisted_ranges >= 0 and max_tracked_redeliveries >= 1")
        self._mark_delete = mark_delete
        self._acked = individually_acked.copy() if individually_acked else RangeSet()
        self._redeliveries: dict[int, int] = {}
        self._max_redeliveries = max_tracked_redeliveries
        self._closed = False
        self.max_persisted_ranges = max_persisted_ranges
        self._settle()

    # ------------------------------------------------------------ state

    @property
    def mark_delete(self) -> int:
        """The first offset not acknowledged cumulatively (all below it are acked)."""
        return self._mark_delete

    @property
    def individually_acked(self) -> RangeSet:
        """Offsets above :attr:`mark_delete` acknowledged individually.

        A live view: do not modify it, use the ack methods.
        """
        return self._acked

    @property
    def closed(self) -> bool:
        return self._closed

    def close(self) -> None:
        """Refuse further changes (idempotent); reads keep working."""
        self._closed = True
        self._redeliveries.clear()

    def _check_open(self) -> None:
        if self._closed:
            raise CursorClosed("cursor is closed")

    def _settle(self) -> None:
        """Move mark-delete across acked ranges that reach it; keep the invariants."""
        acked = self._acked
        acked.remove_below(self._mark_delete)
        first = acked.first()
        if first is not None and first[0] == self._mark_delete:
            self._mark_delete = first[1]
            acked.remove_below(first[1])

    # ------------------------------------------------------------ acks

    def ack(self, offset: int, high_watermark: int | None = None) -> bool:
        """Acknowledge one offset; return whether it was not acknowledged before."""
        # _check_open and _check_offset inlined: one call per acknowledged message
        if self._closed:
            raise CursorClosed("cursor is closed")
        if offset < 0 or offset > MAX_OFFSET or (
            high_watermark is not None and offset >= high_watermark
        ):
            raise UnknownPosition(offset, high_watermark)
        if offset < self._mark_delete:
            return False
        if offset == self._mark_delete and not self._acked:
            self._mark_delete += 1  # the in-order consumer's fast path
            new = True
        else:
            new = self._acked.add(offset)
            self._settle()
        if new and self._redeliveries:
            self._redeliveries.pop(offset, None)
        return new

    def ack_range(self, lo: int, hi: int, high_watermark: int | None = None) -> int:
        """Acknowledge every offset in ``[lo, hi)``; return how many were new.

        With ``high_watermark``, every offset of a non-empty range must lie below it.
        """
        self._check_open()
        if hi <= lo:
            return 0
        _check_offset(lo, high_watermark)
        _check_offset(hi - 1, high_watermark)
        lo = max(lo, self._mark_delete)
        if hi <= lo:
            return 0
        before = self._mark_delete + self._acked.count
        self._acked.add_range(lo, hi)
        self._settle()
        self._forget_redeliveries(lo, hi)
        return self._mark_delete + self._acked.count - before

    def ack_cumulative(self, offset: int, high_watermark: int | None = None) -> int:
        """Acknowledge every offset ``<= offset``; return how many were new.

        Never moves :attr:`mark_delete` backwards: acking below it changes nothing.
        """
        self._check_open()
        _check_offset(offset, high_watermark)
        if offset < self._mark_delete:
            return 0
        before = self._mark_delete + self._acked.count
        old = self._mark_delete
        self._mark_delete = offset + 1
        self._settle()
        self._forget_redeliveries(old, offset + 1)
        return self._mark_delete + self._acked.count - before

    def reset(self, offset: int) -> None:
        """Seek: forget individual acks and redelivery counts; mark-delete = ``offset``.

        The one way to move mark-delete backwards (Kafka offset commit of an
        older offset, a Pulsar seek).  No high-watermark check: seeking to the
        end, or past it, is allowed.
        """
        self._check_open()
        _check_mark_delete(offset)
        self._mark_delete = offset
        self._acked.clear()
        self._redeliveries.clear()

    # ------------------------------------------------------------ queries

    def is_acked(self, offset: int) -> bool:
        """Whether ``offset`` is acknowledged (cumulatively or individually)."""
        return offset < self._mark_delete or offset in self._acked

    def next_unacked(self, from_offset: int = 0) -> int:
        """The smallest unacknowledged offset ``>= from_offset``.

        It may be at or past the high watermark: the caller compares.
        """
        return self._acked.first_gap(max(from_offset, self._mark_delete))

    def unacked_ranges(
        self, high_watermark: int, from_offset: int = 0
    ) -> Iterator[tuple[int, int]]:
        """The unacknowledged offsets in ``[from_offset, high_watermark)`` as ``(lo, hi)`` ranges.

        Lazy: do not change the cursor while iterating.
        """
        return self._acked.gaps(max(from_offset, self._mark_delete), high_watermark)

    def backlog(self, high_watermark: int) -> int:
        """How many offsets below ``high_watermark`` are not acknowledged."""
        if high_watermark <= self._mark_delete:
            return 0
        return high_watermark - self._mark_delete - self._acked.count_in(
            self._mark_delete, high_watermark
        )

    # ------------------------------------------------------------ redeliveries

    def record_redelivery(self, offset: int) -> int:
        """Count one more redelivery of ``offset`` (a nack, a timeout); return the count.

        An acknowledged offset is not counted (returns 0).  The table keeps at
        most ``max_tracked_redeliveries`` offsets; past that the offset counted
        least recently is forgotten, so at worst a message is redelivered more
        often than a dead-letter limit says before it is dead-lettered.  Counts
        are not persisted: they restart at zero after a restart or a seek.
        """
        self._check_open()
        if self.is_acked(offset):
            return 0
        count = self._redeliveries.pop(offset, 0) + 1
        self._redeliveries[offset] = count  # re-inserted: most recently counted last
        while len(self._redeliveries) > self._max_redeliveries:
            del self._redeliveries[next(iter(self._redeliveries))]
        return count

    def redelivery_count(self, offset: int) -> int:
        """How many redeliveries of ``offset`` were recorded (0 when unknown or acked)."""
        return self._redeliveries.get(offset, 0)

    @property
    def tracked_redeliveries(self) -> int:
        """How many offsets currently have a redelivery count."""
        return len(self._redeliveries)

    def _forget_redeliveries(self, lo: int, hi: int) -> None:
        counts = self._redeliveries
        if not counts:
            return
        if hi - lo <= len(counts):
            for offset in range(lo, hi):
                counts.pop(offset, None)
        else:
            for offset in [o for o in counts if lo <= o < hi]:
                del counts[offset]

    # ------------------------------------------------------------ serialisation

    def to_bytes(self) -> bytes:
        """The compact binary form (see the module docstring).

        At most ``max_persisted_ranges`` acked ranges are written: the lowest
        ones.  What a restart then loses is the individual acks of the higher
        ranges; those offsets count as unacknowledged again and are
        *redelivered*.  Nothing acknowledged is ever turned into lost data:
        mark-delete is always exact, and acks are only dropped, never invented.
        """
        out = bytearray((FORMAT_VERSION,))
        _put_varint(out, self._mark_delete)
        if not self._acked:  # the common case: every ack below mark-delete
            out.append(0)
            return bytes(out)
        ranges = self._acked.ranges(self.max_persisted_ranges)
        _put_varint(out, len(ranges))
        prev = self._mark_delete
        for lo, hi in ranges:
            _put_varint(out, lo - prev)
            _put_varint(out, hi - lo)
            prev = hi
        return bytes(out)

    @classmethod
    def from_bytes(
        cls,
        data: bytes | bytearray | memoryview,
        *,
        max_persisted_ranges: int = DEFAULT_MAX_PERSISTED_RANGES,
        max_tracked_redeliveries: int = DEFAULT_MAX_TRACKED_REDELIVERIES,
    ) -> Cursor:
        """Decode :meth:`to_bytes` output; raise :class:`CorruptCursor` on bad input."""
        view = memoryview(data).cast("B") if not isinstance(data, bytes) else data
        if not view:
            raise CorruptCursor("empty cursor data")
        if view[0] != FORMAT_VERSION:
            raise CorruptCursor(f"unknown cursor format version {view[0]}")
        pos = 1
        mark_delete, pos = _get_varint(view, pos)
        if mark_delete > MAX_OFFSET + 1:
            raise CorruptCursor("mark-delete beyond the largest offset")
        n, pos = _get_varint(view, pos)
        if n > (len(view) - pos) // 2:
            raise CorruptCursor(f"cursor claims {n} ranges in {len(view) - pos} bytes")
        acked = RangeSet()
        prev = mark_delete
        for _ in range(n):
            gap, pos = _get_varint(view, pos)
            length, pos = _get_varint(view, pos)
            if gap < 1 or length < 1:
                raise CorruptCursor("acked ranges must be separated and non-empty")
            lo = prev + gap
            prev = lo + length
            if prev > MAX_OFFSET + 1:
                raise CorruptCursor("acked range beyond the largest offset")
            acked.add_range(lo, prev)
        if pos != len(view):
            raise CorruptCursor(f"{len(view) - pos} trailing bytes after the cursor")
        return cls(
            mark_delete,
            acked,
            max_persisted_ranges=max_persisted_ranges,
            max_tracked_redeliveries=max_tracked_redeliveries,
        )

    def __repr__(self) -> str:
        state = " closed" if self._closed else ""
        return f"<Cursor mark_delete={self._mark_delete} acked={self._acked!r}{state}>"


def _put_varint(out: bytearray, value: int) -> None:
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)


def _get_varint(data: bytes | memoryview, pos: int) -> tuple[int, int]:
    value = 0
    shift = 0
    for i in range(pos, min(pos + _MAX_VARINT_BYTES, len(data))):
        byte = data[i]
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            if byte == 0 and i > pos:
                raise CorruptCursor(f"non-minimal varint at byte {pos}")
            return value, i + 1
        shift += 7
    if pos + _MAX_VARINT_BYTES <= len(data):
        raise CorruptCursor(f"varint at byte {pos} is longer than {_MAX_VARINT_BYTES} bytes")
    raise CorruptCursor(f"cursor data truncated at byte {pos}")
