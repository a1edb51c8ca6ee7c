"""The memory alarm: ``connection.blocked``/``unblocked`` — the alarm's hysteresis, its sampler
on trio's MockClock, the session over in-memory streams, and pika against the real server."""

from __future__ import annotations

import itertools
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pika
import pika.exceptions
import pytest
import trio
import trio.testing
from conftest import ServerFactory, ServerProcess
from fixtures.amqp.client_codec import content_frames, method_frame
from pamqp import commands
from test_amqp_broker_session import LOOPBACK, Client

from core.api import open_core
from core.config import CoreSettings
from core.subscriptions import open_subscription_manager
from handlers.amqp.broker.vhosts import VhostDirectory
from handlers.amqp.connection import ServerSettings
from handlers.amqp.frames import FrameReader
from handlers.amqp.handler import AmqpSettings
from handlers.amqp.memory import MemoryAlarm, MemoryMonitor, process_rss_bytes
from handlers.amqp.session import AmqpSession
from storage import open_storage

# -- the alarm ----------------------------------------------------------------------------------


def test_alarm_has_hysteresis() -> None:
    alarm = MemoryAlarm(high=1000, low=800)
    assert [alarm.observe(n) for n in (500, 999, 1000, 1500, 900, 800, 799, 900, 999)] == [
        False, False, True, False, False, False, True, False, False]
    assert not alarm.raised
    assert alarm.observe(1000) and alarm.raised


def test_alarm_defaults_and_validation() -> None:
    assert MemoryAlarm(1000).low == 900
    with pytest.raises(ValueError):
        MemoryAlarm(0)
    with pytest.raises(ValueError):
        MemoryAlarm(100, 200)


def test_settings_watermarks() -> None:
    high, low = AmqpSettings.parse({}).memory_watermarks()
    assert high > 0 and low == int(high * 0.9)
    settings = AmqpSettings.parse({"memory_high_watermark_bytes": 1000,
                                   "memory_low_watermark_bytes": 600})
    assert settings.memory_watermarks() == (1000, 600)
    with pytest.raises(ValueError, match="low_watermark"):
        AmqpSettings.parse({"memory_high_watermark_bytes": 1000,
                            "memory_low_watermark_bytes": 2000})
    with pytest.raises(ValueError, match="memory_high_watermark_bytes"):
        AmqpSettings.parse({"memory_high_watermark_bytes": -1})


def test_rss_is_measured() -> None:
    assert process_rss_bytes() > 1024 * 1024


async def test_sampler_runs_on_trios_clock(autojump_clock: trio.testing.MockClock) -> None:
    used = [0]
    samples: list[float] = []

    def sample() -> int:
        samples.append(trio.current_time())
        return used[0]

    monitor = MemoryMonitor(1000, 500, sample=sample, interval=0.25)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(monitor.run)
        await trio.sleep(1.0)
        assert not monitor.alarmed
        used[0] = 2000
        await trio.sleep(0.3)
        assert monitor.alarmed
        cleared_at: list[float] = []

        async def waiter() -> None:
            await monitor.wait_cleared()
            cleared_at.append(trio.current_time())

        nursery.start_soon(waiter)
        used[0] = 700  # between the marks: still raised
        await trio.sleep(1.0)
        assert monitor.alarmed and not cleared_at
        used[0] = 100
        lowered = trio.current_time()
        await trio.sleep(0.3)
        assert not monitor.alarmed
        assert cleared_at and cleared_at[0] - lowered <= 0.25 + 1e-9
        nursery.cancel_scope.cancel()
    gaps = {round(b - a, 6) for a, b in itertools.pairwise(samples)}
    assert gaps == {0.25}


# -- the session ---------------------------------------------------------------------------------


@pytest.fixture
async def vhosts() -> AsyncIterator[VhostDirectory]:
    settings = CoreSettings(retention_check_interval_ms=0)
    async with (
        open_storage("memory://") as storage,
        open_core(storage, settings) as core,
        open_subscription_manager(core) as subs,
        trio.open_nursery() as nursery,
    ):
        yield VhostDirectory(core, subs, nursery)
        nursery.cancel_scope.cancel()


def start(nursery: trio.Nursery, vhosts: VhostDirectory, memory: MemoryMonitor) -> Client:
    client_stream, server_stream = trio.testing.memory_stream_pair()
    session = AmqpSession(server_stream, LOOPBACK, vhosts, ServerSettings(heartbeat=0),
                          memory=memory)

    async def serve() -> None:
        try:
            await session.run()
        finally:
            await session.stream.aclose()

    nursery.start_soon(serve)
    return Client(client_stream, FrameReader(1 << 20, 1 << 22))


async def open_channel(client: Client, queue: str, caps: dict[str, Any]) -> None:
    assert isinstance(await client.login(capabilities=caps), commands.Connection.OpenOk)
    await client.send(1, commands.Channel.Open())
    assert isinstance(await client.next(), commands.Channel.OpenOk)
    await client.send(1, commands.Queue.Declare(queue=queue))
    assert isinstance(await client.next(), commands.Queue.DeclareOk)


