"""Inbound QoS 2 is exactly once across a gateway crash: PUBREC goes out only once the message
*and* the stored session's record of its packet id are durable; PUBCOMP only once the stored
session has forgotten the id again."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import trio
import trio.testing
from conftest import ServerFactory
from test_mqtt_session_harness import Gateway, open_gateway

from core.api import open_core
from core.config import CoreSettings
from core.records import decode_batch
from handlers.mqtt import (
    MQTT_5,
    ConnAck,
    Connect,
    Packet,
    PacketReader,
    Properties,
    PubAck,
    PubComp,
    Publish,
    PubRec,
    PubRel,
    ReasonCode,
    Role,
    encode,
)
from handlers.mqtt.sessions import SESSIONS_PREFIX
from storage import open_storage
from storage.api import MetadataStore

KEEP = Properties(session_expiry_interval=3600)


class GatedSessionWrites:
    """Wraps a metadata store: writes of MQTT sessions wait until the test opens the gate."""

    def __init__(self, inner: MetadataStore) -> None:
        self.inner = inner
        self.gate = trio.Event()
        self.gate.set()
        self.session_puts = 0
        self.blocked = trio.Event()  # set once a session write waits at the closed gate

    def close_gate(self) -> None:
        self.gate = trio.Event()
        self.blocked = trio.Event()

    async def put(self, key: str, value: bytes, expected_version: int | None = None) -> int:
        if key.startswith(SESSIONS_PREFIX):
            self.session_puts += 1
            if not self.gate.is_set():
                self.blocked.set()
                await self.gate.wait()
        return await self.inner.put(key, value, expected_version)

    def __getattr__(self, name: str) -> object:
        return getattr(self.inner, name)


@pytest.fixture
async def gw() -> AsyncIterator[Gateway]:
    async with open_gateway({"allow_anonymous": True}) as g:
        yield g


def gate(gw: Gateway, monkeypatch: pytest.MonkeyPatch) -> GatedSessionWrites:
    assert gw.handler.context is not None
    registry = gw.handler.context.sessions
    gated = GatedSessionWrites(registry._metadata)
    monkeypatch.setattr(registry, "_metadata", gated)
    return gated


async def until_waiting(gated: GatedSessionWrites) -> None:
    with trio.fail_after(5):
        await gated.blocked.wait()


async def test_pubrec_waits_for_the_session_save(
    gw: Gateway, monkeypatch: pytest.MonkeyPatch, autojump_clock: trio.testing.MockClock
) -> None:
    gated = gate(gw, monkeypatch)
    client, _ = await gw.connect(Connect("q2-order", MQTT_5, properties=KEEP))
    gated.session_puts = 0  # the CONNECT's
    gated.close_gate()
    # one burst: a QoS 1 PUBLISH, two QoS 2 ones, another QoS 1 one
    await client.send_raw(
        encode(Publish("q2/a", b"1", qos=1, packet_id=1), MQTT_5)
        + encode(Publish("q2/a", b"2", qos=2, packet_id=2), MQTT_5)
        + encode(Publish("q2/a", b"3", qos=2, packet_id=3), MQTT_5)
        + encode(Publish("q2/a", b"4", qos=1, packet_id=4), MQTT_5))
    # the PUBACK before the first QoS 2 PUBLISH does not wait for the save
    assert await client.recv() == PubAck(1)
    await until_waiting(gated)
    # everything is stored, yet no PUBREC while the session write is under way
    assert [m.value for m in await gw.messages("q2")] == [b"1", b"2", b"3", b"4"]
    await client.nothing(1.0)
    assert gated.session_puts == 1  # one save for the burst
    gated.gate.set()
    assert [await client.recv() for _ in range(3)] == [PubRec(2), PubRec(3), PubAck(4)]
    state = gw.handler.context.sessions.state("q2-order") if gw.handler.context else None
    assert state is not None and state.inbound_qos2 == {2, 3}
    # PUBCOMP waits until the session is stored without the released ids
    gated.close_gate()
    await client.send_raw(encode(PubRel(2), MQTT_5) + encode(PubRel(3), MQTT_5))
    await until_waiting(gated)
    await client.nothing(1.0)
    gated.gate.set()
    assert [await client.recv() for _ in range(2)] == [PubComp(2), PubComp(3)]
    assert gated.session_puts == 2
    # a re-sent PUBLISH with a known id is answered without storing or saving
    await client.send(Publish("q2/a", b"5", qos=2, packet_id=9))
    assert await client.recv() == PubRec(9)
    await client.send(Publish("q2/a", b"5", qos=2, packet_id=9, dup=True))
    assert await client.recv() == PubRec(9)
    assert gated.session_puts == 3
    assert [m.value for m in await gw.messages("q2")][-1:] == [b"5"]
    assert len(await gw.messages("q2")) == 5
    await client.aclose()


async def test_a_session_that_is_not_kept_never_waits_for_a_save(
    gw: Gateway, monkeypatch: pytest.MonkeyPatch, autojump_clock: trio.testing.MockClock
) -> None:
    gated = gate(gw, monkeypatch)
    gated.close_gate()  # a save would hang the PUBREC below
    client, _ = await gw.connect(Connect("q2-clean", MQTT_5))  # expiry 0: not persisted
    await client.send(Publish("q2/c", b"x", qos=2, packet_id=5))
    assert await client.recv() == PubRec(5)
    await client.send(PubRel(5))
    assert await client.recv() == PubComp(5)
    assert gated.session_puts == 0
    await client.aclose()


# ---------------------------------------------------------------- a real crash


class RawClient:
    """A codec-level MQTT 5 client over TCP (so the test controls DUP and packet ids)."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.reader = PacketReader(Role.CLIENT, protocol_version=MQTT_5)

    @classmethod
    async def connect(cls, port: int, connect: Connect) -> tuple[RawClient, ConnAck]:
        client = cls(await trio.open_tcp_stream("127.0.0.1", port))
        await client.send(connect)
        ack = await client.recv()
        assert isinstance(ack, ConnAck) and ack.reason_code == 0, ack
        return client, ack

    async def send(self, packet: Packet) -> None:
        await self.stream.send_all(encode(packet, MQTT_5))

    async def recv(self) -> Packet:
        with trio.fail_after(10):
            while True:
                packet = self.reader.next_packet()
                if packet is not None:
                    return packet
                data = await self.stream.receive_some(65536)
                assert data, "server closed the connection"
                self.reader.receive_data(data)


