"""End to end with aio-pika, kombu and Debian's amqp-tools against the real server."""

from __future__ import annotations

import asyncio
import subprocess
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from conftest import ServerFactory, ServerProcess
from tools import require_tool

pytestmark = pytest.mark.slow

TIMEOUT = 15.0


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    factory = ServerFactory(tmp_path_factory.mktemp("amqp-e2e-clients"))
    try:
        yield factory("amqp", log_level="info")
    finally:
        factory.close()


def url(server: ServerProcess) -> str:
    host, port = server.address("amqp")
    return f"amqp://guest:guest@{host}:{port}/"


def run_async(coro: Any) -> Any:
    return asyncio.run(asyncio.wait_for(coro, TIMEOUT))


# -- aio-pika ----------------------------------------------------------------------------------


def test_aio_pika_robust_confirms_and_consume(server: ServerProcess) -> None:
    import aio_pika

    async def scenario() -> list[bytes]:
        conn = await aio_pika.connect_robust(url(server))
        async with conn:
            ch = await conn.channel(publisher_confirms=True)
            await ch.set_qos(prefetch_count=10)
            ex = await ch.declare_exchange("aio-x", aio_pika.ExchangeType.TOPIC)
            q = await ch.declare_queue("aio-q", auto_delete=True)
            await q.bind(ex, "a.*")
            confirms = [ex.publish(aio_pika.Message(f"m{i}".encode()), routing_key="a.b")
                        for i in range(50)]
            await asyncio.gather(*confirms)
            got: list[bytes] = []
            async with q.iterator() as it:
                async for message in it:
                    async with message.process():
                        got.append(message.body)
                    if len(got) == 50:
                        break
            return got

    assert run_async(scenario()) == [f"m{i}".encode() for i in range(50)]


def test_aio_pika_rpc_with_reply_to(server: ServerProcess) -> None:
    import aio_pika

    async def scenario() -> bytes:
        conn = await aio_pika.connect_robust(url(server))
        async with conn:
            server_ch = await conn.channel()
            requests = await server_ch.declare_queue("rpc-requests", exclusive=True)

            async def serve(message: aio_pika.abc.AbstractIncomingMessage) -> None:
                async with message.process():
                    assert message.reply_to is not None
                    await server_ch.default_exchange.publish(
                        aio_pika.Message(message.body.upper(),
                                         correlation_id=message.correlation_id),
                        routing_key=message.reply_to)

            await requests.consume(serve)
            client_ch = await conn.channel()
            callback = await client_ch.declare_queue("", exclusive=True)
            future: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
            correlation = str(uuid.uuid4())

            async def on_reply(message: aio_pika.abc.AbstractIncomingMessage) -> None:
                if message.correlation_id == correlation and not future.done():
                    future.set_result(message.body)

            await callback.consume(on_reply, no_ack=True)
            await client_ch.default_exchange.publish(
                aio_pika.Message(b"ping", reply_to=callback.name, correlation_id=correlation),
                routing_key="rpc-requests")
            return await future

    assert run_async(scenario()) == b"PING"


# -- kombu -------------------------------------------------------------------------------------


def test_kombu_producer_consumer_and_simple_queue(server: ServerProcess) -> None:
    import kombu

    with kombu.Connection(url(server), connect_timeout=TIMEOUT) as conn:
        exchange = kombu.Exchange("kombu-x", type="direct")
        queue = kombu.Queue("kombu-q", exchange, routing_key="jobs")
        with conn.Producer() as producer:
            producer.publish({"job": 1}, exchange=exchange, routing_key="jobs",
                             declare=[queue], serializer="json")
        got: list[Any] = []

        def on_message(body: Any, message: Any) -> None:
            got.append(body)
            message.ack()

        with conn.Consumer(queue, callbacks=[on_message]):
            conn.drain_events(timeout=TIMEOUT)
        assert got == [{"job": 1}]

        simple = conn.SimpleQueue("kombu-simple")
        simple.put({"hello": "world"})
        message = simple.get(block=True, timeout=TIMEOUT)
        message.ack()
        assert message.payload == {"hello": "world"}
        simple.close()


# -- Debian amqp-tools -------------------------------------------------------------------------


def test_amqp_tools_publish_and_consume(server: ServerProcess) -> None:
    publish = require_tool("amqp-publish")
    consume = require_tool("amqp-consume")
    declare = require_tool("amqp-declare-queue")
    subprocess.run([declare, "-u", url(server), "-q", "tools-q"], check=True,
                   capture_output=True, timeout=TIMEOUT)
    for i in range(3):
        subprocess.run([publish, "-u", url(server), "-r", "tools-q", "-p", "-C", "text/plain",
                        "-b", f"tool message {i}"], check=True, capture_output=True,
                       timeout=TIMEOUT)
    done = subprocess.run([consume, "-u", url(server), "-q", "tools-q", "-c", "3", "cat"],
                          check=True, capture_output=True, timeout=TIMEOUT)
    assert done.stdout == b"tool message 0tool message 1tool message 2"


def test_dropped_client_does_not_disturb_others(polystream_server: ServerFactory) -> None:
    """A client killed mid-session (no close handshake) does not disturb the next one."""
    import pika

    server = polystream_server("amqp", log_level="info")
    host, port = server.address("amqp")
    conn = pika.BlockingConnection(pika.ConnectionParameters(host, port))
    ch = conn.channel()
    ch.queue_declare("stray-q")
    conn._impl._transport._sock.close()  # the socket vanishes without connection.close
    conn2 = pika.BlockingConnection(pika.ConnectionParameters(host, port))
    try:
        assert conn2.channel().queue_declare("stray-q", passive=True).method.queue == "stray-q"
    finally:
        conn2.close()
