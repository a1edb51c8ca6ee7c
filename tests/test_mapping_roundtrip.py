"""Round-trip properties of the protocol mappings, through the real codecs and the record format.

Every message goes AMQP/MQTT wire → mapping → v2 record batch → mapping → wire, so what is
checked is what a client would see.
"""

from __future__ import annotations

import datetime
from collections import defaultdict
from decimal import Decimal

from hypothesis import given
from hypothesis import strategies as st
from pamqp import commands, header

from core import headers as h
from core.names import TopicName
from core.records import Message, build_batch, decode_batch
from handlers.amqp.frames import decode_content_header
from handlers.amqp.mapping import message_to_amqp, properties_to_message
from handlers.mqtt import MQTT_5, Properties, Publish, decode, encode
from handlers.mqtt.mapping import message_to_publish, publish_to_message
from handlers.mqtt.topic_mapping import TopicNotMappable, escape_level, unescape_level

UTC = datetime.UTC
TEXT = st.characters(exclude_categories=["Cs"])
MQTT_TEXT = st.characters(exclude_categories=["Cs"], exclude_characters="\x00")


def through_log(msg: Message) -> Message:
    """``msg`` after being stored as a v2 record batch and read back."""
    (stored,) = decode_batch(build_batch([msg]))
    return stored.message


def groups(headers: list[tuple[str, bytes]]) -> dict[str, list[bytes]]:
    """Header values by name, in order (what an unordered AMQP table can keep)."""
    out: dict[str, list[bytes]] = defaultdict(list)
    for name, value in headers:
        out[name].append(value)
    return dict(out)


# --- AMQP -----------------------------------------------------------------------------------------


def amqp_wire(props: commands.Basic.Properties) -> commands.Basic.Properties:
    return decode_content_header(header.ContentHeader(0, 0, props).marshal())[2]


def shortstr() -> st.SearchStrategy[str]:
    return st.text(TEXT, max_size=12).filter(lambda s: len(s.encode()) <= 255)


table_keys = st.text(TEXT, min_size=1, max_size=12).filter(lambda k: not k.startswith("ps."))
scalars = st.one_of(
    st.booleans(),
    st.integers(-(2**63), 2**63 - 1),
    st.floats(width=32, allow_nan=False),
    st.builds(lambda m, s: Decimal(m).scaleb(-s), st.integers(-(2**31), 2**31 - 1),
              st.integers(0, 12)),
    st.integers(0, 2**32 - 1).map(lambda s: datetime.datetime.fromtimestamp(s, UTC)),
    st.text(TEXT, max_size=10),
    st.binary(max_size=8).map(bytearray),
    st.none(),
)
field_values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(table_keys, inner, max_size=4),
    max_leaves=12,
)


@st.composite
def amqp_properties(draw: st.DrawFn) -> commands.Basic.Properties:
    props = commands.Basic.Properties()
    for attr in ("content_type", "content_encoding", "correlation_id", "reply_to", "expiration",
                 "message_id", "message_type", "user_id", "app_id", "cluster_id"):
        if draw(st.booleans()):
            setattr(props, attr, draw(shortstr()))
    for attr in ("delivery_mode", "priority"):
        if draw(st.booleans()):
            setattr(props, attr, draw(st.integers(0, 255)))
    if draw(st.booleans()):
        props.timestamp = datetime.datetime.fromtimestamp(draw(st.integers(0, 2**32 - 1)), UTC)
    table = draw(st.dictionaries(table_keys, field_values, max_size=6))
    if table:
        props.headers = table
    return props


@given(amqp_properties(), shortstr(), st.binary(max_size=20))
def test_amqp_message_amqp_is_identity(
    props: commands.Basic.Properties, routing_key: str, body: bytes
) -> None:
    received = amqp_wire(props)
    msg = through_log(properties_to_message(routing_key, received, body, 1))
    delivery = message_to_amqp(msg)
    assert delivery.routing_key == routing_key
    assert delivery.body == body
    assert delivery.properties == received
    assert amqp_wire(delivery.properties).marshal() == received.marshal()


header_names = st.text(TEXT, min_size=1, max_size=10).filter(
    lambda n: len(n.encode()) <= 128 and n not in (h.AMQP_TYPED_HEADERS, h.AMQP_REPEATED)
)
gateway_names = st.sampled_from([
    h.CONTENT_TYPE, h.CORRELATION_ID, h.REPLY_TO, h.EXPIRY_MS, h.AMQP_PRIORITY,
    h.AMQP_DELIVERY_MODE, h.AMQP_TIMESTAMP, h.AMQP_CLUSTER_ID, h.AMQP_APP_ID, h.MQTT_TOPIC,
    h.KEY,
])
header_values = st.one_of(
    st.binary(max_size=12), st.integers(0, 2**40).map(lambda i: str(i).encode()),
    st.sampled_from([b"", b"07", b"1"]),
)
kafka_headers = st.lists(
    st.tuples(header_names | gateway_names, header_values), max_size=10
)


@given(kafka_headers)
def test_kafka_headers_amqp_message_keeps_every_header(
    headers: list[tuple[str, bytes]],
) -> None:
    """Exception: the order between different names (AMQP tables are written sorted)."""
    delivery = message_to_amqp(through_log(Message(None, b"v", headers, 1)))
    back = properties_to_message(delivery.routing_key, amqp_wire(delivery.properties), b"v", 1)
    assert groups(back.headers) == groups(headers)


