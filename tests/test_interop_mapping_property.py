"""Round trips across protocols through the mapping functions (complements test_mapping_roundtrip).

Each property sends a message out through one protocol's mapping, lets a client of that
protocol republish exactly what it received (through the real codecs), and reads it back as a
third protocol would; the README section "Message mapping between Kafka, AMQP 0-9-1 and MQTT"
says what must come back:

* MQTT 5 → AMQP → MQTT 5: the publish comes back whole (topic, payload, QoS, retain, every
  property); only the order between *different* user property names is lost (AMQP tables
  are written sorted) and empty names are dropped.
* Kafka → AMQP → MQTT 5 → Kafka: value and user headers (grouped by name) come back.
* Kafka keys reach AMQP (routing key, or ``ps.key`` when they cannot be one) and MQTT
  (``T/<key>``, or ``T/=<base64url>``) so that the exact key can be recovered.
"""

from __future__ import annotations

import base64

from hypothesis import given
from hypothesis import strategies as st
from test_mapping_roundtrip import (
    TEXT,
    amqp_wire,
    groups,
    mqtt_publishes,
    mqtt_wire,
    through_log,
)

from core import headers as h
from core.records import Message
from handlers.amqp.mapping import AmqpDelivery, message_to_amqp, properties_to_message
from handlers.mqtt import Properties, Publish
from handlers.mqtt.mapping import message_to_publish, publish_to_message
from handlers.mqtt.topic_mapping import TopicNotMappable, topic_matches

AMQP_TABLE_KEY_MAX = 128


def amqp_republish(delivery: AmqpDelivery, timestamp_ms: int) -> Message:
    """What an AMQP client that republishes a delivery unchanged stores (wire round trip)."""
    return through_log(properties_to_message(delivery.routing_key,
                                             amqp_wire(delivery.properties), delivery.body,
                                             timestamp_ms))


def mqtt_republish(publish: Publish, timestamp_ms: int) -> tuple[str, Message]:
    """What an MQTT 5 client that republishes a delivery unchanged stores."""
    core_topic, msg = publish_to_message(mqtt_wire(publish), timestamp_ms)
    return core_topic, through_log(msg)


def deliver_mqtt(msg: Message, core_topic: str, packet_id: int | None) -> Publish:
    return mqtt_wire(message_to_publish(msg, core_topic, granted_qos=2,
                                        retain_as_published=True, packet_id=packet_id or 1))


def without_user_properties(props: Properties) -> Properties:
    return Properties(
        payload_format_indicator=props.payload_format_indicator,
        message_expiry_interval=props.message_expiry_interval,
        content_type=props.content_type, response_topic=props.response_topic,
        correlation_data=props.correlation_data,
    )


@given(mqtt_publishes())
def test_mqtt5_through_an_amqp_republish_and_back(publish: Publish) -> None:
    received = mqtt_wire(publish)
    try:
        core_topic, msg = publish_to_message(received, 1)
    except TopicNotMappable:
        return  # first level too long to be a core topic name
    via_amqp = amqp_republish(message_to_amqp(through_log(msg)), 2)
    out = deliver_mqtt(via_amqp, core_topic, publish.packet_id)
    assert (out.topic, out.payload, out.qos, out.retain) == (
        received.topic, received.payload, received.qos, received.retain)
    assert without_user_properties(out.properties) == without_user_properties(
        received.properties)
    kept = [(n, v.encode()) for n, v in received.properties.user_properties
            if n and len(n.encode()) <= AMQP_TABLE_KEY_MAX]
    assert groups([(n, v.encode()) for n, v in out.properties.user_properties]) == groups(kept)


user_header_names = st.text(TEXT, min_size=1, max_size=10).filter(
    lambda n: not n.startswith("ps.") and len(n.encode()) <= AMQP_TABLE_KEY_MAX)
user_headers = st.lists(st.tuples(user_header_names, st.binary(max_size=12)), max_size=8)


@given(user_headers, st.binary(max_size=20), st.none() | st.binary(max_size=12))
def test_kafka_through_amqp_and_mqtt5_republishes_keeps_value_and_headers(
    headers: list[tuple[str, bytes]], value: bytes, key: bytes | None
) -> None:
    record = through_log(Message(key, value, headers, 1))
    via_amqp = amqp_republish(message_to_amqp(record), 2)
    _, via_mqtt = mqtt_republish(deliver_mqtt(via_amqp, "orders", 1), 3)
    assert via_mqtt.value == value
    assert groups(h.user_headers(via_mqtt.headers)) == groups(headers)


