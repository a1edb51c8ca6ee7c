"""The trio session over in-memory streams on trio's MockClock: login rules, handshake and
heartbeat timeouts, shutdown, and a publish/consume round trip through the session."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest
import trio
import trio.testing
from fixtures.amqp.client_codec import content_frames, method_frame
from pamqp import base, commands, encode
from pamqp.common import FieldTable

from core.api import open_core
from core.config import CoreSettings
from core.handler import ConnectionInfo
from core.subscriptions import open_subscription_manager
from handlers.amqp.broker.vhosts import VhostDirectory
from handlers.amqp.connection import ServerSettings
from handlers.amqp.frames import (
    FRAME_BODY,
    FRAME_HEADER,
    FRAME_HEARTBEAT,
    PROTOCOL_HEADER,
    FrameReader,
    decode_content_header,
    decode_method,
    encode_heartbeat,
)
from handlers.amqp.session import HANDSHAKE_TIMEOUT, AmqpSession
from storage import open_storage

BYE = commands.Connection.Close(reply_code=200, reply_text="bye", class_id=0, method_id=0)
LOOPBACK = ConnectionInfo("amqp", "127.0.0.1", 40000, "127.0.0.1", 5672)
REMOTE = ConnectionInfo("amqp", "192.0.2.7", 40000, "192.0.2.1", 5672)


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


@dataclass
class Client:
    stream: trio.abc.Stream
    reader: FrameReader
    heartbeats: int = 0

    async def next(self) -> object | None:
        """The next method (or ('header'/'body', …)); None when the server closed."""
        while True:
            frame = self.reader.next_frame()
            if frame is None:
                data = await self.stream.receive_some(65536)
                if not data:
                    return None
                self.reader.feed(data)
                continue
            if frame.frame_type == FRAME_HEARTBEAT:
                self.heartbeats += 1
                continue
            if frame.frame_type == FRAME_HEADER:
                return ("header", decode_content_header(frame.payload)[2])
            if frame.frame_type == FRAME_BODY:
                return ("body", frame.payload)
            return decode_method(frame.payload)

    async def send(self, channel: int, method: base.Frame) -> None:
        await self.stream.send_all(method_frame(channel, method))

    async def login(self, *, user: str = "guest", password: str = "guest",
                    mechanism: str = "PLAIN", heartbeat: int = 0,
                    capabilities: FieldTable | None = None) -> object | None:
        await self.stream.send_all(PROTOCOL_HEADER)
        assert isinstance(await self.next(), commands.Connection.Start)
        response = (f"\0{user}\0{password}" if mechanism == "PLAIN" else encode.field_table(
            {"LOGIN": user, "PASSWORD": password})[4:].decode("ascii"))
        await self.send(0, commands.Connection.StartOk(
            client_properties={"capabilities": capabilities or {}}, mechanism=mechanism,
            response=response))
        tune = await self.next()
        if not isinstance(tune, commands.Connection.Tune):
            return tune
        await self.send(0, commands.Connection.TuneOk(frame_max=131072, heartbeat=heartbeat))
        await self.send(0, commands.Connection.Open(virtual_host="/"))
        return await self.next()


class CountingStream(trio.abc.Stream):
    """The server's end of the pipe, counting its socket writes."""

    def __init__(self, inner: trio.abc.Stream) -> None:
        self.inner = inner
        self.writes = 0

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        self.writes += 1
        await self.inner.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self.inner.wait_send_all_might_not_block()

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        return await self.inner.receive_some(max_bytes)

    async def aclose(self) -> None:
        await self.inner.aclose()


async def start(nursery: trio.Nursery, vhosts: VhostDirectory, info: ConnectionInfo = LOOPBACK,
                stopping: trio.Event | None = None,
                server_stream: trio.abc.Stream | None = None) -> Client:
    client_stream, pipe = trio.testing.memory_stream_pair()
    if server_stream is None:
        server_stream = pipe
    elif isinstance(server_stream, CountingStream):
        server_stream.inner = pipe
    session = AmqpSession(server_stream, info, vhosts, ServerSettings(heartbeat=60), stopping)

    async def serve() -> None:  # as the broker does: it closes the stream after serve()
        try:
            await session.run()
        finally:
            await session.stream.aclose()

    nursery.start_soon(serve)
    return Client(client_stream, FrameReader(1 << 20, 1 << 22))


async def test_plain_and_amqplain_logins(vhosts: VhostDirectory) -> None:
    async with trio.open_nursery() as nursery:
        for mechanism in ("PLAIN", "AMQPLAIN"):
            client = await start(nursery, vhosts)
            assert isinstance(await client.login(mechanism=mechanism),
                              commands.Connection.OpenOk)
            await client.send(0, BYE)
            assert isinstance(await client.next(), commands.Connection.CloseOk)
            assert await client.next() is None


