"""AMQP 0-9-1 ↔ message mapping: byte-exact examples for every property and header rule."""

from __future__ import annotations

import datetime
from decimal import Decimal

import pytest
from pamqp import commands, common, encode, header

from core import headers as h
from core.records import Message
from handlers.amqp.events import Publish
from handlers.amqp.frames import decode_content_header
from handlers.amqp.mapping import message_to_amqp, properties_to_message, publish_to_message

UTC = datetime.UTC


def wire(props: commands.Basic.Properties) -> commands.Basic.Properties:
    """``props`` as an AMQP client receives them: marshalled by pamqp, decoded by our frames."""
    payload = header.ContentHeader(0, 0, props).marshal()
    return decode_content_header(payload)[2]


def to_message(props: commands.Basic.Properties, routing_key: str = "rk") -> Message:
    return properties_to_message(routing_key, wire(props), b"body", 1_700_000_000_123)


def test_no_properties_costs_no_headers() -> None:
    msg = to_message(commands.Basic.Properties(), "")
    assert msg == Message(None, b"body", [], 1_700_000_000_123)
    delivery = message_to_amqp(msg)
    assert delivery.routing_key == ""
    assert delivery.body == b"body"
    assert delivery.properties == commands.Basic.Properties()
    assert delivery.properties.marshal() == b"\x00\x00"


def test_publish_event_uses_routing_key_and_body() -> None:
    event = Publish(
        1,
        commands.Basic.Publish(exchange="orders", routing_key="eu.1"),
        commands.Basic.Properties(),
        b"\x00payload",
    )
    msg = publish_to_message(event, 42)
    assert msg == Message(b"eu.1", b"\x00payload", [], 42)


@pytest.mark.parametrize(
    ("attr", "value", "name", "raw"),
    [
        ("content_type", "application/json", h.CONTENT_TYPE, b"application/json"),
        ("correlation_id", "c-\u00e9", h.CORRELATION_ID, b"c-\xc3\xa9"),
        ("reply_to", "amq.rabbitmq.reply-to", h.REPLY_TO, b"amq.rabbitmq.reply-to"),
        ("expiration", "60000", h.EXPIRY_MS, b"60000"),
        ("content_encoding", "gzip", h.AMQP_CONTENT_ENCODING, b"gzip"),
        ("message_id", "m-1", h.AMQP_MESSAGE_ID, b"m-1"),
        ("message_type", "order.created", h.AMQP_TYPE, b"order.created"),
        ("user_id", "guest", h.AMQP_USER_ID, b"guest"),
        ("app_id", "shop", h.AMQP_APP_ID, b"shop"),
        ("delivery_mode", 2, h.AMQP_DELIVERY_MODE, b"2"),
        ("priority", 9, h.AMQP_PRIORITY, b"9"),
        (
            "timestamp",
            datetime.datetime(2023, 11, 14, 22, 13, 20, tzinfo=UTC),
            h.AMQP_TIMESTAMP,
            b"1700000000",
        ),
    ],
)
def test_each_property_has_its_header_and_comes_back(
    attr: str, value: object, name: str, raw: bytes
) -> None:
    props = commands.Basic.Properties()
    setattr(props, attr, value)
    msg = to_message(props)
    assert msg.headers == [(name, raw)]
    delivered = message_to_amqp(msg).properties
    assert getattr(delivered, attr) == value
    assert delivered.headers is None
    assert wire(delivered) == wire(props)


def test_cluster_id_kept_only_when_set() -> None:
    props = commands.Basic.Properties()
    props.cluster_id = "c1"  # deprecated and refused by pamqp's validate, but legal on the wire
    msg = to_message(props)
    assert msg.headers == [(h.AMQP_CLUSTER_ID, b"c1")]
    assert message_to_amqp(msg).properties.cluster_id == "c1"


