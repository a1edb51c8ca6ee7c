"""The deliverer's Receive Maximum quota: slots taken and given back, waiters woken."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from handlers.mqtt.delivery import Quota


async def test_slots_run_out_and_come_back() -> None:
    quota = Quota(2)
    quota.acquire_nowait()
    quota.acquire_nowait()
    with pytest.raises(trio.WouldBlock):
        quota.acquire_nowait()
    quota.release(2)
    quota.acquire_nowait()
    assert quota.free == 1


async def test_a_waiting_sender_gets_the_released_slot() -> None:
    quota = Quota(1)
    quota.acquire_nowait()
    got: list[str] = []

    async def waiter(name: str) -> None:
        await quota.acquire()
        got.append(name)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(waiter, "a")
        nursery.start_soon(waiter, "b")
        await trio.testing.wait_all_tasks_blocked()
        assert got == []
        quota.release()
        await trio.testing.wait_all_tasks_blocked()
        assert len(got) == 1  # one slot, one sender through
        quota.release()
    assert sorted(got) == ["a", "b"]
    assert quota.free == 0


async def test_acquire_with_a_free_slot_is_still_a_checkpoint() -> None:
    quota = Quota(1)
    with trio.CancelScope() as scope:
        scope.cancel()
        await quota.acquire()
    assert scope.cancelled_caught
    assert quota.free == 1