# --- MQTT -----------------------------------------------------------------------------------------


def mqtt_wire(packet: Publish) -> Publish:
    decoded, _ = decode(encode(packet, MQTT_5), MQTT_5)
    assert isinstance(decoded, Publish)
    return decoded


LEVEL_TEXT = st.characters(exclude_categories=["Cs"], exclude_characters="\x00/+#")
level = st.text(LEVEL_TEXT, max_size=8)
topic_names = st.builds(
    lambda first, rest: "/".join([first, *rest]),
    level.filter(lambda s: not s.startswith("$")),
    st.lists(level, max_size=3),
).filter(bool)
user_property_names = st.text(MQTT_TEXT, max_size=8).filter(lambda n: not n.startswith("ps."))


@st.composite
def mqtt_publishes(draw: st.DrawFn) -> Publish:
    qos = draw(st.integers(0, 2))
    props = Properties(
        payload_format_indicator=draw(st.none() | st.integers(0, 1)),
        message_expiry_interval=draw(st.none() | st.integers(0, 2**32 - 1)),
        content_type=draw(st.none() | st.text(MQTT_TEXT, max_size=10)),
        response_topic=draw(st.none() | topic_names),
        correlation_data=draw(st.none() | st.binary(max_size=10)),
        user_properties=tuple(draw(st.lists(
            st.tuples(user_property_names, st.text(MQTT_TEXT, max_size=8)), max_size=6
        ))),
    )
    return Publish(
        draw(topic_names), draw(st.binary(max_size=20)), qos, draw(st.booleans()), False,
        draw(st.integers(1, 65535)) if qos else None, props,
    )


@given(mqtt_publishes())
def test_mqtt5_message_mqtt5_is_identity(publish: Publish) -> None:
    received = mqtt_wire(publish)
    try:
        core_topic, msg = publish_to_message(received, 1)
    except TopicNotMappable:
        return  # first level too long to be a core topic name
    out = message_to_publish(
        through_log(msg), core_topic, granted_qos=2, retain_as_published=True,
        packet_id=publish.packet_id,
    )
    assert out == received
    assert mqtt_wire(out) == received


@given(
    st.lists(st.tuples(st.text(TEXT, max_size=8), st.binary(max_size=12)), max_size=10)
    .filter(lambda hs: all(not name.startswith(("ps.mqtt.", "ps.content-type",
                                                "ps.correlation-id", "ps.reply-to",
                                                "ps.expiry-ms")) for name, _ in hs)),
    st.none() | st.binary(max_size=8),
)
def test_kafka_headers_mqtt5_message_is_identity(
    headers: list[tuple[str, bytes]], key: bytes | None
) -> None:
    out = message_to_publish(through_log(Message(key, b"v", headers, 1)), "orders",
                             granted_qos=1, packet_id=1)
    core_topic, back = publish_to_message(mqtt_wire(out), 2)
    assert core_topic == "orders"
    assert back.headers[:2] == [(h.MQTT_TOPIC, out.topic.encode()), (h.MQTT_QOS, b"1")]
    assert back.headers[2:] == headers


# --- topic escaping -------------------------------------------------------------------------------


@given(st.text(st.characters(exclude_categories=["Cs"], exclude_characters="/"), max_size=90))
def test_level_escaping_is_reversible(text: str) -> None:
    try:
        core = escape_level(text)
    except TopicNotMappable:
        assert len(text) > 249 // 9
        return
    TopicName("public", "default", core)
    assert unescape_level(core) == text


@given(st.from_regex(r"[A-Za-z0-9._=-]{1,30}", fullmatch=True))
def test_core_names_map_back_only_canonically(core: str) -> None:
    try:
        text = unescape_level(core)
    except TopicNotMappable:
        return
    assert escape_level(text) == core


# --- across protocols -----------------------------------------------------------------------------


@given(amqp_properties())
def test_amqp_through_an_mqtt_republish_and_back(props: commands.Basic.Properties) -> None:
    """AMQP → MQTT 5 subscriber that republishes everything it got → AMQP.

    Exceptions: integer expirations are rounded up to whole seconds (MQTT's unit), and the
    message gains the ``ps.mqtt.*`` entries of its MQTT publish.
    """
    received = amqp_wire(props)
    msg = properties_to_message("k", received, b"body", 1)
    to_mqtt = mqtt_wire(message_to_publish(through_log(msg), "orders", granted_qos=1,
                                           packet_id=1))
    _, again = publish_to_message(to_mqtt, 2)
    delivered = message_to_amqp(through_log(again)).properties
    table = {k: v for k, v in (delivered.headers or {}).items() if not k.startswith("ps.mqtt.")}
    delivered.headers = table or None
    ttl = h.parse_uint((received.expiration or "").encode())
    if ttl is not None:
        received.expiration = str(min(-(-ttl // 1000), 2**32 - 1) * 1000)
    assert delivered == received


@given(st.integers(0, 2**64))
def test_uint_headers_round_trip(number: int) -> None:
    assert h.parse_uint(h.format_uint(number)) == number
    assert h.parse_uint(b"0" + h.format_uint(number)) is None
