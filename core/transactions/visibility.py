"""Per-partition transaction visibility: open transactions, last stable offset, aborted index.

Sans-IO.  Theory of operation
-----------------------------
A producer id has at most one open transaction at a time (the coordinator
enforces it), so per partition a transaction is identified by its producer id.
:meth:`TxnIndex.on_append` sees every transactional batch in offset order, at
the moment the partition assigns its offset:

* the first transactional data batch of a producer id opens its transaction at
  that batch's base offset;
* a control batch (marker) of that producer id closes it; an abort marker adds
  ``(producer id, first offset, marker offset)`` to the aborted index.

The **last stable offset** (LSO) is the first offset of the oldest open
transaction, or the high watermark when none is open: everything below it is
decided.  READ_COMMITTED readers stop at the LSO and skip a transactional batch
of producer ``p`` at offset ``o`` when an aborted entry of ``p`` spans ``o``
(Kafka's Fetch returns the same entries as ``aborted_transactions``).
A marker closes the transaction as soon as it has an offset: the decision it
records is already durable in the transaction log, which rewrites it after a
crash, so readers may act on it before the marker is acknowledged.

The aborted index is trimmed to the log's retention (:meth:`TxnIndex.trim`).
"""

from __future__ import annotations

import enum
from bisect import bisect_left
from dataclasses import dataclass

from core.batch import BatchInfo
from core.transactions.markers import ControlType, marker_type

__all__ = ["AbortedTxn", "IsolationLevel", "TxnIndex"]


class IsolationLevel(enum.Enum):
    """What a reader sees of transactional data."""

    #: committed data and non-transactional data, up to the last stable offset
    READ_COMMITTED = "read_committed"
    #: everything up to the high watermark (markers are still never delivered)
    READ_UNCOMMITTED = "read_uncommitted"


@dataclass(frozen=True, slots=True)
class AbortedTxn:
    """An aborted transaction on one partition: its data lies in ``[first_offset, last_offset)``
    (``last_offset`` is the abort marker's offset)."""

    producer_id: int
    first_offset: int
    last_offset: int


class TxnIndex:
    """Open transactions and the aborted-transaction index of one partition."""

    __slots__ = ("_aborted", "_ends", "_max_span", "_open")

    def __init__(self) -> None:
        self._open: dict[int, int] = {}  # producer id -> first offset
        self._aborted: list[AbortedTxn] = []  # in marker (offset) order
        self._ends: list[int] = []  # last_offset of each aborted entry, for bisect
        self._max_span = 0

    def on_append(self, batch: BatchInfo, offset: int) -> None:
        """Record a transactional batch stored at ``offset`` (call in offset order)."""
        pid = batch.producer_id
        if not batch.is_control:
            self._open.setdefault(pid, offset)
            return
        self.on_marker(pid, marker_type(batch.view), offset)

    def on_marker(self, producer_id: int, control: ControlType, offset: int) -> None:
        """A marker of ``producer_id`` at ``offset`` closes its open transaction."""
        first = self._open.pop(producer_id, None)
        if first is None or control is ControlType.COMMIT:
            return
        if self._ends and offset <= self._ends[-1]:
            return  # a marker replayed twice
        self._aborted.append(AbortedTxn(producer_id, first, offset))
        self._ends.append(offset)
        self._max_span = max(self._max_span, offset - first)

    @property
    def open_transactions(self) -> dict[int, int]:
        """``producer id -> first offset`` of the transactions still open here."""
        return dict(self._open)

    @property
    def aborted_count(self) -> int:
        return len(self._aborted)

    def stable_offset(self, high_watermark: int) -> int:
        """The last stable offset given the partition's high watermark."""
        if not self._open:
            return high_watermark
        return min(high_watermark, min(self._open.values()))

    def aborted_between(self, lo: int, hi: int) -> list[AbortedTxn]:
        """Aborted transactions with data in ``[lo, hi]`` (for Kafka's Fetch), oldest first."""
        out: list[AbortedTxn] = []
        for i in range(bisect_left(self._ends, lo), len(self._aborted)):
            entry = self._aborted[i]
            if entry.first_offset <= hi:
                out.append(entry)
            elif entry.last_offset - self._max_span > hi:
                break  # every later entry starts past ``hi`` too
        return out

    def is_aborted(self, producer_id: int, offset: int) -> bool:
        """Whether a transactional data batch of ``producer_id`` at ``offset`` was aborted."""
        return any(e.producer_id == producer_id for e in self.aborted_between(offset, offset))

    def trim(self, before: int) -> int:
        """Forget aborted entries that end before ``before`` (retention); return how many."""
        cut = bisect_left(self._ends, before)
        if cut:
            del self._aborted[:cut]
            del self._ends[:cut]
        return cut
