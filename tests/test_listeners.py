"""Listeners and the connection server, in process (memory streams, MockClock, loopback TCP)."""

from __future__ import annotations

import errno
import logging
from typing import ClassVar

import pytest
import trio
import trio.testing

from core.config import ListenerConfig
from core.handler import ConnectionInfo, HandlerContext, ProtocolHandler
from core.listeners import (
    BoundListener,
    ConnectionServer,
    ListenerBindError,
    bind_listener,
    connection_info,
    format_host_port,
)

Item = trio.abc.Stream | BaseException


class MemoryListener(trio.abc.Listener[trio.abc.Stream]):
    """A listener whose "clients" are memory stream pairs; can also inject accept errors."""

    def __init__(self) -> None:
        self._send, self._receive = trio.open_memory_channel[Item](16)
        self.closed = False

    async def accept(self) -> trio.abc.Stream:
        item = await self._receive.receive()
        if isinstance(item, BaseException):
            raise item
        return item

    async def aclose(self) -> None:
        self.closed = True
        self._receive.close()
        await trio.lowlevel.checkpoint()

    async def connect(self) -> trio.abc.Stream:
        client, server = trio.testing.memory_stream_pair()
        await self._send.send(server)
        return client

    async def inject(self, error: BaseException) -> None:
        await self._send.send(error)


class LineEcho(ProtocolHandler):
    """Echoes what it gets; ``crash`` raises; tracks connections seen and live."""

    name: ClassVar[str] = "lineecho"
    default_port: ClassVar[int] = 0

    def __init__(self) -> None:
        self.conns: list[ConnectionInfo] = []
        self.live = 0

    async def start(self, context: HandlerContext) -> None:
        raise AssertionError("not used here")

    async def serve(self, stream: trio.abc.Stream, conn: ConnectionInfo) -> None:
        self.conns.append(conn)
        self.live += 1
        try:
            while data := await stream.receive_some(1024):
                if data == b"crash":
                    raise RuntimeError("boom on request")
                await stream.send_all(data)
        finally:
            self.live -= 1


async def roundtrip(stream: trio.abc.Stream, data: bytes) -> bytes:
    await stream.send_all(data)
    return await stream.receive_some(1024)


async def wait_until_closed(stream: trio.abc.Stream) -> None:
    """The server closed its end: we read EOF."""
    with trio.fail_after(5):
        assert await stream.receive_some(1024) == b""


def memory_bound(name: str = "mem", max_connections: int = 100
                 ) -> tuple[BoundListener, MemoryListener]:
    listener = MemoryListener()
    config = ListenerConfig(name=name, handler="lineecho", max_connections=max_connections)
    return BoundListener(config, [listener], []), listener


async def start_server(nursery: trio.Nursery, handler: ProtocolHandler, *bounds: BoundListener
                       ) -> ConnectionServer:
    server = ConnectionServer()
    for bound in bounds:
        server.add(bound, handler)
    await nursery.start(server.run)
    return server


async def test_connection_is_served_and_closed_when_serve_returns() -> None:
    handler = LineEcho()
    bound, listener = memory_bound("alpha")
    async with trio.open_nursery() as nursery:
        server = await start_server(nursery, handler, bound)
        client = await listener.connect()
        assert await roundtrip(client, b"hello") == b"hello"
        assert handler.conns[0].listener == "alpha"
        assert handler.conns[0].peer_host == "?"  # memory streams have no socket
        assert server.active_connections == 1 and server.connections("alpha") == 1
        await client.send_eof()
        await wait_until_closed(client)
        await trio.testing.wait_all_tasks_blocked()
        assert server.active_connections == 0
        await server.stop(grace_s=1)
    assert listener.closed


