"""Encoder: exact bytes, shortest forms, symmetric round trips, and refusals (EncodeError)."""

from __future__ import annotations

import pytest

from handlers.mqtt import (
    MQTT_5,
    MQTT_311,
    Auth,
    ConnAck,
    Connect,
    Disconnect,
    EncodeError,
    PingReq,
    PingResp,
    Properties,
    PubAck,
    PubComp,
    Publish,
    PubRec,
    PubRel,
    SubAck,
    Subscribe,
    Subscription,
    UnsubAck,
    Unsubscribe,
    Will,
    decode,
    encode,
)
from handlers.mqtt.packets import Packet

EXACT: list[tuple[Packet, int, bytes]] = [
    (Publish("a", b"x"), MQTT_311, b"\x30\x04\x00\x01ax"),
    (Publish("a", b"x"), MQTT_5, b"\x30\x05\x00\x01a\x00x"),
    (Publish("a", b"", 1, True, True, 0x0102), MQTT_311, b"\x3b\x05\x00\x01a\x01\x02"),
    (Publish("a", b"", 2, packet_id=1), MQTT_311, b"\x34\x05\x00\x01a\x00\x01"),
    (PubAck(5), MQTT_5, b"\x40\x02\x00\x05"),
    (PubAck(5, 0x10), MQTT_5, b"\x40\x03\x00\x05\x10"),
    (PubRel(5), MQTT_311, b"\x62\x02\x00\x05"),
    (PubComp(5, 0x92), MQTT_5, b"\x70\x03\x00\x05\x92"),
    (Disconnect(), MQTT_5, b"\xe0\x00"),
    (Disconnect(0x8E), MQTT_5, b"\xe0\x01\x8e"),
    (Disconnect(), MQTT_311, b"\xe0\x00"),
    (Auth(), MQTT_5, b"\xf0\x00"),
    (Auth(0x18), MQTT_5, b"\xf0\x02\x18\x00"),
    (PingReq(), MQTT_311, b"\xc0\x00"),
    (PingResp(), MQTT_5, b"\xd0\x00"),
    (ConnAck(True), MQTT_311, b"\x20\x02\x01\x00"),
    (ConnAck(False, 0x84), MQTT_5, b"\x20\x03\x00\x84\x00"),
    (UnsubAck(9), MQTT_311, b"\xb0\x02\x00\x09"),
    (SubAck(9, (0, 0x80)), MQTT_311, b"\x90\x04\x00\x09\x00\x80"),
    (Connect("", MQTT_311, clean_start=True, keep_alive=60), MQTT_311,
     b"\x10\x0c\x00\x04MQTT\x04\x02\x00\x3c\x00\x00"),
    (Publish("t", b"p" * 200), MQTT_311, b"\x30\xcb\x01\x00\x01t" + b"p" * 200),
]


@pytest.mark.parametrize(("packet", "version", "data"), EXACT, ids=repr)
def test_exact_bytes(packet: Packet, version: int, data: bytes) -> None:
    assert encode(packet, version) == data
    assert decode(data, version) == (packet, len(data))


BOTH_VERSIONS: list[Packet] = [
    Connect("c", clean_start=False, keep_alive=65535, username="ü", password=b"\x00pw",
            will=Will("w/t", b"\x00\x01", 2, True)),
    ConnAck(True, 0),
    Publish("a/b/c", b"x" * 70000, 1, False, True, 65535),
    PubAck(1), PubRec(2), PubRel(3), PubComp(4),
    Subscribe(7, (Subscription("a/+/#", 2), Subscription("$SYS/x", 0))),
    SubAck(7, (2, 0x80)),
    Unsubscribe(8, ("a/+/#", "b")),
    PingReq(), PingResp(), Disconnect(),
]


@pytest.mark.parametrize("version", [MQTT_311, MQTT_5])
@pytest.mark.parametrize("packet", BOTH_VERSIONS, ids=lambda p: type(p).__name__)
def test_round_trip_both_versions(packet: Packet, version: int) -> None:
    if isinstance(packet, Connect):
        packet = Connect(packet.client_id, version, packet.clean_start, packet.keep_alive,
                         packet.username, packet.password, packet.will)
    data = encode(packet, version)
    assert decode(data, version) == (packet, len(data))


def test_properties_written_in_identifier_order_with_repeats() -> None:
    props = Properties(user_properties=(("b", "1"), ("a", "2"), ("b", "3")), content_type="x",
                       payload_format_indicator=1)
    data = encode(Publish("t", b"", properties=props), MQTT_5)
    body = data[2 + 3:]  # fixed header, topic
    assert body[1:3] == b"\x01\x01" and body[3] == 0x03 and body[7] == 0x26
    assert decode(data, MQTT_5)[0].properties == props  # type: ignore[union-attr]


REFUSED: list[tuple[Packet, int]] = [
    (Publish("t", qos=0, packet_id=1), MQTT_311),
    (Publish("t", qos=0, dup=True), MQTT_311),
    (Publish("t", qos=1), MQTT_5),
    (Publish("t", qos=1, packet_id=0), MQTT_5),
    (Publish("t", qos=3, packet_id=1), MQTT_5),
    (Publish("a/+", b""), MQTT_311),
    (Publish("", b""), MQTT_311),
    (Publish("", b""), MQTT_5),
    (Publish("t", properties=Properties(content_type="x")), MQTT_311),
    (Publish("t", properties=Properties(session_expiry_interval=1)), MQTT_5),
    (Publish("t", properties=Properties(topic_alias=0)), MQTT_5),
    (PubAck(1, 0x10), MQTT_311),
    (PubAck(1, 0x92), MQTT_5),
    (PubAck(0), MQTT_5),
    (Subscribe(1, ()), MQTT_5),
    (Subscribe(1, (Subscription("a/#/b"),)), MQTT_5),
    (Subscribe(1, (Subscription("a", no_local=True),)), MQTT_311),
    (Subscribe(1, (Subscription("$share/g/a", no_local=True),)), MQTT_5),
    (Subscribe(1, (Subscription("a", retain_handling=3),)), MQTT_5),
    (Subscribe(1, (Subscription("a"),), Properties(subscription_identifiers=(1, 2))), MQTT_5),
    (Unsubscribe(1, ()), MQTT_311),
    (SubAck(1, ()), MQTT_5),
    (SubAck(1, (0x8F,)), MQTT_311),
    (UnsubAck(1), MQTT_5),
    (UnsubAck(1, (0,)), MQTT_311),
    (Auth(), MQTT_311),
    (Disconnect(0x8E), MQTT_311),
    (ConnAck(False, 0x84), MQTT_311),
    (ConnAck(True, 0x87), MQTT_5),
    (Connect("c", MQTT_311, password=b"p"), MQTT_311),
    (Connect("c", MQTT_5), MQTT_311),
    (Connect("c\x00", MQTT_5), MQTT_5),
    (Connect("c", MQTT_5, will=Will("w/#")), MQTT_5),
    (Connect("c", MQTT_5, will=Will("w", properties=Properties(topic_alias=1))), MQTT_5),
    (PingReq(), 3),
]


@pytest.mark.parametrize(("packet", "version"), REFUSED, ids=repr)
def test_refused(packet: Packet, version: int) -> None:
    with pytest.raises(EncodeError):
        encode(packet, version)
