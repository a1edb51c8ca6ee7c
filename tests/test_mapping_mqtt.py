"""MQTT ↔ message mapping and MQTT topic ↔ core topic mapping: exact examples."""

from __future__ import annotations

import pytest

from core import headers as h
from core.names import TopicName
from core.records import Message
from handlers.mqtt import MQTT_5, MQTT_311, Properties, Publish, decode, encode
from handlers.mqtt.mapping import (
    delivery_qos,
    message_to_publish,
    publish_to_message,
    to_user_property,
)
from handlers.mqtt.topic_mapping import (
    ALL_TOPICS,
    NO_TOPICS,
    Concrete,
    TopicNotMappable,
    escape_level,
    filter_core_topics,
    mqtt_topic_to_core,
    record_to_mqtt_topic,
    topic_matches,
    unescape_level,
)


def over_the_wire(packet: Publish, version: int = MQTT_5) -> Publish:
    decoded, _ = decode(encode(packet, version), version)
    assert isinstance(decoded, Publish)
    return decoded


# --- publish -> message -------------------------------------------------------------------------


def test_plain_publish_headers() -> None:
    core, msg = publish_to_message(over_the_wire(Publish("orders/eu/1", b"hi")), 77)
    assert core == "orders"
    assert msg == Message(
        b"orders/eu/1", b"hi", [(h.MQTT_TOPIC, b"orders/eu/1"), (h.MQTT_QOS, b"0")], 77
    )


def test_every_v5_property_has_its_header() -> None:
    props = Properties(
        payload_format_indicator=1,
        message_expiry_interval=30,
        content_type="text/plain",
        response_topic="replies/1",
        correlation_data=b"\x00\xffid",
        user_properties=(("k", "v"), ("k", "w"), ("\u00e9", "")),
    )
    packet = over_the_wire(Publish("a/b", b"x", 2, True, False, 9, props))
    core, msg = publish_to_message(packet, 5)
    assert core == "a"
    assert msg.headers == [
        (h.MQTT_TOPIC, b"a/b"),
        (h.MQTT_QOS, b"2"),
        (h.MQTT_RETAIN, b"1"),
        (h.CONTENT_TYPE, b"text/plain"),
        (h.CORRELATION_ID, b"\x00\xffid"),
        (h.REPLY_TO, b"replies/1"),
        (h.EXPIRY_MS, b"30000"),
        (h.MQTT_PAYLOAD_FORMAT, b"1"),
        ("k", b"v"),
        ("k", b"w"),
        ("\u00e9", b""),
    ]
    out = message_to_publish(msg, core, granted_qos=2, retain_as_published=True, packet_id=3)
    assert out == Publish("a/b", b"x", 2, True, False, 3, props)
    assert over_the_wire(out) == out


def test_mqtt_311_records_topic_qos_retain_only() -> None:
    packet = over_the_wire(Publish("t", b"", 1, False, False, 1), MQTT_311)
    _, msg = publish_to_message(packet, 0)
    assert msg.headers == [(h.MQTT_TOPIC, b"t"), (h.MQTT_QOS, b"1")]
    assert msg.value == b""


def test_dollar_topics_are_not_stored() -> None:
    with pytest.raises(TopicNotMappable):
        publish_to_message(Publish("$SYS/broker/load"), 0)


def test_escaped_user_properties_are_decoded() -> None:
    props = Properties(user_properties=(
        ("ps.b64:bin", "AP8="),              # value b"\x00\xff"
        ("ps.b64n:bnVsAGw=", "eA=="),         # name "nul\x00l", value b"x"
        ("ps.b64:bad", "not base64!"),       # not canonical base64: verbatim
        ("ps.b64:pad", "QR=="),              # non-canonical padding bits: verbatim
    ))
    _, msg = publish_to_message(Publish("t", properties=props), 0)
    assert msg.headers[2:] == [
        ("bin", b"\x00\xff"),
        ("nul\x00l", b"x"),
        ("ps.b64:bad", b"not base64!"),
        ("ps.b64:pad", b"QR=="),
    ]


# --- message -> delivery ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "value", "prop"),
    [
        ("k", b"v", ("k", "v")),
        ("k", b"\xff", ("ps.b64:k", "/w==")),
        ("k", b"a\x00b", ("ps.b64:k", "YQBi")),
        ("n\x00", b"v", ("ps.b64n:bgA=", "dg==")),
        ("ps.b64:x", b"v", ("ps.b64n:cHMuYjY0Ong=", "dg==")),
        ("k", b"v" * 0x10000, None),
    ],
)
def test_user_property_escaping(
    name: str, value: bytes, prop: tuple[str, str] | None
) -> None:
    assert to_user_property(name, value) == prop