def test_record_timestamp_is_broker_time_not_the_amqp_timestamp() -> None:
    props = commands.Basic.Properties(timestamp=datetime.datetime(2001, 1, 1, tzinfo=UTC))
    assert to_message(props).timestamp_ms == 1_700_000_000_123


def test_string_headers_are_plain_user_headers() -> None:
    table: common.FieldTable = {"a": "x", "b": "", "c": "\u00e9"}
    props = commands.Basic.Properties(headers=table)
    msg = to_message(props)
    assert msg.headers == [("a", b"x"), ("b", b""), ("c", b"\xc3\xa9")]
    assert message_to_amqp(msg).properties.headers == {"a": "x", "b": "", "c": "\u00e9"}


def test_typed_headers_rendered_and_copied_exactly() -> None:
    table: common.FieldTable = {
        "bool": True,
        "int": 5,
        "big": 2**40,
        "dec": Decimal("1.25"),
        "ts": datetime.datetime(2024, 1, 1, tzinfo=UTC),
        "void": None,
        "nested": {"z": [1, "q", bytearray(b"\xff")], "f": False},
        "blob": bytearray(b"text"),
    }
    msg = to_message(commands.Basic.Properties(headers=table))
    typed: common.FieldTable = dict(table)
    assert msg.headers == [
        ("big", b"1099511627776"),
        ("blob", b"text"),
        ("bool", b"true"),
        ("dec", b"1.25"),
        ("int", b"5"),
        ("nested", b'{"f":false,"z":[1,"q","\\\\xff"]}'),
        ("ts", b"2024-01-01T00:00:00+00:00"),
        ("void", b""),
        (h.AMQP_TYPED_HEADERS, encode.field_table(typed)),
    ]
    delivered = message_to_amqp(msg).properties
    assert delivered.headers == table
    assert isinstance(delivered.headers["blob"], bytearray)
    assert wire(delivered).marshal() == wire(commands.Basic.Properties(headers=table)).marshal()


def test_typed_headers_blob_bytes() -> None:
    msg = to_message(commands.Basic.Properties(headers={"n": 5}))
    assert msg.headers == [("n", b"5"), (h.AMQP_TYPED_HEADERS, b"\x00\x00\x00\x04\x01nb\x05")]


def test_binary_header_values_need_no_typed_copy() -> None:
    props = commands.Basic.Properties(headers={"x": bytearray(b"\xff\x00")})
    msg = to_message(props)
    assert msg.headers == [("x", b"\xff\x00")]
    assert message_to_amqp(msg).properties.headers == {"x": bytearray(b"\xff\x00")}


def test_non_utf8_long_string_becomes_byte_array() -> None:
    # pamqp decodes a non-UTF-8 'S' value as bytes and cannot write bytes back.
    raw = b"\x00\x00\x00\x08\x01sS\x00\x00\x00\x01\xff"
    payload = b"\x00\x3c\x00\x00" + bytes(8) + b"\x20\x00" + raw
    props = decode_content_header(payload)[2]
    assert props.headers == {"s": b"\xff"}
    msg = properties_to_message("", props, b"", 0)
    assert msg.headers == [("s", b"\xff")]
    delivered = message_to_amqp(msg).properties
    assert delivered.headers == {"s": bytearray(b"\xff")}
    wire(delivered)


def test_repeated_kafka_headers_become_an_array_and_come_back() -> None:
    kafka = Message(b"k", b"v", [("a", b"1"), ("b", b"\xff"), ("a", b"\xfe"), ("a", b"3")], 0)
    delivered = message_to_amqp(kafka)
    assert delivered.properties.headers == {
        "a": ["1", bytearray(b"\xfe"), "3"],
        "b": bytearray(b"\xff"),
        h.AMQP_REPEATED: ["a"],
    }
    back = properties_to_message(delivered.routing_key, wire(delivered.properties), b"v", 0)
    assert back.headers == [("a", b"1"), ("a", b"\xfe"), ("a", b"3"), ("b", b"\xff")]


