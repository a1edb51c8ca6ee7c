"""Heartbeats as a session drives them: the state machine exposes ``heartbeat_interval``,
``send_heartbeat()`` and ``timer_expired()``; the clock belongs to the (trio) session.

The tiny session here is the pattern the real AMQP session will follow; tests run it on trio's
MockClock over in-memory streams, so a 60 s heartbeat costs no real time.
"""

from __future__ import annotations

import trio
import trio.testing
from fixtures.amqp.client_codec import method_frame
from pamqp import commands

from handlers.amqp import (
    AuthenticationRequest,
    ConnectionClosed,
    ServerConnection,
    ServerSettings,
    VhostRequest,
)
from handlers.amqp.frames import (
    FRAME_HEARTBEAT,
    PROTOCOL_HEADER,
    FrameReader,
    RawFrame,
    encode_heartbeat,
)

HANDSHAKE_TIMEOUT = 10.0


async def session(stream: trio.abc.Stream, conn: ServerConnection) -> ConnectionClosed:
    """Move bytes between the stream and the state machine; keep heartbeat time."""
    silent = 0.0
    while True:
        interval = conn.heartbeat_interval
        tick = interval / 2 if interval else HANDSHAKE_TIMEOUT
        with trio.move_on_after(tick) as scope:
            data = await stream.receive_some(65536)
        if scope.cancelled_caught:
            silent += tick
            if not interval or silent >= 2 * interval:
                conn.timer_expired()
            else:
                conn.send_heartbeat()
        else:
            silent = 0.0
            conn.receive_data(data)
        closed = None
        while (event := conn.next_event()) is not None:
            if isinstance(event, AuthenticationRequest):
                conn.accept_auth()
            elif isinstance(event, VhostRequest):
                conn.accept_vhost()
            elif isinstance(event, ConnectionClosed):
                closed = event
        out = conn.data_to_send()
        if out:
            await stream.send_all(out)
        if closed is not None:
            await stream.aclose()
            return closed


class Client:
    """Scripted client end of the stream."""

    def __init__(self, stream: trio.abc.Stream) -> None:
        self.stream = stream
        self.reader = FrameReader(131072, 1 << 20)
        self.heartbeats = 0

    async def frame(self) -> RawFrame | None:
        while (frame := self.reader.next_frame()) is None:
            data = await self.stream.receive_some(65536)
            if not data:
                return None
            self.reader.feed(data)
        if frame.frame_type == FRAME_HEARTBEAT:
            self.heartbeats += 1
        return frame

    async def handshake(self, heartbeat: int) -> None:
        await self.stream.send_all(PROTOCOL_HEADER)
        await self.frame()  # start
        await self.stream.send_all(
            method_frame(
                0,
                commands.Connection.StartOk(
                    client_properties={}, mechanism="PLAIN", response="\0guest\0guest"
                ),
            )
        )
        await self.frame()  # tune
        tune_ok = commands.Connection.TuneOk(frame_max=131072, heartbeat=heartbeat)
        await self.stream.send_all(method_frame(0, tune_ok))
        await self.stream.send_all(method_frame(0, commands.Connection.Open(virtual_host="/")))
        await self.frame()  # open-ok


async def test_silent_client_is_dropped_after_two_intervals(
    autojump_clock: trio.testing.MockClock,
) -> None:
    client_stream, server_stream = trio.testing.memory_stream_pair()
    conn = ServerConnection(ServerSettings(heartbeat=10))
    client = Client(client_stream)
    result: list[ConnectionClosed] = []

    async def run_server() -> None:
        result.append(await session(server_stream, conn))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(run_server)
        await client.handshake(heartbeat=10)
        start = trio.current_time()
        while await client.frame() is not None:
            pass
        elapsed = trio.current_time() - start
    assert result[0].reply_text == "missed heartbeats from client"
    assert 20 <= elapsed <= 25
    assert client.heartbeats >= 3  # we kept sending ours every 5 s meanwhile


async def test_client_heartbeats_keep_the_connection(
    autojump_clock: trio.testing.MockClock,
) -> None:
    client_stream, server_stream = trio.testing.memory_stream_pair()
    conn = ServerConnection(ServerSettings(heartbeat=10))
    client = Client(client_stream)
    result: list[ConnectionClosed] = []

    async def run_server() -> None:
        result.append(await session(server_stream, conn))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(run_server)
        await client.handshake(heartbeat=10)
        for _ in range(12):  # one minute of mock time
            await trio.sleep(5)
            await client_stream.send_all(encode_heartbeat())
        assert result == []
        close = commands.Connection.Close(
            reply_code=200, reply_text="done", class_id=0, method_id=0
        )
        await client_stream.send_all(method_frame(0, close))
        while await client.frame() is not None:
            pass
    assert result == [ConnectionClosed(200, "done", by_peer=True)]


async def test_handshake_timeout(autojump_clock: trio.testing.MockClock) -> None:
    client_stream, server_stream = trio.testing.memory_stream_pair()
    conn = ServerConnection()
    await client_stream.send_all(PROTOCOL_HEADER)  # and then nothing
    with trio.fail_after(HANDSHAKE_TIMEOUT * 2):
        closed = await session(server_stream, conn)
    assert "handshake timeout" in closed.reply_text
