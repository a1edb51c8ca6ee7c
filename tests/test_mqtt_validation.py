"""Spec violations raise the typed error carrying the reason code a broker must send."""

from __future__ import annotations

import pytest

from handlers.mqtt import (
    MQTT_5,
    MQTT_311,
    Connect,
    MalformedPacket,
    MQTTError,
    ProtocolError,
    Publish,
    Subscribe,
    UnsupportedProtocolVersion,
    decode,
)
from handlers.mqtt.primitives import encode_utf8, encode_varint


def frame(first: int, body: bytes) -> bytes:
    return bytes((first,)) + encode_varint(len(body)) + body


def s(text: str) -> bytes:
    return encode_utf8(text)


def props(raw: bytes) -> bytes:
    return encode_varint(len(raw)) + raw


def connect(flags: int, payload: bytes, *, name: str = "MQTT", level: int = 4,
            properties: bytes = b"") -> bytes:
    return frame(0x10, s(name) + bytes((level, flags)) + b"\x00\x3c" + properties + payload)


MALFORMED = 0x81
PROTOCOL = 0x82

CASES: list[tuple[str, bytes, int, type[MQTTError], int]] = [
    # fixed header flags
    ("puback flags", b"\x41\x02\x00\x01", 4, MalformedPacket, MALFORMED),
    ("pubrel flags 0", b"\x60\x02\x00\x01", 5, MalformedPacket, MALFORMED),
    ("subscribe flags 0", frame(0x80, b"\x00\x01" + s("a") + b"\x00"), 4, MalformedPacket,
     MALFORMED),
    ("unsubscribe flags 0", frame(0xA0, b"\x00\x01" + s("a")), 4, MalformedPacket, MALFORMED),
    ("pingreq flags", b"\xc1\x00", 4, MalformedPacket, MALFORMED),
    ("connect flags", frame(0x11, b""), 4, MalformedPacket, MALFORMED),
    ("reserved packet type 0", b"\x00\x00", 4, MalformedPacket, MALFORMED),
    ("auth in 3.1.1", b"\xf0\x00", 4, MalformedPacket, MALFORMED),
    # PUBLISH
    ("publish qos 3", frame(0x36, s("a") + b"\x00\x01"), 4, MalformedPacket, MALFORMED),
    ("publish dup on qos 0", frame(0x38, s("a")), 4, MalformedPacket, MALFORMED),
    ("publish packet id 0", frame(0x32, s("a") + b"\x00\x00"), 4, ProtocolError, PROTOCOL),
    ("publish topic +", frame(0x30, s("a/+")), 4, MalformedPacket, MALFORMED),
    ("publish topic #", frame(0x30, s("#")), 5, MalformedPacket, MALFORMED),
    ("publish topic NUL", frame(0x30, b"\x00\x02a\x00"), 4, MalformedPacket, MALFORMED),
    ("publish topic bad utf-8", frame(0x30, b"\x00\x02a\xff"), 4, MalformedPacket, MALFORMED),
    ("publish topic surrogate", frame(0x30, b"\x00\x03\xed\xa0\x80"), 4, MalformedPacket,
     MALFORMED),
    ("publish topic overlong", frame(0x30, b"\x00\x02\xc0\x80"), 4, MalformedPacket, MALFORMED),
    ("publish empty topic 3.1.1", frame(0x30, s("")), 4, MalformedPacket, MALFORMED),
    ("publish empty topic no alias", frame(0x30, s("") + b"\x00"), 5, ProtocolError, PROTOCOL),
    ("publish topic past end", frame(0x30, b"\x00\x09ab"), 4, MalformedPacket, MALFORMED),
    ("publish v5 without property length", frame(0x32, s("a") + b"\x00\x01"), 5,
     MalformedPacket, MALFORMED),
    # properties
    ("property not allowed in publish", frame(0x30, s("a") + props(b"\x11\x00\x00\x00\x01")),
     5, MalformedPacket, MALFORMED),
    ("unknown property", frame(0x30, s("a") + props(b"\x7f\x00")), 5, MalformedPacket,
     MALFORMED),
    ("duplicate content type",
     frame(0x30, s("a") + props(b"\x03" + s("x") + b"\x03" + s("y"))), 5, ProtocolError,
     PROTOCOL),
    ("payload format 2", frame(0x30, s("a") + props(b"\x01\x02")), 5, ProtocolError, PROTOCOL),
    ("topic alias 0", frame(0x30, s("a") + props(b"\x23\x00\x00")), 5, ProtocolError, PROTOCOL),
    ("subscription id in publish 0", frame(0x30, s("a") + props(b"\x0b\x00")), 5, ProtocolError,
     PROTOCOL),
    ("property block past end", frame(0x30, s("a") + b"\x05\x01"), 5, MalformedPacket,
     MALFORMED),
    ("property value past block", frame(0x30, s("a") + b"\x02\x02\x00\x00\x00\x00"), 5,
     MalformedPacket, MALFORMED),
    ("user property bad utf-8", frame(0x30, s("a") + props(b"\x26\x00\x01\xff\x00\x00")), 5,
     MalformedPacket, MALFORMED),
    # remaining length
    ("remaining length 5 bytes", b"\x30\xff\xff\xff\xff\x01", 4, MalformedPacket, MALFORMED),
    ("remaining length not minimal", b"\xc0\x80\x00", 4, MalformedPacket, MALFORMED),
    ("pingreq with body", b"\xc0\x01\x00", 4, MalformedPacket, MALFORMED),
    ("puback 3.1.1 too long", b"\x40\x03\x00\x01\x00", 4, MalformedPacket, MALFORMED),
    ("puback too short", b"\x40\x01\x00", 5, MalformedPacket, MALFORMED),
    ("puback reason code not allowed", b"\x40\x03\x00\x01\x04", 5, ProtocolError, PROTOCOL),
    ("puback packet id 0", b"\x40\x02\x00\x00", 4, ProtocolError, PROTOCOL),
    ("disconnect reason code not allowed", b"\xe0\x01\x05", 5, ProtocolError, PROTOCOL),
    ("disconnect 3.1.1 with body", b"\xe0\x01\x00", 4, MalformedPacket, MALFORMED),
    ("auth reason code", b"\xf0\x02\x01\x00", 5, ProtocolError, PROTOCOL),
    ("auth without property length", b"\xf0\x01\x18", 5, MalformedPacket, MALFORMED),
    # SUBSCRIBE / UNSUBSCRIBE
    ("subscribe without filters 3.1.1", b"\x82\x02\x00\x01", 4, ProtocolError, PROTOCOL),
    ("subscribe without filters 5", b"\x82\x03\x00\x01\x00", 5, ProtocolError, PROTOCOL),
    ("unsubscribe without filters", b"\xa2\x02\x00\x01", 4, ProtocolError, PROTOCOL),
    ("subscribe qos 3", frame(0x82, b"\x00\x01" + s("a") + b"\x03"), 4, MalformedPacket,
     MALFORMED),
    ("subscribe 3.1.1 reserved bits", frame(0x82, b"\x00\x01" + s("a") + b"\x04"), 4,
     MalformedPacket, MALFORMED),
    ("subscribe 5 reserved bits", frame(0x82, b"\x00\x01\x00" + s("a") + b"\x40"), 5,
     MalformedPacket, MALFORMED),
    ("subscribe retain handling 3", frame(0x82, b"\x00\x01\x00" + s("a") + b"\x30"), 5,
     ProtocolError, PROTOCOL),
    ("subscribe no local on shared", frame(0x82, b"\x00\x01\x00" + s("$share/g/a") + b"\x04"),
     5, ProtocolError, PROTOCOL),
    ("subscribe empty share name", frame(0x82, b"\x00\x01\x00" + s("$share//a") + b"\x00"), 5,
     ProtocolError, PROTOCOL),
    ("subscribe share without filter", frame(0x82, b"\x00\x01\x00" + s("$share/g") + b"\x00"),
     5, ProtocolError, PROTOCOL),
    ("subscribe two subscription ids",
     frame(0x82, b"\x00\x01" + props(b"\x0b\x01\x0b\x02") + s("a") + b"\x00"), 5,
     ProtocolError, PROTOCOL),
    ("subscribe packet id 0", frame(0x82, b"\x00\x00" + s("a") + b"\x00"), 4, ProtocolError,
     PROTOCOL),
    ("subscribe filter truncated", frame(0x82, b"\x00\x01" + s("a")), 4, MalformedPacket,
     MALFORMED),
    # CONNECT
    ("connect reserved flag", connect(0x03, s("c")), 4, MalformedPacket, MALFORMED),
    ("connect will qos 3", connect(0x1C, s("c") + s("w") + s("x")), 4, MalformedPacket,
     MALFORMED),
    ("connect will qos without will", connect(0x0A, s("c")), 4, MalformedPacket, MALFORMED),
    ("connect will retain without will", connect(0x22, s("c")), 4, MalformedPacket, MALFORMED),
    ("connect password without user 3.1.1", connect(0x42, s("c") + s("pw")), 4, ProtocolError,
     PROTOCOL),
    ("connect unknown protocol name", connect(0x02, s("c"), name="MQTX"), 4, ProtocolError,
     PROTOCOL),
    ("connect trailing bytes", connect(0x02, s("c") + b"\x00"), 4, MalformedPacket, MALFORMED),
    ("connect will topic wildcard", connect(0x06, s("c") + s("w/#") + s("x")), 4,
     MalformedPacket, MALFORMED),
    ("connect property not allowed",
     connect(0x02, s("c"), level=5, properties=props(b"\x23\x00\x01")),
     5, MalformedPacket, MALFORMED),
    ("connect duplicate session expiry",
     connect(0x02, s("c"), level=5,
             properties=props(b"\x11\x00\x00\x00\x01\x11\x00\x00\x00\x02")),
     5, ProtocolError, PROTOCOL),
    ("connect receive maximum 0", connect(0x02, s("c"), level=5, properties=props(b"\x21\x00\x00")),
     5, ProtocolError, PROTOCOL),
    ("connect maximum packet size 0",
     connect(0x02, s("c"), level=5, properties=props(b"\x27\x00\x00\x00\x00")),
     5, ProtocolError, PROTOCOL),
    ("connect request problem info 2",
     connect(0x02, s("c"), level=5, properties=props(b"\x17\x02")), 5, ProtocolError, PROTOCOL),
    ("will property not allowed",
     connect(0x06, s("c") + props(b"\x11\x00\x00\x00\x01") + s("w") + s("x"), level=5,
             properties=b"\x00"), 5, MalformedPacket, MALFORMED),
    ("connect auth data without method",
     connect(0x02, s("c"), level=5, properties=props(b"\x16\x00\x01x")), 5, ProtocolError,
     PROTOCOL),
    ("auth data without method", frame(0xF0, b"\x18" + props(b"\x16\x00\x01x")), 5,
     ProtocolError, PROTOCOL),
    # CONNACK / SUBACK / UNSUBACK (server to client)
    ("connack reserved ack flags", b"\x20\x02\x02\x00", 4, MalformedPacket, MALFORMED),
    ("connack 3.1.1 return code 6", b"\x20\x02\x00\x06", 4, ProtocolError, PROTOCOL),
    ("connack session present on refusal", b"\x20\x02\x01\x05", 4, ProtocolError, PROTOCOL),
    ("connack 5 bad reason", b"\x20\x03\x00\x01\x00", 5, ProtocolError, PROTOCOL),
    ("connack property not allowed", b"\x20\x05\x00\x00\x02\x23\x00", 5, MalformedPacket,
     MALFORMED),
    ("suback 3.1.1 bad code", b"\x90\x03\x00\x01\x03", 4, ProtocolError, PROTOCOL),
    ("suback without codes", b"\x90\x02\x00\x01", 4, ProtocolError, PROTOCOL),
    ("unsuback 5 without codes", b"\xb0\x03\x00\x01\x00", 5, ProtocolError, PROTOCOL),
    ("unsuback 5 bad code", b"\xb0\x04\x00\x01\x00\x01", 5, ProtocolError, PROTOCOL),
]


