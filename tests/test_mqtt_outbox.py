"""The outbox's deliverer side: QoS 1/2 batches are queued before the sender first yields,
still in order behind a sender that holds the alias lock, and never beyond the bounded
send queue."""

from __future__ import annotations

import trio
import trio.testing

from handlers.mqtt.hot_path import encode_plain_publish, topic_field
from handlers.mqtt.outbox import SEND_QUEUE, Outbox


def publish_bytes(pid: int) -> bytes:
    return encode_plain_publish(topic_field("a/b"), b"payload", 1, False, False, pid, False)


async def test_qos1_batch_is_queued_before_the_first_yield() -> None:
    outbox = Outbox()
    data = [publish_bytes(1), publish_bytes(2)]
    # step the coroutine by hand up to its first trip through the scheduler
    coro = outbox.send_publishes(data, droppable=False)
    try:
        coro.send(None)
        assert outbox.queued == 1  # no scheduler round before the batch is queued
    finally:
        coro.close()
    assert not outbox._alias_lock.locked()
    assert bytes(outbox.take_queued()) == b"".join(data)


async def test_a_sender_waits_for_the_alias_lock_and_keeps_the_order() -> None:
    outbox = Outbox()
    results: list[list[bool] | None] = []

    async def send(pid: int) -> None:
        results.append(await outbox.send_publishes([publish_bytes(pid)], droppable=False))

    await outbox._alias_lock.acquire()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(send, 7)
        await trio.testing.wait_all_tasks_blocked()
        assert outbox.queued == 0  # behind the holder of the lock
        outbox._alias_lock.release()
    assert results == [[True]]
    assert bytes(outbox.take_queued()) == publish_bytes(7)


async def test_a_full_send_queue_makes_the_sender_wait_and_cancel_releases_the_lock(
    autojump_clock: trio.testing.MockClock,
) -> None:
    outbox = Outbox()
    for n in range(SEND_QUEUE):
        await outbox.send_publishes([publish_bytes(n + 1)], droppable=False)
    assert outbox.queued == SEND_QUEUE
    # a droppable (QoS 0) batch is not queued at all on a full queue
    assert await outbox.send_publishes([publish_bytes(999)], droppable=True) is None
    with trio.move_on_after(1) as scope:
        await outbox.send_publishes([publish_bytes(1000)], droppable=False)
    assert scope.cancelled_caught
    assert outbox.queued == SEND_QUEUE
    assert not outbox._alias_lock.locked()