async def test_connection_limit_closes_excess_connections_at_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="core.listeners")
    handler = LineEcho()
    bound, listener = memory_bound("limited", max_connections=2)
    async with trio.open_nursery() as nursery:
        server = await start_server(nursery, handler, bound)
        first, second = await listener.connect(), await listener.connect()
        assert await roundtrip(first, b"1") == b"1"
        assert await roundtrip(second, b"2") == b"2"
        third = await listener.connect()
        await wait_until_closed(third)
        assert "listener limited: connection limit (2) reached" in caplog.text
        assert handler.live == 2 and len(handler.conns) == 2
        # the first two are undisturbed; when one leaves, a new client gets in
        assert await roundtrip(first, b"still") == b"still"
        await first.aclose()
        await trio.testing.wait_all_tasks_blocked()
        assert server.active_connections == 1
        fourth = await listener.connect()
        assert await roundtrip(fourth, b"4") == b"4"
        assert server.active_connections == 2
        server.cancel_connections()


async def test_crashing_serve_closes_only_that_connection(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.ERROR, logger="core.listeners")
    handler = LineEcho()
    bound, listener = memory_bound("crashy")
    async with trio.open_nursery() as nursery:
        server = await start_server(nursery, handler, bound)
        calm, doomed = await listener.connect(), await listener.connect()
        assert await roundtrip(calm, b"a") == b"a"
        await doomed.send_all(b"crash")
        await wait_until_closed(doomed)
        assert "handler lineecho failed serving" in caplog.text
        assert "RuntimeError: boom on request" in caplog.text
        assert await roundtrip(calm, b"b") == b"b"
        assert server.active_connections == 1
        # the accept loop carries on too
        late = await listener.connect()
        assert await roundtrip(late, b"c") == b"c"
        server.cancel_connections()


async def test_handler_error_group_is_logged_not_propagated(
    caplog: pytest.LogCaptureFixture,
) -> None:
    class Grouped(LineEcho):
        async def serve(self, stream: trio.abc.Stream, conn: ConnectionInfo) -> None:
            async def fail() -> None:
                raise ValueError("inside a handler nursery")

            async with trio.open_nursery() as nursery:
                nursery.start_soon(fail)
                await trio.sleep_forever()

    bound, listener = memory_bound("grouped")
    async with trio.open_nursery() as nursery:
        server = await start_server(nursery, Grouped(), bound)
        client = await listener.connect()
        await wait_until_closed(client)
        assert "ValueError: inside a handler nursery" in caplog.text
        await server.stop(grace_s=0)


async def test_emfile_from_accept_is_logged_and_retried(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture,
) -> None:
    handler = LineEcho()
    bound, listener = memory_bound("fd")
    async with trio.open_nursery() as nursery:
        server = await start_server(nursery, handler, bound)
        await listener.inject(OSError(errno.EMFILE, "Too many open files"))
        await listener.inject(OSError(errno.ENFILE, "Too many open files in system"))
        t0 = trio.current_time()
        client = await listener.connect()
        assert await roundtrip(client, b"ok") == b"ok"
        assert trio.current_time() - t0 >= 0.2  # two retry sleeps of 0.1 s (mock clock)
        assert "accept failed with EMFILE" in caplog.text
        assert "accept failed with ENFILE" in caplog.text
        # an unexpected accept error is logged and retried too
        await listener.inject(OSError(errno.EPERM, "odd"))
        other = await listener.connect()
        assert await roundtrip(other, b"ok2") == b"ok2"
        assert "listener fd: accept failed; retrying" in caplog.text
        server.cancel_connections()


async def test_stop_waits_for_connections_within_grace(
    autojump_clock: trio.testing.MockClock,
) -> None:
    handler = LineEcho()
    bound, listener = memory_bound()
    async with trio.open_nursery() as nursery:
        server = await start_server(nursery, handler, bound)
        client = await listener.connect()
        assert await roundtrip(client, b"x") == b"x"

        async def client_leaves_after(delay: float) -> None:
            await trio.sleep(delay)
            await client.aclose()

        nursery.start_soon(client_leaves_after, 3.0)
        t0 = trio.current_time()
        await server.stop(grace_s=10.0)
        assert trio.current_time() - t0 == pytest.approx(3.0)
        assert handler.live == 0
    assert listener.closed