def test_kafka_message_to_mqtt_5() -> None:
    msg = Message(b"eu/1", b"payload", [("trace", b"abc"), ("bin", b"\x01\xfe")], 0)
    out = message_to_publish(msg, "orders", granted_qos=2, packet_id=1)
    assert out == Publish(
        "orders/eu/1", b"payload", 1, False, False, 1,
        Properties(user_properties=(("trace", "abc"), ("ps.b64:bin", "Af4="))),
    )
    assert over_the_wire(out) == out


def test_delivery_to_311_drops_properties() -> None:
    msg = Message(None, b"x", [(h.CONTENT_TYPE, b"a/b"), ("k", b"v")], 0)
    out = message_to_publish(msg, "orders", granted_qos=0, protocol_level=MQTT_311)
    assert out == Publish("orders", b"x", 0)
    assert over_the_wire(out, MQTT_311) == out


@pytest.mark.parametrize(
    ("qos_header", "granted", "expected"),
    [(None, 2, 1), (None, 0, 0), (b"0", 2, 0), (b"2", 2, 2), (b"2", 1, 1), (b"7", 2, 1)],
)
def test_delivery_qos(qos_header: bytes | None, granted: int, expected: int) -> None:
    hdrs = [] if qos_header is None else [(h.MQTT_QOS, qos_header)]
    msg = Message(None, None, hdrs, 0)
    out = message_to_publish(msg, "t", granted_qos=granted, packet_id=1)
    assert out.qos == expected == delivery_qos(msg, granted)
    assert out.packet_id == (1 if expected else None)
    over_the_wire(out)


def test_retain_only_when_retain_as_published() -> None:
    msg = Message(None, None, [(h.MQTT_RETAIN, b"1")], 0)
    assert not message_to_publish(msg, "t", granted_qos=0).retain
    assert message_to_publish(msg, "t", granted_qos=0, retain_as_published=True).retain


def test_amqp_origin_properties_map_to_mqtt_5() -> None:
    msg = Message(b"rk", b"", [
        (h.CONTENT_TYPE, b"application/json"),
        (h.CORRELATION_ID, b"c1"),
        (h.REPLY_TO, b"amq.gen-1"),
        (h.EXPIRY_MS, b"1500"),
        (h.AMQP_PRIORITY, b"5"),
    ], 0)
    out = message_to_publish(msg, "orders", granted_qos=0)
    assert out.topic == "orders/rk"
    assert out.properties == Properties(
        message_expiry_interval=2,
        content_type="application/json",
        response_topic="amq.gen-1",
        correlation_data=b"c1",
        user_properties=((h.AMQP_PRIORITY, "5"),),
    )


def test_expiry_counts_waiting_time_when_asked() -> None:
    msg = Message(None, None, [(h.EXPIRY_MS, b"10000")], 1_000)
    out = message_to_publish(msg, "t", granted_qos=0, now_ms=4_500)
    assert out.properties.message_expiry_interval == 7
    assert not h.is_expired(msg.headers, msg.timestamp_ms, 10_999)
    assert h.is_expired(msg.headers, msg.timestamp_ms, 11_000)


def test_gateway_headers_that_do_not_fit_become_user_properties() -> None:
    msg = Message(None, None, [
        (h.REPLY_TO, b"wild/#"),
        (h.EXPIRY_MS, b"soon"),
        (h.MQTT_PAYLOAD_FORMAT, b"2"),
        (h.CONTENT_TYPE, b"\xff"),
    ], 0)
    out = message_to_publish(msg, "t", granted_qos=0)
    assert out.properties == Properties(user_properties=(
        (h.REPLY_TO, "wild/#"),
        (h.EXPIRY_MS, "soon"),
        (h.MQTT_PAYLOAD_FORMAT, "2"),
        ("ps.b64:" + h.CONTENT_TYPE, "/w=="),
    ))


def test_subscription_identifiers_are_passed_on() -> None:
    out = message_to_publish(Message(None, None, [], 0), "t", granted_qos=0,
                             subscription_identifiers=(4, 9))
    assert out.properties == Properties(subscription_identifiers=(4, 9))


