"""In-process harness for the MQTT handler tests (no tests here): a real core, memory streams.

``open_gateway()`` starts :class:`MqttHandler` on a ``memory://`` (or given) storage;
``gateway.connect(Connect(...))`` returns a :class:`WireClient` speaking the codec over an
in-memory stream pair served by ``handler.serve``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import trio
import trio.testing

from core.api import Core, open_core
from core.config import CoreSettings
from core.handler import ConnectionInfo, HandlerContext
from core.records import Message, decode_batch
from handlers.mqtt import (
    MQTT_5,
    ConnAck,
    Connect,
    Packet,
    PacketReader,
    Role,
    encode,
)
from handlers.mqtt.handler import MqttHandler
from storage import open_storage

TIMEOUT_S = 5.0


class WireClient:
    """A test client: encode packets out, decode packets in, over one stream."""

    def __init__(self, stream: trio.abc.Stream, level: int) -> None:
        self.stream = stream
        self.level = level
        self.reader = PacketReader(Role.CLIENT, protocol_version=level)
        self.closed = False

    async def send(self, packet: Packet) -> None:
        await self.stream.send_all(encode(packet, self.level))

    async def send_raw(self, data: bytes) -> None:
        await self.stream.send_all(data)

    async def recv(self, within: float = TIMEOUT_S) -> Packet:
        """The next packet from the server; fails on timeout or close."""
        with trio.fail_after(within):
            while True:
                packet = self.reader.next_packet()
                if packet is not None:
                    return packet
                data = await self.stream.receive_some(65536)
                if not data:
                    self.closed = True
                    raise EOFError("server closed the connection")
                self.reader.receive_data(data)

    async def expect_closed(self, within: float = TIMEOUT_S) -> list[Packet]:
        """Read until the server closes; return the packets received before."""
        got: list[Packet] = []
        try:
            while True:
                got.append(await self.recv(within))
        except EOFError:
            return got

    async def nothing(self, wait: float = 0.5) -> None:
        """Assert that no packet arrives within ``wait`` seconds."""
        with trio.move_on_after(wait):
            packet = await self.recv(wait + 1)
            raise AssertionError(f"unexpected packet {packet}")

    async def aclose(self) -> None:
        await self.stream.aclose()


class Gateway:
    """A started handler on a core."""

    def __init__(self, handler: MqttHandler, core: Core, nursery: trio.Nursery,
                 stopping: trio.Event) -> None:
        self.handler = handler
        self.core = core
        self.nursery = nursery
        self.stopping = stopping

    async def open(self, *, peer: str = "127.0.0.1", level: int = MQTT_5) -> WireClient:
        """A connected, not yet CONNECTed client."""
        client_side, server_side = trio.testing.memory_stream_pair()
        info = ConnectionInfo("mqtt", peer, 40000, "127.0.0.1", 1883)

        async def serve() -> None:
            try:
                await self.handler.serve(server_side, info)
            finally:
                await server_side.aclose()

        self.nursery.start_soon(serve)
        return WireClient(client_side, level)

    async def connect(self, connect: Connect, *, peer: str = "127.0.0.1",
                      expect: int = 0) -> tuple[WireClient, ConnAck]:
        client = await self.open(peer=peer, level=connect.protocol_level)
        await client.send(connect)
        ack = await client.recv()
        assert isinstance(ack, ConnAck), ack
        assert ack.reason_code == expect, ack
        return client, ack

    async def messages(self, topic: str, partition: int = 0) -> list[Message]:
        """Every message stored in a core topic of ``public/default``."""
        out: list[Message] = []
        offset = await self.core.earliest_offset(topic, partition)
        while True:
            entries = await self.core.read(topic, partition, offset, 1 << 20)
            if not entries:
                return out
            for entry in entries:
                for stored in decode_batch(entry.batch):
                    if stored.offset >= offset:
                        out.append(stored.message)
                        offset = stored.offset + 1


@asynccontextmanager
async def open_gateway(settings: dict[str, Any] | None = None, *,
                       storage_url: str = "memory://",
                       auto_create_topics: bool = True) -> AsyncIterator[Gateway]:
    core_settings = CoreSettings(retention_check_interval_ms=0,
                                 auto_create_topics=auto_create_topics)
    async with (
        open_storage(storage_url) as storage,
        open_core(storage, core_settings) as core,
        trio.open_nursery() as nursery,
    ):
        handler = MqttHandler()
        stopping = trio.Event()
        raw = {"topic_scan_interval": 0.5}
        raw.update(settings or {})
        await handler.start(HandlerContext(core, raw, nursery, [], stopping))
        try:
            yield Gateway(handler, core, nursery, stopping)
        finally:
            await handler.close()
            nursery.cancel_scope.cancel()
