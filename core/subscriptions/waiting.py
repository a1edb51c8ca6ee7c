"""How a subscription's task waits, and what wakes it.

The task (:meth:`PartitionSubscription.run`) sleeps *parked*
(:func:`trio.lowlevel.wait_task_rescheduled`), and whatever has news for it
reschedules it directly: :meth:`TaskWaits.wake` (consumers, acks, seeks) and the
partition's one-shot data callback (:meth:`core.partition.Partition.call_on_data`,
registered once per partition and kept through wake-ups).  A wake-up therefore costs
no cancellation, no event and, while no timer is due, no cancel scope; only a finite
deadline (ack timeout, redelivery backoff, delayed message) puts the wait under
:func:`trio.move_on_at`.  READ_COMMITTED waits on the last stable offset: the data
callback re-registers instead of waking the task while an open transaction holds
the new data back.  A partition not open in the core's cache (never on the hot path)
falls back to the core's awaitable waits under a cancel scope that :meth:`wake` cancels.

Permits and acks that arrive while the task is parked with nothing to deliver do not
wake it: the permits wait for the next delivery, and the first acks of such a wait
save the cursor on the spot (:meth:`TaskWaits._after_acks`).
"""

from __future__ import annotations

from collections import deque
from functools import partial
from typing import TYPE_CHECKING

import trio

from core.errors import UnknownTopic
from core.names import TopicName
from core.subscriptions.items import Buffered
from core.subscriptions.options import SubscriptionOptions
from core.subscriptions.redelivery import RedeliveryQueue
from core.transactions.reads import wait_for_stable
from core.transactions.visibility import IsolationLevel

if TYPE_CHECKING:
    from core.api import Core
    from core.partition import Partition

__all__ = ["TaskWaits"]

_INF = float("inf")