# --- topic mapping ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("level", "core"),
    [
        ("orders", "orders"),
        ("my_topic.v1-x", "my_topic.v1-x"),
        ("", "="),
        (".", "=2e"),
        ("..", "=2e=2e"),
        ("a b", "a=20b"),
        ("x=y", "x=3dy"),
        ("\u00e9t\u00e9", "=c3=a9t=c3=a9"),
        ("x-partition-3", "x=2dpartition-3"),
        ("x-partition-03", "x-partition-03"),
    ],
)
def test_escape_examples(level: str, core: str) -> None:
    assert escape_level(level) == core
    assert unescape_level(core) == level
    TopicName("public", "default", core)  # a valid core topic name


@pytest.mark.parametrize("core", ["a=b", "=ZZ", "=3D", "=c3", "", "=2e="])
def test_non_canonical_core_topics_have_no_mqtt_prefix(core: str) -> None:
    with pytest.raises(TopicNotMappable):
        unescape_level(core)


def test_level_too_long_to_map() -> None:
    escape_level("x" * 249)
    with pytest.raises(TopicNotMappable):
        escape_level("x" * 250)
    with pytest.raises(TopicNotMappable):
        escape_level("\u00e9" * 42)  # 42 * 6 = 252 characters once escaped


def test_mqtt_topic_to_core() -> None:
    assert mqtt_topic_to_core("orders/eu/1") == ("orders", b"orders/eu/1")
    assert mqtt_topic_to_core("orders") == ("orders", b"orders")
    assert mqtt_topic_to_core("/a") == ("=", b"/a")


def test_record_to_mqtt_topic() -> None:
    assert record_to_mqtt_topic("orders", b"eu/1", []) == "orders/eu/1"
    assert record_to_mqtt_topic("orders", None, []) == "orders"
    assert record_to_mqtt_topic("orders", b"", []) == "orders/"
    assert record_to_mqtt_topic("=", None, []) == "/"
    assert record_to_mqtt_topic("orders", b"\xff\x00", []) == "orders/=_wA"
    assert record_to_mqtt_topic("orders", b"a/+", []) == "orders/=YS8r"
    named = [(h.MQTT_TOPIC, b"orders/x/y")]
    assert record_to_mqtt_topic("orders", b"ignored", named) == "orders/x/y"
    # copied to another core topic: the stored name would not match that topic's filters
    assert record_to_mqtt_topic("archive", b"k", named) == "archive/k"
    assert record_to_mqtt_topic("orders", b"k", [(h.MQTT_TOPIC, b"orders/#")]) == "orders/k"
    with pytest.raises(TopicNotMappable):
        record_to_mqtt_topic("a=b", b"k", [])


def test_filter_core_topics() -> None:
    assert filter_core_topics("orders/#") == Concrete("orders")
    assert filter_core_topics("orders") == Concrete("orders")
    assert filter_core_topics("/x/+") == Concrete("=")
    assert filter_core_topics("+/eu") == ALL_TOPICS
    assert filter_core_topics("#") == ALL_TOPICS
    assert filter_core_topics("$SYS/#") == NO_TOPICS
    assert filter_core_topics("$share/g/orders/+") == Concrete("orders")
    assert filter_core_topics("x" * 300 + "/#") == NO_TOPICS


@pytest.mark.parametrize(
    ("topic_filter", "name", "matches"),
    [
        ("sport/tennis/player1/#", "sport/tennis/player1", True),
        ("sport/tennis/player1/#", "sport/tennis/player1/ranking", True),
        ("sport/#", "sport", True),
        ("#", "sport/tennis", True),
        ("sport/tennis/#", "sport/tennis2", False),
        ("sport/+", "sport/", True),
        ("sport/+", "sport", False),
        ("sport/+/player1", "sport/tennis/player1", True),
        ("+/+", "/finance", True),
        ("/+", "/finance", True),
        ("+", "/finance", False),
        ("+", "", True),
        ("#", "$SYS/x", False),
        ("+/monitor/Clients", "$SYS/monitor/Clients", False),
        ("$SYS/#", "$SYS/monitor/Clients", True),
        ("$SYS/monitor/+", "$SYS/monitor/Clients", True),
        ("a/b", "a/b", True),
        ("a/b", "a/c", False),
        ("$share/g/a/+", "a/b", True),
    ],
)
def test_topic_matches(topic_filter: str, name: str, matches: bool) -> None:
    assert topic_matches(topic_filter, name) is matches
