"""The coordinator's durable transaction log: JSON records in a storage partition log.

Every state transition the coordinator must survive is one record (see
:meth:`core.transactions.state.Transaction.to_record`; producer records are
``{"t": "producer", "tid", "pid", "epoch", "timeout_ms"}``).  Keys are a
sequence number assigned before the first checkpoint of :meth:`TxnLog.append`,
so the log holds records in call order and concurrent appends share a group
commit.  Replaying the log in order rebuilds the coordinator's state.

The log is kept short by checkpoints: the coordinator appends its whole live
state as one batch of records and :meth:`TxnLog.truncate_before` drops the
segments before it (whole segments only: records left before a checkpoint are
superseded by it on replay).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from typing import Any

import trio

from storage.api import EntryIn, PartitionLog, Storage

__all__ = ["TXN_LOG_NAME", "TxnLog"]

log = logging.getLogger(__name__)

TXN_LOG_NAME = "system/transactions/coordinator"
_READ_BYTES = 1 << 20


class TxnLog:
    """Append and replay coordinator records; see the module docstring.

    The storage log is created by the first append: a broker that never ran a
    transaction has no transaction log.
    """

    def __init__(self, storage: Storage, log_: PartitionLog | None, clock_ms: Callable[[], int],
                 name: str = TXN_LOG_NAME) -> None:
        self._storage = storage
        self._name = name
        self._log = log_
        self._clock_ms = clock_ms
        last = None if log_ is None else log_.last_key
        self._next_key = 0 if last is None else last + 1
        self._last_ts = 0
        self._open_lock = trio.Lock()

    @classmethod
    async def open(cls, storage: Storage, clock_ms: Callable[[], int],
                   name: str = TXN_LOG_NAME) -> TxnLog:
        """The transaction log of ``storage`` (opened when it exists)."""
        found = await storage.open_log(name) if name in await storage.list_logs() else None
        return cls(storage, found, clock_ms, name)

    @property
    def entries(self) -> int:
        """Records currently stored."""
        if self._log is None:
            return 0
        return self._log.end_position - self._log.start_position

    async def _ensure(self) -> PartitionLog:
        async with self._open_lock:
            if self._log is None:
                self._log = await self._storage.open_log(self._name)
            return self._log

    async def append(self, *records: dict[str, Any]) -> int:
        """Store ``records`` in order, durably per the storage policy; return the position
        of the first.  Shielded: once keys are assigned the write completes."""
        log_ = self._log if self._log is not None else await self._ensure()
        ts = self._last_ts = max(self._last_ts, self._clock_ms())
        entries = []
        for record in records:
            data = json.dumps(record, separators=(",", ":")).encode()
            entries.append(EntryIn(self._next_key, ts, data))
            self._next_key += 1
        with trio.CancelScope(shield=True):
            positions = await log_.append(entries)
        return positions[0]

    async def replay(self) -> list[dict[str, Any]]:
        """Every stored record, oldest first (unreadable records are logged and skipped)."""
        out: list[dict[str, Any]] = []
        if self._log is None:
            return out
        position = self._log.start_position
        while position < self._log.end_position:
            stored = await self._log.read(position, _READ_BYTES)
            if not stored:
                break
            for item in stored:
                try:
                    record = json.loads(item.data)
                except ValueError:
                    log.warning("transaction log: unreadable record at %d skipped", item.position)
                    continue
                if isinstance(record, dict):
                    out.append(record)
            position = stored[-1].position + 1
        return out

    async def truncate_before(self, position: int) -> int:
        """Drop whole segments before ``position``; return how many records went."""
        if self._log is None:
            return 0
        return await self._log.truncate_before(position)
