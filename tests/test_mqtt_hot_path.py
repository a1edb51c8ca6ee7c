"""The per-message shortcuts (handlers.mqtt.hot_path, the reader's fast paths) must give exactly
what the general codec gives, and leave everything unusual to it."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from test_mqtt_session_harness import Gateway, WireClient, open_gateway

from core import headers as h
from core.records import Message
from handlers.mqtt import (
    MQTT_5,
    MQTT_311,
    Connect,
    MalformedPacket,
    PacketReader,
    Properties,
    ProtocolError,
    PubAck,
    Publish,
    Role,
    SubAck,
    Subscribe,
    Subscription,
    UnsubAck,
    Unsubscribe,
)
from handlers.mqtt.decoder import decode
from handlers.mqtt.encoder import encode
from handlers.mqtt.hot_path import (
    encode_plain_publish,
    new_message,
    new_puback,
    new_publish,
    plain_headers,
    puback_bytes,
    topic_field,
)
from handlers.mqtt.mapping import message_to_publish, publish_to_message

LEVELS = (MQTT_311, MQTT_5)


def server_reader(level: int) -> PacketReader:
    return PacketReader(Role.SERVER, protocol_version=level)


@pytest.mark.parametrize("level", LEVELS)
@pytest.mark.parametrize("qos", (0, 1, 2))
@pytest.mark.parametrize("retain", (False, True))
@pytest.mark.parametrize("size", (0, 5, 100, 200, 20_000))
def test_plain_publish_bytes_equal_the_general_encoder(
    level: int, qos: int, retain: bool, size: int
) -> None:
    payload = bytes(range(256)) * (size // 256) + b"p" * (size % 256)
    topic = "séance/a/b"
    core_topic, message = publish_to_message(Publish(topic, payload, qos, retain), 1_000)
    plain = plain_headers(message.headers)
    assert plain == (topic.encode(), qos, retain)
    for granted in (0, 1, 2):
        for dup in (False, True):
            out_qos = min(granted, qos)
            pid = 513 if out_qos else None
            general = message_to_publish(message, core_topic, granted_qos=granted,
                                         protocol_level=level, retain_as_published=True,
                                         packet_id=pid)
            if dup and out_qos:
                general = Publish(general.topic, general.payload, general.qos, general.retain,
                                  True, general.packet_id, general.properties)
            fast = encode_plain_publish(topic_field(topic), payload, out_qos, retain,
                                        dup and bool(out_qos), pid, level == MQTT_5)
            assert fast == encode(general, level)


def test_plain_headers_only_for_what_a_plain_publish_stores() -> None:
    topic, qos = (h.MQTT_TOPIC, b"a/b"), (h.MQTT_QOS, b"1")
    assert plain_headers([topic, qos]) == (b"a/b", 1, False)
    assert plain_headers([topic, qos, (h.MQTT_RETAIN, b"1")]) == (b"a/b", 1, True)
    for other in (
        [],
        [topic],
        [qos, topic],
        [topic, (h.MQTT_QOS, b"3")],
        [topic, (h.MQTT_QOS, b"01")],
        [topic, qos, (h.MQTT_RETAIN, b"0")],
        [topic, qos, (h.EXPIRY_MS, b"10")],
        [topic, qos, (h.MQTT_RETAIN, b"1"), ("user", b"v")],
        [("user", b"v"), qos],
    ):
        assert plain_headers(other) is None, other
    with_props = Publish("a/b", b"x", 1, properties=Properties(content_type="text/plain"))
    assert plain_headers(publish_to_message(with_props, 0)[1].headers) is None


def test_fast_constructors_build_equal_objects() -> None:
    props = Properties(content_type="t")
    assert new_publish("t/a", b"x", 1, True, False, 7, props) == Publish(
        "t/a", b"x", 1, True, False, 7, props)
    assert new_puback(9) == PubAck(9)
    assert new_message(b"k", b"v", [("a", b"b")], 5) == Message(b"k", b"v", [("a", b"b")], 5)
    assert puback_bytes(0x1234) == encode(PubAck(0x1234), MQTT_5) == encode(PubAck(0x1234),
                                                                            MQTT_311)


def _general(data: bytes, level: int) -> Publish:
    packet, used = decode(data, level)
    assert used == len(data) and isinstance(packet, Publish)
    return packet


@pytest.mark.parametrize("level", LEVELS)
def test_reader_fast_publish_matches_the_decoder(level: int) -> None:
    packets = [
        Publish("a/b", b"", 0),
        Publish("a/b", b"x" * 300, 1, retain=True, packet_id=1),
        Publish("$SYS/x", b"y", 2, dup=True, packet_id=65535),
        Publish("ü/€", b"\x00\x01", 1, packet_id=2),
    ]
    data = b"".join(encode(p, level) for p in packets)
    reader = server_reader(level)
    got: list[Publish] = []
    for chunk in [data[i:i + 1] for i in range(len(data))] + [data]:  # bytewise, then whole
        reader.receive_data(chunk)
        while (packet := reader.next_packet()) is not None:
            assert isinstance(packet, Publish)
            got.append(packet)
    expected = [_general(encode(p, level), level) for p in packets] * 2

    def fields(p: Publish) -> tuple[object, ...]:
        return (p.topic, bytes(p.payload), p.qos, p.retain, p.dup, p.packet_id, p.properties)

    assert [fields(p) for p in got] == [fields(p) for p in expected]
    assert reader.buffered == 0


def test_reader_publish_with_properties_still_decodes_them() -> None:
    packet = Publish("a", b"x", 1, packet_id=3, properties=Properties(content_type="c"))
    reader = server_reader(MQTT_5)
    reader.receive_data(encode(packet, MQTT_5))
    got = reader.next_packet()
    assert isinstance(got, Publish) and got.properties.content_type == "c"


@pytest.mark.parametrize("level", LEVELS)
@pytest.mark.parametrize(("raw", "error"), [
    (b"\x32\x05\x00\x01a\x00\x00", ProtocolError),  # packet id 0
    (b"\x36\x05\x00\x01a\x00\x01", MalformedPacket),  # QoS 3
    (b"\x38\x03\x00\x01a", MalformedPacket),  # DUP on QoS 0
    (b"\x30\x03\x00\x01+", MalformedPacket),  # wildcard in the topic name
    (b"\x30\x04\x00\x02\xc3\x28", MalformedPacket),  # ill-formed UTF-8
    (b"\x30\x02\x00\x05", MalformedPacket),  # topic longer than the packet
])
def test_reader_bad_publish_gets_the_decoders_error(
    level: int, raw: bytes, error: type[Exception]
) -> None:
    if level == MQTT_5 and raw[1] >= 3:  # the property length byte
        raw = bytes((raw[0], raw[1] + 1)) + raw[2:] + b"\x00"
    reader = server_reader(level)
    reader.receive_data(raw)
    with pytest.raises(error):
        reader.next_packet()


def test_take_pubacks_reads_a_run_and_leaves_the_rest() -> None:
    reader = server_reader(MQTT_5)
    other = encode(PubAck(7, 0x10), MQTT_5)  # with a reason code: not the plain form
    publish = encode(Publish("t", b"x", 1, packet_id=4), MQTT_5)
    reader.receive_data(b"".join(puback_bytes(i) for i in (1, 2, 258)) + other + publish
                        + puback_bytes(5) + b"\x40\x02\x00")
    ids: list[int] = []
    assert reader.take_pubacks(ids) == 3
    assert ids == [1, 2, 258]
    assert reader.take_pubacks(ids) == 0
    assert reader.next_packet() == PubAck(7, 0x10)
    assert isinstance(reader.next_packet(), Publish)
    assert reader.take_pubacks(ids) == 1 and ids[-1] == 5
    assert reader.take_pubacks(ids) == 0  # a partial PUBACK waits
    assert reader.next_packet() is None
    reader.receive_data(b"\x06")
    assert reader.take_pubacks(ids) == 1 and ids[-1] == 6 and reader.buffered == 0


def test_take_pubacks_leaves_packet_id_zero_to_the_decoder() -> None:
    reader = server_reader(MQTT_311)
    reader.receive_data(puback_bytes(1) + b"\x40\x02\x00\x00")
    ids: list[int] = []
    assert reader.take_pubacks(ids) == 1
    with pytest.raises(ProtocolError):
        reader.next_packet()


def test_take_pubacks_waits_for_connect() -> None:
    reader = PacketReader(Role.SERVER)
    reader.receive_data(puback_bytes(1))
    assert reader.take_pubacks([]) == 0
    with pytest.raises(ProtocolError):
        reader.next_packet()  # the first packet must be CONNECT


# ---------------------------------------------------------------- delivery through the fast path


@pytest.fixture
async def gw() -> AsyncIterator[Gateway]:
    async with open_gateway({"allow_anonymous": True}) as g:
        yield g


async def _publish(pub: WireClient, topic: str, payload: bytes, pid: int) -> None:
    await pub.send(Publish(topic, payload, 1, packet_id=pid))
    assert await pub.recv() == PubAck(pid)


@pytest.mark.parametrize("level", LEVELS)
async def test_route_cache_follows_subscription_changes(gw: Gateway, level: int) -> None:
    sub, _ = await gw.connect(Connect("rc-sub", level))
    pub, _ = await gw.connect(Connect("rc-pub", level))
    await sub.send(Subscribe(1, (Subscription("rc/#", 0),)))
    assert isinstance(await sub.recv(), SubAck)
    await _publish(pub, "rc/a", b"1", 1)
    assert await sub.recv() == Publish("rc/a", b"1", 0)
    await sub.send(Subscribe(2, (Subscription("rc/a", 1),)))  # overlapping, higher QoS
    assert isinstance(await sub.recv(), SubAck)
    await _publish(pub, "rc/a", b"2", 2)
    got = await sub.recv()
    assert isinstance(got, Publish) and (got.topic, got.payload, got.qos) == ("rc/a", b"2", 1)
    assert got.packet_id is not None
    await sub.send(PubAck(got.packet_id))
    await sub.send(Unsubscribe(3, ("rc/#", "rc/a")))
    assert isinstance(await sub.recv(), UnsubAck)
    await _publish(pub, "rc/a", b"3", 3)
    await sub.nothing(0.3)


async def test_subscription_identifier_takes_the_general_path(gw: Gateway) -> None:
    sub, _ = await gw.connect(Connect("si-sub", MQTT_5))
    pub, _ = await gw.connect(Connect("si-pub", MQTT_5))
    props = Properties(subscription_identifiers=(42,))
    await sub.send(Subscribe(1, (Subscription("si/#", 1),), props))
    assert isinstance(await sub.recv(), SubAck)
    await _publish(pub, "si/x", b"p", 1)
    got = await sub.recv()
    assert isinstance(got, Publish) and got.properties.subscription_identifiers == (42,)
    assert got.packet_id is not None
    await sub.send(PubAck(got.packet_id))


async def test_retain_as_published_on_the_fast_path(gw: Gateway) -> None:
    sub, _ = await gw.connect(Connect("rap-sub", MQTT_5))
    pub, _ = await gw.connect(Connect("rap-pub", MQTT_5))
    await sub.send(Subscribe(1, (Subscription("rap/#", 0, retain_as_published=True),
                                 Subscription("plain/#", 0))))
    assert isinstance(await sub.recv(), SubAck)
    for topic in ("rap/x", "plain/x"):
        await pub.send(Publish(topic, b"r", 1, retain=True, packet_id=1))
        assert await pub.recv() == PubAck(1)
    assert await sub.recv() == Publish("rap/x", b"r", 0, retain=True)
    assert await sub.recv() == Publish("plain/x", b"r", 0, retain=False)
