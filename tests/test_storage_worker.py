"""storage.worker: run_in_worker, a blocking call in a worker thread as to_thread does it;
start_in_worker, a job whose outcome comes back as a callback; WorkGate, a lock no task owns."""

from __future__ import annotations

import threading

import outcome
import pytest
import trio
import trio.testing

from storage.worker import WorkGate, run_in_worker, start_in_worker


async def test_it_returns_the_result_computed_in_another_thread() -> None:
    main = threading.get_ident()
    assert await run_in_worker(threading.get_ident) != main
    assert await run_in_worker(lambda: 6 * 7) == 42


async def test_it_raises_what_the_function_raised() -> None:
    def boom() -> None:
        raise OSError("disk on fire")

    with pytest.raises(OSError, match="disk on fire"):
        await run_in_worker(boom)


async def test_the_limiter_bounds_the_threads_in_use() -> None:
    limiter = trio.CapacityLimiter(2)
    lock = threading.Lock()
    active = peak = 0
    release = threading.Event()
    both_in = threading.Event()

    def work() -> None:
        nonlocal active, peak
        with lock:
            active += 1
            peak = max(peak, active)
            if active == 2:
                both_in.set()
        release.wait(5)
        with lock:
            active -= 1

    async with trio.open_nursery() as nursery:
        for _ in range(5):
            nursery.start_soon(run_in_worker, work, limiter)
        await trio.testing.wait_all_tasks_blocked()
        assert limiter.borrowed_tokens == 2
        assert limiter.statistics().tasks_waiting == 3
        assert await trio.to_thread.run_sync(both_in.wait, 5)
        release.set()
    assert peak == 2
    assert limiter.borrowed_tokens == 0


async def test_a_cancel_waits_for_the_call_to_finish() -> None:
    started = threading.Event()
    release = threading.Event()
    finished = []

    def work() -> None:
        started.set()
        release.wait(5)
        finished.append(True)

    with trio.CancelScope() as scope:
        async with trio.open_nursery() as nursery:

            async def cancel_when_started() -> None:
                await trio.to_thread.run_sync(started.wait, 5)
                scope.cancel()
                with trio.CancelScope(shield=True):
                    await trio.sleep(0.01)
                assert not finished  # still running: the cancel did not abandon it
                release.set()

            nursery.start_soon(cancel_when_started)
            await run_in_worker(work)  # returns normally: the call was not abandoned
            assert finished == [True]
            await trio.lowlevel.checkpoint()  # where the cancel is delivered
            pytest.fail("the cancel should be delivered at the next checkpoint")
    assert scope.cancelled_caught
    assert finished == [True]


async def test_an_already_cancelled_caller_does_not_start_the_call() -> None:
    ran = []
    with trio.CancelScope() as scope:
        scope.cancel()
        await run_in_worker(lambda: ran.append(1))
    assert ran == []


async def test_start_in_worker_calls_back_on_the_event_loop_with_the_outcome() -> None:
    main = threading.get_ident()
    results: list[tuple[int, outcome.Outcome[int]]] = []
    done = trio.Event()

    def on_done(result: outcome.Outcome[int]) -> None:
        results.append((threading.get_ident(), result))
        if len(results) == 2:
            done.set()

    def boom() -> int:
        raise OSError("disk on fire")

    start_in_worker(threading.get_ident, on_done)  # returns at once: nothing waits
    start_in_worker(boom, on_done)
    with trio.fail_after(10):
        await done.wait()
    assert all(ident == main for ident, _ in results)  # called back on the event loop
    values = [r for _, r in results if isinstance(r, outcome.Value)]
    errors = [r for _, r in results if isinstance(r, outcome.Error)]
    assert len(values) == 1 and values[0].value != main
    assert len(errors) == 1 and isinstance(errors[0].error, OSError)


async def test_the_gate_is_handed_to_waiters_in_order_and_released_by_anyone() -> None:
    gate = WorkGate()
    assert gate.try_take() and not gate.try_take()
    order: list[int] = []

    async def waiter(n: int) -> None:
        async with gate:
            order.append(n)
            await trio.lowlevel.checkpoint()

    async with trio.open_nursery() as nursery:
        for n in range(3):
            nursery.start_soon(waiter, n)
            await trio.testing.wait_all_tasks_blocked()
        gate.release()  # e.g. from a worker job's callback, not from the task that took it
    assert order == [0, 1, 2] and not gate.busy
    assert gate.try_take()
