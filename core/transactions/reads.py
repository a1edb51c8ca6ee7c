"""READ_COMMITTED reads: data up to the last stable offset plus the aborted transactions.

These are the core calls behind Kafka's Fetch with ``isolation_level`` 1 and behind
READ_COMMITTED subscriptions (also reachable as methods of
:class:`core.transactions.coordinator.TransactionCoordinator`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from core.batch import read_header
from core.errors import OffsetOutOfRange
from core.partition import ReadEntry
from core.transactions.visibility import AbortedTxn

if TYPE_CHECKING:
    from core.api import Core, TopicRef

__all__ = ["CommittedRead", "read_committed", "stable_offset", "wait_for_stable"]

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


async def read_committed(
    core: Core, topic: TopicRef, partition: int, offset: int, max_bytes: int
) -> CommittedRead:
    """Stored batches from ``offset`` below the last stable offset, and the aborted
    transactions with data in the returned range.

    ``[]`` at or past the LSO (up to the high watermark); :class:`OffsetOutOfRange`
    as :meth:`core.api.Core.read` otherwise.
    """
    p = await core._partition(topic, partition)
    index = p.txns
    hw = p.high_watermark
    lso = index.stable_offset(hw)
    if lso <= offset <= hw:
        return CommittedRead([], [], lso, hw)
    if offset > hw or offset < 0:
        raise OffsetOutOfRange(offset, await p.earliest_offset(), hw)
    entries = await p.read(offset, max_bytes)
    cut = len(entries)
    for i, entry in enumerate(entries):
        if entry.last_offset >= lso:
            cut = i
            break
    entries = entries[:cut]
    if not entries or not index.aborted_count:
        return CommittedRead(entries, [], lso, hw)
    if index.aborted_count >= _TRIM_AT:
        index.trim(await p.earliest_offset())
    aborted = index.aborted_between(entries[0].base_offset, entries[-1].last_offset)
    return CommittedRead(entries, aborted, lso, hw)


async def stable_offset(core: Core, topic: TopicRef, partition: int) -> int:
    """The last stable offset: below it every transaction is decided."""
    return (await core._partition(topic, partition)).last_stable_offset


async def wait_for_stable(core: Core, topic: TopicRef, partition: int, offset: int) -> None:
    """Return once the last stable offset is above ``offset``; wrap in ``move_on_after``."""
    await (await core._partition(topic, partition)).wait_for_stable(offset)