async def test_bad_password_and_guest_from_afar_are_refused(vhosts: VhostDirectory) -> None:
    async with trio.open_nursery() as nursery:
        client = await start(nursery, vhosts)
        closed = await client.login(password="nope")
        assert isinstance(closed, commands.Connection.Close) and closed.reply_code == 403
        client = await start(nursery, vhosts, REMOTE)
        closed = await client.login()
        assert isinstance(closed, commands.Connection.Close) and closed.reply_code == 403


async def test_handshake_timeout(vhosts: VhostDirectory,
                                 autojump_clock: trio.testing.MockClock) -> None:
    async with trio.open_nursery() as nursery:
        client = await start(nursery, vhosts)
        await client.stream.send_all(PROTOCOL_HEADER)
        begin = trio.current_time()
        assert isinstance(await client.next(), commands.Connection.Start)
        assert await client.next() is None
        assert HANDSHAKE_TIMEOUT <= trio.current_time() - begin <= HANDSHAKE_TIMEOUT + 1


async def test_client_heartbeat_value_rules(vhosts: VhostDirectory,
                                            autojump_clock: trio.testing.MockClock) -> None:
    async with trio.open_nursery() as nursery:
        # tune-ok heartbeat=10: we send every 5 s and drop a silent client after 20 s
        client = await start(nursery, vhosts)
        assert isinstance(await client.login(heartbeat=10), commands.Connection.OpenOk)
        begin = trio.current_time()
        assert await client.next() is None
        assert 20 <= trio.current_time() - begin <= 21
        assert client.heartbeats >= 3
        # tune-ok heartbeat=0: no heartbeats either way, an idle client stays
        quiet = await start(nursery, vhosts)
        assert isinstance(await quiet.login(heartbeat=0), commands.Connection.OpenOk)
        with trio.move_on_after(3600):
            await quiet.next()
        assert quiet.heartbeats == 0
        # a client that keeps sending heartbeats stays too
        alive = await start(nursery, vhosts)
        assert isinstance(await alive.login(heartbeat=10), commands.Connection.OpenOk)
        for _ in range(10):
            await trio.sleep(8)
            await alive.stream.send_all(encode_heartbeat())
        await alive.send(0, BYE)
        assert isinstance(await alive.next(), commands.Connection.CloseOk)
        nursery.cancel_scope.cancel()


async def test_shutdown_says_goodbye_with_320(vhosts: VhostDirectory,
                                              autojump_clock: trio.testing.MockClock) -> None:
    stopping = trio.Event()
    async with trio.open_nursery() as nursery:
        client = await start(nursery, vhosts, stopping=stopping)
        assert isinstance(await client.login(), commands.Connection.OpenOk)
        stopping.set()
        close = await client.next()
        assert isinstance(close, commands.Connection.Close) and close.reply_code == 320
        await client.send(0, commands.Connection.CloseOk())
        assert await client.next() is None


async def test_publish_confirm_consume_through_the_session(vhosts: VhostDirectory) -> None:
    async with trio.open_nursery() as nursery:
        client = await start(nursery, vhosts)
        caps = {"consumer_cancel_notify": True}
        assert isinstance(await client.login(capabilities=caps), commands.Connection.OpenOk)
        await client.send(1, commands.Channel.Open())
        assert isinstance(await client.next(), commands.Channel.OpenOk)
        await client.send(1, commands.Queue.Declare(queue="s-q"))
        assert isinstance(await client.next(), commands.Queue.DeclareOk)
        await client.send(1, commands.Confirm.Select())
        assert isinstance(await client.next(), commands.Confirm.SelectOk)
        for i in range(3):
            await client.send(1, commands.Basic.Publish(exchange="", routing_key="s-q"))
            props = commands.Basic.Properties(content_type="text/plain", headers={"i": i})
            await client.stream.send_all(content_frames(1, b"m%d" % i, props))
        acked: set[int] = set()
        while len(acked) < 3:
            ack = await client.next()
            assert isinstance(ack, commands.Basic.Ack)
            acked.update(range(1, ack.delivery_tag + 1) if ack.multiple else [ack.delivery_tag])
        await client.send(1, commands.Basic.Qos(prefetch_count=2))
        assert isinstance(await client.next(), commands.Basic.QosOk)
        await client.send(1, commands.Basic.Consume(queue="s-q", consumer_tag="c1"))
        assert isinstance(await client.next(), commands.Basic.ConsumeOk)
        bodies = []
        for _ in range(2):
            deliver = await client.next()
            assert isinstance(deliver, commands.Basic.Deliver)
            _, props = await client.next()  # type: ignore[misc]
            _, body = await client.next()  # type: ignore[misc]
            bodies.append(body)
        assert bodies == [b"m0", b"m1"]
        with trio.move_on_after(0.3):  # prefetch 2: the third waits for an ack
            assert await client.next() is None
        await client.send(1, commands.Basic.Ack(delivery_tag=2, multiple=True))
        deliver = await client.next()
        assert isinstance(deliver, commands.Basic.Deliver) and deliver.delivery_tag == 3
        await client.next()
        assert await client.next() == ("body", b"m2")
        # deleting the queue from another channel cancels the consumer (cancel-notify)
        await client.send(2, commands.Channel.Open())
        assert isinstance(await client.next(), commands.Channel.OpenOk)
        await client.send(2, commands.Queue.Delete(queue="s-q"))
        cancel = await client.next()
        assert isinstance(cancel, commands.Basic.Cancel) and cancel.consumer_tag == "c1"
        delete_ok = await client.next()
        assert isinstance(delete_ok, commands.Queue.DeleteOk)
        nursery.cancel_scope.cancel()