async def publish(client: Client, queue: str, body: bytes) -> None:
    await client.stream.send_all(
        method_frame(1, commands.Basic.Publish(exchange="", routing_key=queue))
        + content_frames(1, body, commands.Basic.Properties()))


async def next_body(client: Client) -> bytes:
    """Skip to the next delivered body."""
    while True:
        frame = await client.next()
        if isinstance(frame, tuple) and frame[0] == "body":
            return bytes(frame[1])


async def silent(client: Client, seconds: float = 1.0) -> bool:
    with trio.move_on_after(seconds):
        await client.next()
        return False
    return True


async def test_publisher_is_blocked_and_unblocked_while_consumers_drain(
        vhosts: VhostDirectory, autojump_clock: trio.testing.MockClock) -> None:
    used = [0]
    memory = MemoryMonitor(1000, 500, sample=lambda: used[0])
    async with trio.open_nursery() as nursery:
        consumer = start(nursery, vhosts, memory)
        await open_channel(consumer, "blk-q", {})
        await consumer.send(1, commands.Basic.Consume(queue="blk-q", consumer_tag="c",
                                                      no_ack=True))
        assert isinstance(await consumer.next(), commands.Basic.ConsumeOk)
        publisher = start(nursery, vhosts, memory)
        await open_channel(publisher, "blk-q", {"connection.blocked": True})
        await publish(publisher, "blk-q", b"m1")
        assert await next_body(consumer) == b"m1"
        assert await silent(publisher)  # no alarm: nothing to say

        used[0] = 5000
        memory.check()
        # a publishing connection learns of the alarm with its next publish, which is stored
        await publish(publisher, "blk-q", b"m2")
        assert isinstance(await publisher.next(), commands.Connection.Blocked)
        assert await next_body(consumer) == b"m2"
        # ...and is no longer read: m3 waits in the socket
        await publish(publisher, "blk-q", b"m3")
        assert await silent(consumer)
        # a connection that only consumes is still served (and read: it could ack)
        await consumer.send(1, commands.Basic.Qos(prefetch_count=5))
        assert isinstance(await consumer.next(), commands.Basic.QosOk)

        used[0] = 700  # between the marks: still blocked
        memory.check()
        assert await silent(publisher) and await silent(consumer)
        used[0] = 100
        memory.check()
        assert isinstance(await publisher.next(), commands.Connection.Unblocked)
        assert await next_body(consumer) == b"m3"
        nursery.cancel_scope.cancel()


async def test_client_without_the_capability_is_paused_silently(
        vhosts: VhostDirectory, autojump_clock: trio.testing.MockClock) -> None:
    used = [5000]
    memory = MemoryMonitor(1000, 500, sample=lambda: used[0])
    memory.check()
    async with trio.open_nursery() as nursery:
        publisher = start(nursery, vhosts, memory)
        await open_channel(publisher, "blk-q2", {})
        await publish(publisher, "blk-q2", b"m1")  # stored, then reading stops
        await publisher.send(1, commands.Queue.Declare(queue="blk-q2", passive=True))
        assert await silent(publisher, 2.0)
        used[0] = 0
        memory.check()
        ok = await publisher.next()
        assert isinstance(ok, commands.Queue.DeclareOk) and ok.message_count == 1
        nursery.cancel_scope.cancel()


# -- pika against the real server ---------------------------------------------------------------


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    factory = ServerFactory(tmp_path_factory.mktemp("amqp-blocked"))
    try:  # one byte: the alarm is raised from the first sample on
        yield factory("amqp", log_level="info",
                      config="[handlers.amqp]\nmemory_high_watermark_bytes = 1\n")
    finally:
        factory.close()


@pytest.mark.slow
def test_pika_is_blocked_then_times_out(server: ServerProcess) -> None:
    host, port = server.address("amqp")
    params = pika.ConnectionParameters(host, port, connection_attempts=1,
                                       blocked_connection_timeout=1.0)
    conn = pika.BlockingConnection(params)
    reasons: list[str] = []
    conn.add_on_connection_blocked_callback(
        lambda _conn, frame: reasons.append(frame.method.reason))
    reader = pika.BlockingConnection(pika.ConnectionParameters(host, port,
                                                               connection_attempts=1))
    try:
        ch = conn.channel()
        ch.queue_declare("pika-blocked")
        ch.basic_publish("", "pika-blocked", b"before the block")
        with pytest.raises(pika.exceptions.ConnectionBlockedTimeout):
            deadline = time.monotonic() + 15
            while time.monotonic() < deadline:
                conn.process_data_events(time_limit=0.1)
        assert reasons == ["low on memory"]
        # the publish that met the alarm was stored; a connection that never published is
        # not blocked
        method, _, body = reader.channel().basic_get("pika-blocked", auto_ack=True)
        assert method is not None and body == b"before the block"
        assert "blocked by the memory alarm" in server.log_text()
    finally:
        for c in (conn, reader):
            if c.is_open:
                c.close()