@pytest.mark.parametrize(
    ("data", "version", "error", "code"),
    [case[1:] for case in CASES],
    ids=[case[0] for case in CASES],
)
def test_violation(data: bytes, version: int, error: type[MQTTError], code: int) -> None:
    with pytest.raises(error) as info:
        decode(data, version)
    assert type(info.value) is error
    assert info.value.reason_code == code


@pytest.mark.parametrize(("name", "level"), [("MQIsdp", 3), ("MQTT", 3), ("MQTT", 6)])
def test_unsupported_protocol_version(name: str, level: int) -> None:
    with pytest.raises(UnsupportedProtocolVersion) as info:
        decode(connect(0x02, s("c"), name=name, level=level), MQTT_311)
    assert info.value.reason_code == 0x84
    assert info.value.return_code_v311 == 0x01
    assert info.value.protocol_level == level


def test_password_without_username_is_fine_in_v5() -> None:
    packet, _ = decode(connect(0x42, s("c") + s("pw"), level=5, properties=b"\x00"), MQTT_5)
    assert isinstance(packet, Connect)
    assert packet.password == b"pw"
    assert packet.username is None


def test_empty_topic_with_alias_is_fine_in_v5() -> None:
    packet, _ = decode(frame(0x30, s("") + props(b"\x23\x00\x07") + b"hi"), MQTT_5)
    assert isinstance(packet, Publish)
    assert packet.topic == "" and packet.properties.topic_alias == 7
    assert bytes(packet.payload) == b"hi"