async def open_channel(client: Client, queue: str) -> None:
    assert isinstance(await client.login(), commands.Connection.OpenOk)
    await client.send(1, commands.Channel.Open())
    assert isinstance(await client.next(), commands.Channel.OpenOk)
    await client.send(1, commands.Queue.Declare(queue=queue))
    assert isinstance(await client.next(), commands.Queue.DeclareOk)


async def publish(client: Client, queue: str, bodies: list[bytes]) -> None:
    data = b"".join(method_frame(1, commands.Basic.Publish(exchange="", routing_key=queue))
                    + content_frames(1, body, commands.Basic.Properties()) for body in bodies)
    await client.stream.send_all(data)


async def test_a_burst_of_ready_messages_goes_out_in_few_writes(vhosts: VhostDirectory) -> None:
    counting = CountingStream(trio.testing.memory_stream_pair()[1])
    bodies = [b"b%d" % i for i in range(100)]
    async with trio.open_nursery() as nursery:
        client = await start(nursery, vhosts, server_stream=counting)
        await open_channel(client, "burst-q")
        await client.send(1, commands.Confirm.Select())
        assert isinstance(await client.next(), commands.Confirm.SelectOk)
        await publish(client, "burst-q", bodies)
        confirmed = 0
        while confirmed < 100:
            ack = await client.next()
            assert isinstance(ack, commands.Basic.Ack)
            confirmed = ack.delivery_tag
        await client.send(1, commands.Basic.Consume(queue="burst-q", consumer_tag="c"))
        assert isinstance(await client.next(), commands.Basic.ConsumeOk)
        before = counting.writes
        got = []
        for _ in bodies:
            assert isinstance(await client.next(), commands.Basic.Deliver)
            await client.next()
            _, body = await client.next()  # type: ignore[misc]
            got.append(body)
        assert got == bodies
        # one write per burst the core hands over, not one per message
        assert counting.writes - before <= 10
        nursery.cancel_scope.cancel()


async def test_tx_publishes_reach_a_consumer_only_at_commit(vhosts: VhostDirectory) -> None:
    async with trio.open_nursery() as nursery:
        client = await start(nursery, vhosts)
        await open_channel(client, "tx-s-q")
        await client.send(1, commands.Basic.Consume(queue="tx-s-q", consumer_tag="c",
                                                    no_ack=True))
        assert isinstance(await client.next(), commands.Basic.ConsumeOk)
        await client.send(2, commands.Channel.Open())
        assert isinstance(await client.next(), commands.Channel.OpenOk)
        await client.send(2, commands.Tx.Select())
        assert isinstance(await client.next(), commands.Tx.SelectOk)
        for body in (b"gone", b"kept"):
            await client.send(2, commands.Basic.Publish(exchange="", routing_key="tx-s-q"))
            await client.stream.send_all(content_frames(2, body, commands.Basic.Properties()))
            with trio.move_on_after(0.3):  # stored, but not delivered before the end
                assert await client.next() is None
            end = commands.Tx.Rollback() if body == b"gone" else commands.Tx.Commit()
            await client.send(2, end)
            if body == b"gone":
                assert isinstance(await client.next(), commands.Tx.RollbackOk)
        # the delivery on channel 1 and the CommitOk on channel 2 may come in either order (a
        # connection orders frames per channel only): take four frames, CommitOk among them
        frames = [await client.next() for _ in range(4)]
        assert sum(isinstance(f, commands.Tx.CommitOk) for f in frames) == 1
        deliver, _header, content = [f for f in frames if not isinstance(f, commands.Tx.CommitOk)]
        assert isinstance(deliver, commands.Basic.Deliver) and deliver.delivery_tag == 1
        assert content == ("body", b"kept")
        with trio.move_on_after(0.3):
            assert await client.next() is None
        nursery.cancel_scope.cancel()
