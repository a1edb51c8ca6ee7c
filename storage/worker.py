"""One blocking call in a worker thread, for the storage hot paths.

:func:`run_in_worker` does what ``trio.to_thread.run_sync(fn)`` does for the
calls storage makes (a plain synchronous function that never calls back into
trio), at a fraction of its cost per call: no thread renaming (a ``prctl``
system call before and after every job), no context copy, no thread-local
bookkeeping for ``trio.from_thread``, and no extra trip through the scheduler
when the capacity limiter has room.  Worker threads still come from trio's
thread cache (:func:`trio.lowlevel.start_thread_soon`), and every call still
holds one token of a :class:`trio.CapacityLimiter` (by default trio's own), so
the number of threads stays bounded.

Like ``trio.to_thread.run_sync``, the call cannot be abandoned: a cancellation
arriving meanwhile is delivered once ``fn`` has finished.  ``fn`` must not use
``trio.from_thread``.

:func:`start_in_worker` starts a job that no task waits for: its outcome comes back
as a callback on the event loop.  With :class:`WorkGate` (a lock no task owns) a
writer can hold a resource from the job's start to that callback, and so costs its
task one scheduler step per job instead of two (:class:`storage.partition_log.LocalLog`).
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import suppress
from typing import Any, TypeVar

import outcome
import trio

__all__ = ["WorkGate", "run_in_worker", "start_in_worker"]

T = TypeVar("T")


def _refuse_abort(_: Any) -> trio.lowlevel.Abort:
    return trio.lowlevel.Abort.FAILED


async def run_in_worker(
    fn: Callable[[], T],
    limiter: trio.CapacityLimiter | None = None,
    *,
    on_success: Callable[[T], object] | None = None,
) -> T:
    """Run ``fn()`` in a worker thread and return its result (or raise its exception).

    ``on_success(result)``, when given, runs on the event loop as soon as ``fn``
    has returned, before the caller is woken: what it wakes (an event it sets)
    runs in the same scheduler round as the caller instead of one round later.
    It must be quick and should not raise; if it does, the caller gets the
    exception instead of the result.
    """
    await trio.lowlevel.checkpoint_if_cancelled()
    if limiter is None:
        limiter = trio.to_thread.current_default_thread_limiter()
    borrower = object()
    try:
        limiter.acquire_on_behalf_of_nowait(borrower)
    except trio.WouldBlock:
        await limiter.acquire_on_behalf_of(borrower)
    try:
        task = trio.lowlevel.current_task()
        token = trio.lowlevel.current_trio_token()
        reschedule = trio.lowlevel.reschedule

        def finish(result: outcome.Outcome[T]) -> None:
            if on_success is not None and isinstance(result, outcome.Value):
                try:
                    on_success(result.value)
                except BaseException as exc:  # handed to the caller, never to trio
                    result = outcome.Error(exc)
            reschedule(task, result)

        def deliver(result: outcome.Outcome[T]) -> None:
            with suppress(trio.RunFinishedError):  # the run ended: nobody to tell
                token.run_sync_soon(finish, result)

        trio.lowlevel.start_thread_soon(fn, deliver)
        value: T = await trio.lowlevel.wait_task_rescheduled(_refuse_abort)
        return value
    finally:
        limiter.release_on_behalf_of(borrower)


def start_in_worker(fn: Callable[[], T], on_done: Callable[[outcome.Outcome[T]], object]) -> None:
    """Start ``fn()`` in a worker thread and return at once (no checkpoint).

    ``on_done(outcome)`` runs on the event loop (a ``run_sync_soon`` callback) as soon
    as ``fn`` has returned or raised; nothing waits for the thread.  It must be quick
    and must not raise.  The caller bounds the threads (e.g. holds a
    :class:`trio.CapacityLimiter` token until ``on_done``); nothing is delivered once
    the run has ended.
    """
    token = trio.lowlevel.current_trio_token()

    def deliver(result: outcome.Outcome[T]) -> None:
        with suppress(trio.RunFinishedError):  # the run ended: nobody to tell
            token.run_sync_soon(on_done, result)

    trio.lowlevel.start_thread_soon(fn, deliver)


class WorkGate:
    """Exclusive use of a resource (a log's files), FIFO-fair, like a :class:`trio.Lock`
    that no task owns: a task may take it on the event loop and the end of a job
    started with :func:`start_in_worker` give it back, so no task waits for the
    thread.  Waiters come before a new :meth:`try_take`; :meth:`release` hands the gate
    straight to the first of them.
    """

    __slots__ = ("_lot", "busy")

    def __init__(self) -> None:
        self.busy = False
        self._lot = trio.lowlevel.ParkingLot()

    def try_take(self) -> bool:
        """Take the gate if it is free and nobody waits for it (no checkpoint)."""
        if self.busy or self._lot:
            return False
        self.busy = True
        return True

    async def take(self) -> None:
        """Take the gate, waiting for it (a checkpoint either way)."""
        await trio.lowlevel.checkpoint_if_cancelled()
        if self.try_take():
            await trio.lowlevel.cancel_shielded_checkpoint()
            return
        await self._lot.park()  # woken by release() with the gate handed over

    def release(self) -> None:
        """Give the gate back (from any event-loop code): to the first waiter, if any."""
        if not self._lot.unpark(count=1):
            self.busy = False

    async def __aenter__(self) -> None:
        await self.take()

    async def __aexit__(self, *_: object) -> None:
        self.release()
