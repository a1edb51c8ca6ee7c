"""Transactional acks of a partition subscription (mixed into :class:`PartitionSubscription`).

A transaction acknowledging a message holds it until the coordinator decides:
commit acknowledges it on the cursor (saved even while the subscription is
idle), abort gives it back for immediate redelivery.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import trio

from core.cursor import Cursor
from core.subscriptions.items import Pending

__all__ = ["TransactionalAcks"]


class TransactionalAcks:
    """The transaction coordinator's view of a partition subscription."""

    cursor: Cursor
    partition: int
    _pending: dict[int, Pending]
    _running: bool

    if TYPE_CHECKING:  # provided by PartitionSubscription

        def _taken(self, offset: int) -> bool: ...
        def _settle(self, offset: int) -> None: ...
        def _save(self) -> None: ...
        def persist(self) -> None: ...
        def wake(self) -> None: ...
        def _take_back(
            self, offset: int, now: float, delay: float | None, *, count: bool = True
        ) -> None: ...

    def holds_unacked(self, offset: int) -> bool:
        """Delivered (or on its way back) and not acknowledged: a transaction may ack it."""
        return self._taken(offset) and not self.cursor.is_acked(offset)

    def commit_txn_ack(self, offset: int) -> None:
        """A committed transaction acknowledges ``offset`` (saved even while idle)."""
        if self.cursor.closed or self.cursor.is_acked(offset):
            return
        self.cursor.ack(offset)
        self._settle(offset)
        self._save()
        if not self._running:
            self.persist()
        self.wake()

    def release_txn_ack(self, offset: int) -> None:
        """An aborted transaction gives ``offset`` back: redeliver it now if still pending."""
        pending = self._pending.get(offset)
        if pending is None:
            return
        pending.consumer._take_back(self.partition, {offset})
        self._take_back(offset, trio.current_time(), 0.0)
        self.wake()
