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
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import suppress
from typing import Any, TypeVar

import outcome
import trio

__all__ = ["run_in_worker"]

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
