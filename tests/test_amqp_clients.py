"""End to end: unmodified pika, aio-pika and Debian's amqp-tools complete connect, channel open,
declares and publish against a tiny trio server running our state machine (plus the stub broker
from tests/fixtures/amqp/stubbroker.py).
"""

from __future__ import annotations

import functools
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
import trio
from fixtures.amqp import clients
from fixtures.amqp.stubbroker import StubBroker, serve_stub
from pamqp import commands
from tools import require_tool

from handlers.amqp import (
    ChannelOpened,
    ConnectionClosed,
    ConnectionClosing,
    MethodReceived,
    Publish,
    ReplyCode,
)

pytestmark = pytest.mark.slow
TEST_TIMEOUT = 40.0


@asynccontextmanager
async def stub_server() -> AsyncIterator[tuple[int, trio.MemoryReceiveChannel[StubBroker]]]:
    """A loopback server on an ephemeral port.

    Yields the port and a channel that receives each connection's StubBroker once that
    connection is finished (the client may return before the server has read its last bytes).
    """
    send_done, receive_done = trio.open_memory_channel[StubBroker](8)

    async def handler(stream: trio.SocketStream) -> None:
        brokers: list[StubBroker] = []
        await serve_stub(stream, brokers=brokers)
        await send_done.send(brokers[0])

    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(
            functools.partial(trio.serve_tcp, handler, 0, host="127.0.0.1")
        )
        yield listeners[0].socket.getsockname()[1], receive_done
        nursery.cancel_scope.cancel()


def check_scenario(broker: StubBroker, publishes: int) -> None:
    assert any(isinstance(e, ChannelOpened) for e in broker.events)
    methods = [e.method for e in broker.events if isinstance(e, MethodReceived)]
    assert any(isinstance(m, commands.Queue.Declare) and m.queue == clients.QUEUE for m in methods)
    assert len(broker.publishes) == publishes
    closed = broker.events[-1]
    assert isinstance(closed, ConnectionClosed) and closed.by_peer and closed.reply_code == 200
    assert not any(isinstance(e, ConnectionClosing) for e in broker.events)


async def test_pika_blocking_client() -> None:
    with trio.fail_after(TEST_TIMEOUT):
        async with stub_server() as (port, finished):
            await trio.to_thread.run_sync(clients.run_pika, port)
            broker = await finished.receive()
    check_scenario(broker, publishes=2)
    small, big = broker.publishes
    assert small.body == clients.BODY and small.properties.headers == clients.HEADERS
    assert big.body == clients.BIG_BODY


async def test_aio_pika_client_with_publisher_confirms() -> None:
    with trio.fail_after(TEST_TIMEOUT):
        async with stub_server() as (port, finished):
            await trio.to_thread.run_sync(clients.run_aio_pika, port)
            broker = await finished.receive()
    check_scenario(broker, publishes=2)
    methods = [e.method for e in broker.events if isinstance(e, MethodReceived)]
    assert isinstance(methods[0], commands.Confirm.Select)
    assert broker.publishes[0].properties.headers == clients.HEADERS
    assert broker.publishes[1].body == clients.BIG_BODY


async def test_amqp_tools() -> None:
    declare = require_tool("amqp-declare-queue")
    publish = require_tool("amqp-publish")
    with trio.fail_after(TEST_TIMEOUT):
        async with stub_server() as (port, finished):
            result = await trio.run_process(
                clients.amqp_declare_queue_argv(declare, port), capture_stdout=True
            )
            assert result.stdout.strip() == clients.QUEUE.encode()
            declared = await finished.receive()
            await trio.run_process(clients.amqp_publish_argv(publish, port))
            published = await finished.receive()
    check_scenario(declared, publishes=0)
    assert len(published.publishes) == 1
    message = published.publishes[0]
    assert message.body == clients.BODY
    assert message.method.exchange == clients.EXCHANGE
    assert message.properties.content_type == clients.CONTENT_TYPE


async def test_pika_wrong_password_is_refused() -> None:
    import pika
    import pika.exceptions

    def connect(port: int) -> None:
        params = pika.ConnectionParameters(
            host="127.0.0.1",
            port=port,
            credentials=pika.PlainCredentials("guest", "wrong"),
            connection_attempts=1,
            socket_timeout=clients.CLIENT_TIMEOUT,
        )
        with pytest.raises(pika.exceptions.ProbableAuthenticationError, match="403"):
            pika.BlockingConnection(params)

    with trio.fail_after(TEST_TIMEOUT):
        async with stub_server() as (port, finished):
            await trio.to_thread.run_sync(connect, port)
            broker = await finished.receive()
    closing = [e for e in broker.events if isinstance(e, ConnectionClosing)]
    assert closing and closing[0].reply_code is ReplyCode.ACCESS_REFUSED
    assert isinstance(broker.events[-1], ConnectionClosed)
    assert not any(isinstance(e, Publish) for e in broker.events)