gateway_names = st.sampled_from([
    h.CONTENT_TYPE, h.CORRELATION_ID, h.REPLY_TO, h.AMQP_PRIORITY, h.AMQP_TIMESTAMP,
    h.AMQP_TYPED_HEADERS, h.AMQP_MESSAGE_ID, h.KEY, "ps.b64", "ps.b64:x", "ps.b64n:eA",
])
gateway_values = st.one_of(st.binary(max_size=12), st.sampled_from([b"", b"a/b", b"text", b"7"]))


@given(st.lists(st.tuples(user_header_names | gateway_names, gateway_values), max_size=8))
def test_kafka_gateway_headers_through_an_mqtt5_republish(
    headers: list[tuple[str, bytes]],
) -> None:
    """Gateway headers (first one native, later ones user properties) all come back by name.

    The republish adds ``ps.mqtt.topic`` and ``ps.mqtt.qos`` (excluded from the input).
    """
    out = deliver_mqtt(through_log(Message(b"k", b"v", headers, 1)), "orders", 1)
    _, back = mqtt_republish(out, 2)
    got = groups([(n, v) for n, v in back.headers if not n.startswith("ps.mqtt.")])
    assert got == groups(headers)


def amqp_key(delivery: AmqpDelivery) -> bytes | None:
    """The record key an AMQP consumer can recover, per the README."""
    table = amqp_wire(delivery.properties).headers or {}
    if h.KEY in table:
        raw = table[h.KEY]
        assert isinstance(raw, bytes | bytearray)
        return bytes(raw)
    return delivery.routing_key.encode() if delivery.routing_key else None


def mqtt_key(topic: str, prefix: str) -> bytes | None:
    """The record key an MQTT consumer can recover from a delivery topic, per the README."""
    if topic == prefix:
        return None
    level = topic.removeprefix(prefix + "/")
    if level.startswith("=") and "/" not in level:
        with_padding = level[1:] + "=" * (-len(level[1:]) % 4)
        try:
            decoded = base64.urlsafe_b64decode(with_padding)
        except ValueError:
            decoded = None
        # a UTF-8 key starting with "=" is sent as is; only the escape has a base64 body
        if decoded is not None and base64.urlsafe_b64encode(decoded).rstrip(b"=") == \
                level[1:].encode():
            plain = _as_plain_level(decoded)
            if plain is None:
                return decoded
    return level.encode()


def _as_plain_level(key: bytes) -> str | None:
    try:
        text = key.decode()
    except UnicodeDecodeError:
        return None
    return None if any(c in text for c in "\x00+#") else text


KEY_TEXT = st.characters(exclude_categories=["Cs"])
keys = st.one_of(
    st.none(), st.binary(max_size=300), st.text(KEY_TEXT, max_size=80).map(str.encode),
    st.sampled_from([b"", b"a/b", b"+", b"#", b"=", b"=YQ", b"\x00", b"x" * 256]),
)


@given(keys)
def test_kafka_key_is_recoverable_from_an_amqp_delivery(key: bytes | None) -> None:
    delivery = message_to_amqp(through_log(Message(key, b"v", [], 1)))
    expected = None if key == b"" else key  # an empty routing key is no key
    assert amqp_key(delivery) == expected


@given(keys)
def test_kafka_key_is_recoverable_from_an_mqtt_delivery_topic(key: bytes | None) -> None:
    out = deliver_mqtt(through_log(Message(key, b"v", [], 1)), "orders", 1)
    assert topic_matches("orders/#", out.topic)
    assert mqtt_key(out.topic, "orders") == key


def test_examples_from_the_readme() -> None:
    """The README's own examples of delivery topics and base64 user properties."""
    escaped = "orders/=" + base64.urlsafe_b64encode(b"a+b").rstrip(b"=").decode()
    assert deliver_mqtt(Message(b"a+b", b"", [], 1), "orders", 1).topic == escaped
    assert mqtt_key(escaped, "orders") == b"a+b"
    assert deliver_mqtt(Message(b"eu/1", b"", [], 1), "orders", 1).topic == "orders/eu/1"
    assert deliver_mqtt(Message(None, b"", [], 1), "orders", 1).topic == "orders"
    out = deliver_mqtt(Message(None, b"", [("k", b"\xff")], 1), "orders", 1)
    assert out.properties.user_properties == (("ps.b64:k", base64.b64encode(b"\xff").decode()),)
