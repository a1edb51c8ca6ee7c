"""READ_COMMITTED reads: data up to the last stable offset plus the aborted transactions.

These are the core calls behind Kafka's Fetch with ``isolation_level`` 1 and behind
READ_COMMITTED subscriptions (also reachable as methods of
:class:`core.transactions.coordinator.TransactionCoordinator`).

:func:`read_committed_nowait` is the one place that cuts a read at the last
stable offset and looks up its aborted transactions; :func:`read_committed` (the
async read, which may go to the log) and the subscriptions' read from memory
(:meth:`core.subscriptions.read_ahead.ReadAheadFill._read_nowait`) both use it.
"""

from __future__ import annotations

from bisect import bisect_left
from dataclasses import dataclass
from operator import attrgetter
from typing import TYPE_CHECKING

import trio

from core.batch import read_header
from core.errors import OffsetOutOfRange
from core.partition import ReadEntry
from core.transactions.visibility import AbortedTxn, TxnIndex

if TYPE_CHECKING:
    from core.api import Core, TopicRef
    from core.partition import Partition

__all__ = [
    "CommittedRead",
    "read_committed",
    "read_committed_nowait",
    "stable_offset",
    "wait_for_stable",
]

#: trim a partition's aborted index to retention once it holds this many entries
_TRIM_AT = 1024


@dataclass(frozen=True, slots=True)
class CommittedRead:
    """What a READ_COMMITTED fetch returns.

    ``entries`` end below ``last_stable_offset``; they still include control
    batches and aborted data (a Kafka client filters them with ``aborted``).
    """

    entries: list[ReadEntry]
    aborted: list[AbortedTxn]
    last_stable_offset: int
    high_watermark: int

    def is_aborted(self, entry: ReadEntry) -> bool:
        """Whether ``entry`` (one of :attr:`entries`) is data of an aborted transaction."""
        if not self.aborted:
            return False
        header = read_header(entry.batch)
        if not header.is_transactional or header.is_control:
            return False
        pid, offset = header.producer_id, entry.base_offset
        return any(a.producer_id == pid and a.first_offset <= offset < a.last_offset
                   for a in self.aborted)


_last_offset_of = attrgetter("last_offset")


def _below_stable(
    index: TxnIndex, entries: list[ReadEntry], lso: int, hw: int
) -> CommittedRead:
    """``entries`` (ascending) cut before the first one reaching ``lso``, with the aborted
    transactions that have data among them."""
    if entries and entries[-1].last_offset >= lso:
        # a batch straddling the LSO (or past it) waits whole, as Kafka does
        entries = entries[:bisect_left(entries, lso, key=_last_offset_of)]
    if not entries or not index.aborted_count:
        return CommittedRead(entries, [], lso, hw)
    aborted = index.aborted_between(entries[0].base_offset, entries[-1].last_offset)
    return CommittedRead(entries, aborted, lso, hw)


def read_committed_nowait(
    partition: Partition, offset: int, max_bytes: int
) -> CommittedRead | None:
    """What :func:`read_committed` returns, when it can be had at once; else None.

    No checkpoint: the entries come from the partition's memory
    (:meth:`core.partition.Partition.read_nowait`).  None where they are not
    there, where :func:`read_committed` would raise, and while the partition's
    aborted index is due for trimming (which awaits).
    """
    hw = partition.high_watermark
    index = partition.txns
    lso = index.stable_offset(hw)
    if lso <= offset <= hw:
        return CommittedRead([], [], lso, hw)
    if index.aborted_count >= _TRIM_AT:
        return None
    entries = partition.read_nowait(offset, max_bytes)
    if entries is None:
        return None
    return _below_stable(index, entries, lso, hw)


async def read_committed(
    core: Core, topic: TopicRef, partition: int, offset: int, max_bytes: int
) -> CommittedRead:
    """Stored batches from ``offset`` below the last stable offset, and the aborted
    transactions with data in the returned range.

    ``[]`` at or past the LSO (up to the high watermark); :class:`OffsetOutOfRange`
    as :meth:`core.api.Core.read` otherwise.
    """
    p = await core._partition(topic, partition)
    found = read_committed_nowait(p, offset, max_bytes)
    if found is not None:
        if found.entries:
            await trio.lowlevel.checkpoint()  # as Partition.read answering from memory
        return found
    index = p.txns
    if index.aborted_count >= _TRIM_AT:
        index.trim(await p.earliest_offset())
    hw = p.high_watermark
    lso = index.stable_offset(hw)
    if lso <= offset <= hw:
        return CommittedRead([], [], lso, hw)
    if offset > hw or offset < 0:
        raise OffsetOutOfRange(offset, await p.earliest_offset(), hw)
    return _below_stable(index, await p.read(offset, max_bytes), lso, hw)


async def stable_offset(core: Core, topic: TopicRef, partition: int) -> int:
    """The last stable offset: below it every transaction is decided."""
    return (await core._partition(topic, partition)).last_stable_offset


async def wait_for_stable(core: Core, topic: TopicRef, partition: int, offset: int) -> None:
    """Return once the last stable offset is above ``offset``; wrap in ``move_on_after``."""
    await (await core._partition(topic, partition)).wait_for_stable(offset)