async def stored_values(data_dir: str, topic: str) -> list[bytes]:
    out: list[bytes] = []
    async with (
        open_storage(data_dir) as storage,
        open_core(storage, CoreSettings(retention_check_interval_ms=0)) as core,
    ):
        offset = await core.earliest_offset(topic, 0)
        while entries := await core.read(topic, 0, offset, 1 << 20):
            for entry in entries:
                for stored in decode_batch(entry.batch):
                    if stored.offset >= offset:
                        out.append(bytes(stored.message.value or b""))
                        offset = stored.offset + 1
    return out


async def test_publish_resent_after_a_crash_right_after_pubrec_is_stored_once(
    polystream_server: ServerFactory,
) -> None:
    first = await polystream_server.start_async("mqtt", log_level="info")
    client, _ = await RawClient.connect(
        first.port("mqtt"),
        Connect("q2-crash", MQTT_5, properties=KEEP, username="guest", password=b"guest"))
    await client.send(Publish("crash/x", b"once", qos=2, packet_id=7))
    assert await client.recv() == PubRec(7)
    first.kill()  # SIGKILL: no shutdown, no flush
    await client.stream.aclose()
    second = await polystream_server.start_async("mqtt", data_dir=first.data_dir,
                                                 log_level="info")
    # the client acts as if the PUBREC was lost: it sends the PUBLISH again
    client, ack = await RawClient.connect(
        second.port("mqtt"), Connect("q2-crash", MQTT_5, clean_start=False, properties=KEEP,
                                     username="guest", password=b"guest"))
    assert ack.session_present
    await client.send(Publish("crash/x", b"once", qos=2, packet_id=7, dup=True))
    assert await client.recv() == PubRec(7)
    await client.send(PubRel(7))
    assert await client.recv() == PubComp(7, ReasonCode.SUCCESS)  # the id was known
    await client.stream.aclose()
    await trio.to_thread.run_sync(second.terminate)
    assert await stored_values(str(first.data_dir), "crash") == [b"once"]