def test_repeatable_properties_keep_order_and_repeats() -> None:
    users = b"".join(b"\x26" + s(k) + s(v) for k, v in [("k", "1"), ("a", "2"), ("k", "3")])
    packet, _ = decode(frame(0x30, s("t") + props(b"\x0b\x05" + users + b"\x0b\x01")), MQTT_5)
    assert isinstance(packet, Publish)
    assert packet.properties.user_properties == (("k", "1"), ("a", "2"), ("k", "3"))
    assert packet.properties.subscription_identifiers == (5, 1)


@pytest.mark.parametrize(
    "topic_filter", ["#", "+", "a/#", "+/+/#", "a//b", "/", "a/+/c", "$SYS/#", "sport/+"]
)
def test_valid_topic_filters(topic_filter: str) -> None:
    packet, _ = decode(frame(0x82, b"\x00\x01" + s(topic_filter) + b"\x01"), MQTT_311)
    assert isinstance(packet, Subscribe)
    assert packet.subscriptions[0].topic_filter == topic_filter


@pytest.mark.parametrize("topic_filter", ["", "a/#/b", "a+", "#a", "a/b#", "+a/b", "a/++"])
def test_invalid_topic_filters(topic_filter: str) -> None:
    with pytest.raises(MalformedPacket):
        decode(frame(0x82, b"\x00\x01" + s(topic_filter) + b"\x01"), MQTT_311)


def test_shared_subscription_is_a_plain_filter_in_311() -> None:
    packet, _ = decode(frame(0x82, b"\x00\x01" + s("$share/g") + b"\x00"), MQTT_311)
    assert isinstance(packet, Subscribe)