class TaskWaits:
    """The waiting half of :class:`~core.subscriptions.subscription.PartitionSubscription`
    (see the module docstring)."""

    core: Core
    topic: TopicName
    partition: int
    options: SubscriptionOptions
    _read_position: int
    _read_ahead: deque[Buffered]
    _redeliver: RedeliveryQueue
    _due: dict[int, Buffered]
    _dead: dict[int, Buffered]
    _dirty: bool
    _woken: bool  # wake() was called since the task's pass began
    _sleeping: trio.CancelScope | None  # the task's wait (fallback path)
    _parked: trio.lowlevel.Task | None  # the task, while parked in _park
    _park_for_data: bool  # ...and new data should wake it
    _data_partition: Partition | None  # where _on_data is registered
    _saved_while_parked: bool  # _after_acks saved the cursor during this wait

    if TYPE_CHECKING:  # provided by PartitionSubscription

        def persist(self) -> None: ...
        def _next_deadline(self, now: float) -> float: ...

    def _init_waits(self) -> None:
        self._woken = False
        self._sleeping = None
        self._parked = None
        self._park_for_data = False
        self._data_partition = None
        self._saved_while_parked = False

    def wake(self) -> None:
        """Make the task look at the state again."""
        self._woken = True
        task = self._parked
        if task is not None:
            self._parked = None
            trio.lowlevel.reschedule(task)
            return
        sleeping = self._sleeping
        if sleeping is not None:
            # one cancel is enough (each costs trio a cancel-reason record): an ack
            # storm before the task resumes then costs a flag each
            self._sleeping = None
            sleeping.cancel()

    def _after_acks(self) -> None:
        """Delivered messages were acknowledged: the cursor is to be saved.

        The task saves it on its next pass (:meth:`wake`).  But while the task is parked
        with nothing to deliver, the first acks of that wait are saved right here (the
        same coalesced write the pass would make) and the task sleeps on: an ack then
        costs no pass.  Later acks of the same wait wake it, so a storm of single acks
        still costs at most two saves, not one each.
        """
        self._dirty = True
        if (self._parked is not None and not self._saved_while_parked
                and not (self._read_ahead or self._redeliver or self._due or self._dead)):
            self._saved_while_parked = True
            self.persist()
            return
        self.wake()

    def permits_granted(self) -> None:
        """A consumer got permits (:meth:`Consumer.flow`): wake the task, unless it is
        parked with nothing to deliver (the permits are used on the next delivery)."""
        if self._parked is not None and not (self._read_ahead or self._redeliver or self._due):
            return
        self.wake()

    async def _sleep(self, now: float, want_data: bool) -> None:
        """Wait for the next timer, new data (``want_data``) or :meth:`wake`.

        The task parks itself (:meth:`_park`): :meth:`wake` and the partition's data
        callback (:meth:`_on_data`, registered with
        :meth:`core.partition.Partition.call_on_data`) reschedule it directly, so a
        wake-up costs neither a cancellation nor an event, and a wait without a timer
        no cancel scope.  A partition not open in the core's cache falls back to
        :meth:`_sleep_scoped`.
        """
        if self._woken:
            return  # woken during this pass: look again
        deadline = self._next_deadline(now)
        partition = None
        if want_data:
            partition = self._open_partition()
            if partition is None:
                await self._sleep_scoped(deadline, want_data)
                return
            if partition.closed:
                raise UnknownTopic(f"{self.topic} was deleted")
            if self._data_partition is not partition:
                # at most one registration per partition: it stays through wake-ups
                self._data_partition = partition
                partition.call_on_data(partial(self._on_data, partition))
        self._park_for_data = want_data
        if deadline == _INF:
            await self._park()
        else:
            with trio.move_on_at(deadline):
                await self._park()
        if partition is not None and partition.closed:
            raise UnknownTopic(f"{self.topic} was deleted")

    async def _park(self) -> None:
        self._saved_while_parked = False
        self._parked = trio.lowlevel.current_task()
        await trio.lowlevel.wait_task_rescheduled(self._abort_park)

    def _abort_park(self, _: object) -> trio.lowlevel.Abort:
        self._parked = None
        return trio.lowlevel.Abort.SUCCEEDED

    def _on_data(self, partition: Partition) -> None:
        """``partition``'s watermark moved (or it closed): wake the task if it waits for
        data that is now readable, else wait for the next move."""
        if partition is not self._data_partition:
            return  # a registration with a partition no longer read
        self._data_partition = None
        task = self._parked
        if task is None or not self._park_for_data:
            return
        if not partition.closed:
            end = (partition.last_stable_offset if self._read_committed
                   else partition.high_watermark)
            if end <= self._read_position:
                self._data_partition = partition  # not readable yet (an open transaction)
                partition.call_on_data(partial(self._on_data, partition))
                return
        self._parked = None
        trio.lowlevel.reschedule(task)

    def _open_partition(self) -> Partition | None:
        """This subscription's partition, when the core has it open (no await)."""
        opened = self.core._cache.get(self.topic)
        if opened is None or not 0 <= self.partition < len(opened.partitions):
            return None
        return opened.partitions[self.partition]

    async def _sleep_scoped(self, deadline: float, want_data: bool) -> None:
        """:meth:`_sleep` through the core's waits, under a cancel scope :meth:`wake` cancels."""
        with trio.move_on_at(deadline) as scope:
            self._sleeping = scope
            try:
                if not want_data:
                    await trio.sleep_forever()
                elif self._read_committed:
                    await wait_for_stable(self.core, self.topic, self.partition,
                                          self._read_position)
                else:
                    await self.core.wait_for_data(self.topic, self.partition,
                                                  self._read_position)
            finally:
                self._sleeping = None

    @property
    def _read_committed(self) -> bool:
        return self.options.isolation is IsolationLevel.READ_COMMITTED

    async def _readable_end(self) -> int:
        """Where reading stops: the last stable offset (READ_COMMITTED) or the watermark."""
        partition = self._open_partition()
        if partition is not None:  # the common case, without the awaits below
            return (partition.last_stable_offset if self._read_committed
                    else partition.high_watermark)
        if self._read_committed:
            return (await self.core._partition(self.topic, self.partition)).last_stable_offset
        return await self.core.latest_offset(self.topic, self.partition)