def test_array_that_is_not_a_repeat_stays_typed() -> None:
    table: common.FieldTable = {"a": ["x", bytearray(b"y")], h.AMQP_REPEATED: ["a"]}
    msg = to_message(commands.Basic.Properties(headers=table))
    assert msg.headers[0] == ("a", b'["x","y"]')
    assert msg.headers[1][0] == h.AMQP_TYPED_HEADERS
    assert message_to_amqp(msg).properties.headers == {"a": ["x", bytearray(b"y")]}


def test_reserved_table_entries_from_clients_are_dropped() -> None:
    table: common.FieldTable = {h.AMQP_TYPED_HEADERS: "forged", h.AMQP_REPEATED: "x", "k": "v"}
    assert to_message(commands.Basic.Properties(headers=table)).headers == [("k", b"v")]


def test_damaged_typed_copy_is_ignored() -> None:
    for blob in (b"", b"\x00\x00\x00\x09\x01nb", b"\x00\x00\x00\x03\x01nQ", b"garbage"):
        msg = Message(None, None, [("n", b"5"), (h.AMQP_TYPED_HEADERS, blob)], 0)
        assert message_to_amqp(msg).properties.headers == {"n": "5"}


def test_typed_copy_does_not_add_names() -> None:
    blob = encode.field_table({"n": 5, "ghost": 1})
    msg = Message(None, None, [("n", b"5"), (h.AMQP_TYPED_HEADERS, blob)], 0)
    assert message_to_amqp(msg).properties.headers == {"n": 5}


def test_gateway_headers_that_do_not_fit_go_to_the_table() -> None:
    msg = Message(None, None, [
        (h.CORRELATION_ID, b"\x00\xff"),       # binary MQTT correlation data
        (h.CONTENT_TYPE, b"x" * 256),           # longer than a shortstr
        (h.AMQP_PRIORITY, b"07"),               # not canonical
        (h.AMQP_TIMESTAMP, b"4294967296"),      # pamqp would read it back as milliseconds
        (h.MQTT_TOPIC, b"orders/eu/1"),
        (h.MQTT_QOS, b"1"),
    ], 0)
    delivered = message_to_amqp(msg).properties
    assert delivered.correlation_id is None
    assert delivered.content_type is None
    assert delivered.priority is None
    assert delivered.timestamp is None
    assert delivered.headers == {
        h.CORRELATION_ID: bytearray(b"\x00\xff"),
        h.CONTENT_TYPE: "x" * 256,
        h.AMQP_PRIORITY: "07",
        h.AMQP_TIMESTAMP: "4294967296",
        h.MQTT_TOPIC: "orders/eu/1",
        h.MQTT_QOS: "1",
    }


def test_only_the_first_occurrence_becomes_the_property() -> None:
    msg = Message(None, None, [(h.CONTENT_TYPE, b"a/b"), (h.CONTENT_TYPE, b"c/d")], 0)
    delivered = message_to_amqp(msg).properties
    assert delivered.content_type == "a/b"
    assert delivered.headers == {h.CONTENT_TYPE: "c/d"}


def test_unusable_header_names_are_dropped() -> None:
    msg = Message(None, None, [("", b"x"), ("n" * 129, b"y"), ("\u00e9" * 64, b"z")], 0)
    assert message_to_amqp(msg).properties.headers == {"\u00e9" * 64: "z"}


def test_routing_key_from_key() -> None:
    assert message_to_amqp(Message(b"eu.1", None, [], 0)).routing_key == "eu.1"
    assert message_to_amqp(Message(None, None, [], 0)).routing_key == ""
    for key in (b"\xff\x00", b"k" * 256):
        delivery = message_to_amqp(Message(key, None, [], 0))
        assert delivery.routing_key == ""
        assert delivery.properties.headers == {h.KEY: bytearray(key)}


def test_empty_routing_key_is_no_key() -> None:
    assert to_message(commands.Basic.Properties(), "").key is None
    assert to_message(commands.Basic.Properties(), "a.b").key == b"a.b"
