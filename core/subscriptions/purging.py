"""Purge and drop-head of a partition subscription (mixed into :class:`PartitionSubscription`).

Both acknowledge *ready* messages only (:mod:`core.subscriptions.backlog`):
never those delivered and not yet acknowledged.  Whatever the subscription
holds of the acknowledged offsets (read-ahead, redeliveries, dead letters,
delayed and due messages) is dropped with them.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING

from core.cursor import Cursor
from core.names import TopicName
from core.subscriptions.backlog import oldest, ready_ranges
from core.subscriptions.delayed import DelayedIndex
from core.subscriptions.items import Buffered, Pending
from core.subscriptions.options import SubscriptionOptions
from core.subscriptions.redelivery import RedeliveryQueue, dead_letter_dropped

if TYPE_CHECKING:
    from core.api import Core

__all__ = ["ReadyAcks"]


class ReadyAcks:
    """Acknowledging ready messages in bulk (AMQP ``queue.purge`` and ``x-max-length``)."""

    core: Core
    topic: TopicName
    partition: int
    name: str
    options: SubscriptionOptions
    _clock_ms: Callable[[], int]
    cursor: Cursor
    _pending: dict[int, Pending]
    _read_ahead: deque[Buffered]
    _redeliver: RedeliveryQueue
    _dead: dict[int, Buffered]
    _delayed: DelayedIndex
    _due: dict[int, Buffered]

    if TYPE_CHECKING:  # provided by PartitionSubscription

        def _save(self) -> None: ...
        def wake(self) -> None: ...

    async def purge(self) -> int:
        """Acknowledge every ready message (not delivered-and-unacknowledged); return
        how many (AMQP ``queue.purge``)."""
        hw = await self.core.latest_offset(self.topic, self.partition)
        return self._ack_ready(list(ready_ranges(self.cursor, self._pending, hw)))

    async def drop_head(self, keep: int) -> int:
        """Acknowledge the oldest ready messages until at most ``keep`` are left; return
        how many went (AMQP ``x-max-length`` with ``drop-head``).  With dead letters on,
        the dropped messages are then dead-lettered (reason ``maxlen``, see
        :func:`~core.subscriptions.redelivery.dead_letter_dropped`)."""
        hw = await self.core.latest_offset(self.topic, self.partition)
        excess = self.cursor.backlog(hw) - len(self._pending) - max(keep, 0)
        if excess <= 0:
            return 0
        ranges = oldest(ready_ranges(self.cursor, self._pending, hw), excess)
        dropped = self._ack_ready(ranges)
        if dropped and self.options.redelivery.dead_letters:
            await dead_letter_dropped(self.core, self.topic, self.partition, self.name,
                                      self.options, ranges, self._clock_ms())
        return dropped

    def _ack_ready(self, ranges: list[tuple[int, int]]) -> int:
        acked = sum(self.cursor.ack_range(lo, hi) for lo, hi in ranges)
        if not acked:
            return 0
        is_acked = self.cursor.is_acked
        self._read_ahead = deque(i for i in self._read_ahead if not is_acked(i.offset))
        for w in self._redeliver.in_order():
            if is_acked(w.offset):
                self._redeliver.remove(w.offset)
        for offset in [o for o in self._dead if is_acked(o)]:
            del self._dead[offset]
        self._drop_held(is_acked)
        self._save()
        self.wake()
        return acked

    def _drop_held(self, acked: Callable[[int], bool]) -> None:
        """Forget delayed messages acknowledged meanwhile (purge, cumulative ack)."""
        self._delayed.discard_if(acked)
        for offset in [o for o in self._due if acked(o)]:
            del self._due[offset]
