"""Rebuild a partition's :class:`~core.transactions.visibility.TxnIndex` from its log.

Only partitions that ever took part in a transaction pay for it: the coordinator
writes ``txn-partitions/<log name>`` (:func:`mark_transactional`) before the
first transactional batch reaches a partition, and :func:`recover_index`
replays the log's batch headers (never the records) only when that key exists.
"""

from __future__ import annotations

from core.batch import read_header
from core.entry import decode_entry
from core.transactions.visibility import TxnIndex
from storage.api import MetadataStore, PartitionLog, PositionOutOfRangeError

__all__ = ["TXN_PARTITIONS_PREFIX", "mark_transactional", "recover_index"]

TXN_PARTITIONS_PREFIX = "txn-partitions/"
_REPLAY_READ_BYTES = 1 << 20


def _key(log_name: str) -> str:
    return f"{TXN_PARTITIONS_PREFIX}{log_name}"


async def mark_transactional(metadata: MetadataStore, log_name: str) -> None:
    """Record (durably) that the partition log ``log_name`` holds transactional batches."""
    if await metadata.get(_key(log_name)) is None:
        await metadata.put(_key(log_name), b"1")


async def recover_index(metadata: MetadataStore | None, log: PartitionLog) -> TxnIndex:
    """The index of every transactional batch in ``log`` (empty for other partitions)."""
    index = TxnIndex()
    if metadata is None or await metadata.get(_key(log.name)) is None:
        return index
    position = log.start_position
    while position < log.end_position:
        try:
            entries = await log.read(position, _REPLAY_READ_BYTES)
        except PositionOutOfRangeError:  # retention moved the start meanwhile
            position = log.start_position
            continue
        if not entries:
            break
        for stored in entries:
            entry = decode_entry(stored.data)
            header = read_header(entry.batch)
            if header.is_transactional:
                index.on_append(header, entry.index)
        position = entries[-1].position + 1
    return index