async def test_stop_cancels_connections_after_grace(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="core.listeners")
    handler = LineEcho()
    bound, listener = memory_bound()
    async with trio.open_nursery() as nursery:
        server = await start_server(nursery, handler, bound)
        client = await listener.connect()
        assert await roundtrip(client, b"x") == b"x"
        t0 = trio.current_time()
        await server.stop(grace_s=2.5)
        assert trio.current_time() - t0 == pytest.approx(2.5)
        assert handler.live == 0
        assert "grace period (2.5s) over: closing 1 connection(s)" in caplog.text
        await wait_until_closed(client)


async def test_no_new_connections_after_stop_begins(
    autojump_clock: trio.testing.MockClock,
) -> None:
    handler = LineEcho()
    bound, listener = memory_bound()
    async with trio.open_nursery() as nursery:
        server = await start_server(nursery, handler, bound)
        held = await listener.connect()
        assert await roundtrip(held, b"x") == b"x"
        nursery.start_soon(server.stop, 5.0)
        await trio.testing.wait_all_tasks_blocked()
        assert listener.closed
        assert await roundtrip(held, b"y") == b"y"  # existing connection still served


async def test_tcp_listener_binds_port_zero_and_reports_peer() -> None:
    handler = LineEcho()
    config = ListenerConfig(name="tcp", handler="lineecho", host="127.0.0.1", port=0)
    bound = await bind_listener(config)
    [address] = bound.addresses
    assert address.name == "tcp" and address.host == "127.0.0.1" and address.port > 0
    async with trio.open_nursery() as nursery:
        server = await start_server(nursery, handler, bound)
        client = await trio.open_tcp_stream("127.0.0.1", address.port)
        assert await roundtrip(client, b"over tcp") == b"over tcp"
        [conn] = handler.conns
        assert conn.peer_host == "127.0.0.1" and conn.peer_is_loopback
        assert conn.local_port == address.port and conn.listener == "tcp"
        await client.aclose()
        await server.stop(grace_s=5)
    with pytest.raises(OSError):
        await trio.open_tcp_stream("127.0.0.1", address.port)


async def test_bind_conflict_names_the_listener() -> None:
    first = await bind_listener(ListenerConfig(name="a", handler="h", host="127.0.0.1", port=0))
    port = first.addresses[0].port
    try:
        with pytest.raises(ListenerBindError) as info:
            await bind_listener(ListenerConfig(name="b", handler="h", host="127.0.0.1",
                                               port=port))
        assert f"cannot listen on 127.0.0.1:{port} for listener 'b' (handler h)" in str(
            info.value)
    finally:
        await first.aclose()


def test_format_host_port_brackets_ipv6() -> None:
    assert format_host_port("::1", 5) == "[::1]:5"
    assert format_host_port("10.0.0.1", 5) == "10.0.0.1:5"


async def test_connection_info_looks_through_wrapping_streams() -> None:
    class Wrapper:  # like trio.SSLStream: the socket is behind .transport_stream
        def __init__(self, inner: object) -> None:
            self.transport_stream = inner

    listener = (await trio.open_tcp_listeners(0, host="127.0.0.1"))[0]
    port = listener.socket.getsockname()[1]
    async with listener, await trio.open_tcp_stream("127.0.0.1", port) as client:
        server_side = await listener.accept()
        info = connection_info(Wrapper(Wrapper(server_side)), "wrapped")  # type: ignore[arg-type]
        client_port = client.socket.getsockname()[1]
        await server_side.aclose()
    assert info.listener == "wrapped"
    assert info.peer_host == "127.0.0.1" and info.peer_port == client_port
    assert info.local_port == port


async def test_connection_info_of_unix_socket_does_not_fail() -> None:
    a, b = trio.socket.socketpair()
    with a, b:
        info = connection_info(trio.SocketStream(a), "unix")
    assert (info.peer_host, info.peer_port) == ("?", 0)
