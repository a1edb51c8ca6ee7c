"""The struct-based AMQP hot path against pamqp: same bytes out, same values in.

* ``encode_deliver``/``encode_content`` must write exactly what pamqp marshals, for any basic
  properties (headers tables nested, timestamps, every short string and octet).
* ``decode_publish_fast``/``decode_content_header`` must read what pamqp reads, for frames pamqp
  writes and for the frames real clients sent (``tests/fixtures/amqp``); when they cannot (bad
  UTF-8, trailing or missing bytes) pamqp decides, so the reply codes stay the same.
* multiple acks go to the core as one ``ack_many`` per core consumer and partition.
"""

from __future__ import annotations

import datetime
import struct
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pytest
from fixtures.amqp.client_codec import (
    ConnectionPair,
    assert_connection_close,
    content_frames,
    method_frame,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pamqp import body, commands, header
from pamqp import frame as pamqp_frame

from core.records import Message
from core.subscriptions import ConsumerClosed, UnknownMessage
from handlers.amqp import ConnectionClosing, LocalProtocolError, Publish, ReplyCode
from handlers.amqp.broker.consumers import Unacked
from handlers.amqp.delivery import DeliveryMixin
from handlers.amqp.frames import (
    FRAME_HEADER,
    FRAME_METHOD,
    FRAME_MIN_SIZE,
    PROTOCOL_HEADER,
    FrameReader,
    decode_content_header,
    decode_method,
    decode_properties_fast,
    decode_publish_fast,
    encode_content,
    encode_deliver,
    encode_properties,
)
from handlers.amqp.mapping import message_to_amqp, properties_to_message

FIXTURES = Path(__file__).parent / "fixtures" / "amqp"
FIXTURE_FILES = sorted(
    p for p in FIXTURES.glob("*.bin") if p.name.startswith(("basic_publish_", "session_"))
)

# --- strategies ---------------------------------------------------------------------------------


def shortstr(min_size: int = 0) -> st.SearchStrategy[str]:
    return st.text(min_size=min_size, max_size=40).filter(lambda s: len(s.encode()) <= 255)


exchange_names = st.from_regex(r"[a-zA-Z0-9\-_.:@#,/+ ]{0,127}", fullmatch=True)
"""Names pamqp's marshal accepts (it validates exchange names when writing)."""

field_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.text(max_size=20),
    st.datetimes(
        min_value=datetime.datetime(1970, 1, 2), max_value=datetime.datetime(2100, 1, 1)
    ).map(lambda d: d.replace(microsecond=0, tzinfo=datetime.UTC)),
)
field_values = st.recursive(
    field_scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.dictionaries(st.text(min_size=1, max_size=10), inner, max_size=4),
    ),
    max_leaves=12,
)
header_tables = st.dictionaries(st.text(min_size=1, max_size=12), field_values, max_size=5)
octets = st.integers(min_value=0, max_value=255)
timestamps = st.datetimes(
    min_value=datetime.datetime(1970, 1, 2), max_value=datetime.datetime(2100, 1, 1)
).map(lambda d: d.replace(microsecond=0, tzinfo=datetime.UTC))

_SHORTSTR_ATTRS = (
    "content_type", "content_encoding", "correlation_id", "reply_to", "expiration",
    "message_id", "message_type", "user_id", "app_id", "cluster_id",
)


@st.composite
def basic_properties(draw: st.DrawFn, *, plain: bool = False) -> commands.Basic.Properties:
    """Any basic properties (``plain``: only short strings and octets)."""
    props = commands.Basic.Properties()
    for attr in _SHORTSTR_ATTRS:
        value = draw(st.none() | shortstr())
        setattr(props, attr, value)
    props.delivery_mode = draw(st.none() | octets)
    props.priority = draw(st.none() | octets)
    if not plain:
        props.headers = draw(st.none() | header_tables)
        props.timestamp = draw(st.none() | timestamps)
    return props


def pamqp_content(channel: int, method: Any, props: commands.Basic.Properties, payload: bytes,
                  frame_max: int) -> bytes:
    """What pamqp marshals for a content-bearing method (the reference)."""
    parts = [pamqp_frame.marshal(method, channel),
             pamqp_frame.marshal(header.ContentHeader(0, len(payload), props), channel)]
    chunk = frame_max - 8
    for start in range(0, len(payload), chunk):
        parts.append(pamqp_frame.marshal(body.ContentBody(payload[start:start + chunk]), channel))
    return b"".join(parts)


def props_dict(props: commands.Basic.Properties) -> dict[str, object]:
    return {name: getattr(props, name) for name in props.__slots__}


def method_dict(method: Any) -> dict[str, object]:
    return {name: getattr(method, name) for name in method.__slots__}


# --- encoder ------------------------------------------------------------------------------------


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    props=basic_properties(),
    channel=st.integers(min_value=1, max_value=0xFFFF),
    consumer_tag=shortstr(min_size=1),
    delivery_tag=st.integers(min_value=1, max_value=2**63 - 1),
    redelivered=st.booleans(),
    exchange=exchange_names,
    routing_key=shortstr(),
    payload=st.binary(max_size=300),
)
def test_encode_deliver_equals_pamqp(
    props: commands.Basic.Properties, channel: int, consumer_tag: str, delivery_tag: int,
    redelivered: bool, exchange: str, routing_key: str, payload: bytes,
) -> None:
    method = commands.Basic.Deliver(consumer_tag=consumer_tag, delivery_tag=delivery_tag,
                                    redelivered=redelivered, exchange=exchange,
                                    routing_key=routing_key)
    expected = pamqp_content(channel, method, props, payload, FRAME_MIN_SIZE)
    fast = encode_deliver(channel, consumer_tag, delivery_tag, redelivered, exchange,
                          routing_key, props, payload, FRAME_MIN_SIZE)
    assert fast == expected
    assert encode_content(channel, method, props, payload, FRAME_MIN_SIZE) == expected


@settings(max_examples=60, deadline=None)
@given(props=basic_properties(), size=st.integers(min_value=0, max_value=3 * FRAME_MIN_SIZE))
def test_encode_content_splits_bodies_like_pamqp(props: commands.Basic.Properties,
                                                 size: int) -> None:
    payload = bytes(i % 251 for i in range(size))
    get_ok = commands.Basic.GetOk(delivery_tag=7, redelivered=True, exchange="x",
                                  routing_key="k", message_count=3)
    expected = pamqp_content(3, get_ok, props, payload, FRAME_MIN_SIZE)
    assert encode_content(3, get_ok, props, payload, FRAME_MIN_SIZE) == expected
    fast = encode_deliver(3, "c", 1, False, "x", "k", props, payload, FRAME_MIN_SIZE)
    reference = commands.Basic.Deliver(consumer_tag="c", delivery_tag=1, exchange="x",
                                       routing_key="k")
    assert fast == pamqp_content(3, reference, props, payload, FRAME_MIN_SIZE)


def test_no_properties_is_an_empty_flag_word() -> None:
    assert encode_properties(None) == b"\x00\x00"
    assert encode_properties(commands.Basic.Properties()) == b"\x00\x00"
    # pamqp writes "" as absent; so do we
    assert encode_properties(commands.Basic.Properties(content_type="")) == b"\x00\x00"


def test_encoder_rejects_what_cannot_be_written() -> None:
    with pytest.raises(LocalProtocolError):
        encode_deliver(1, "c" * 256, 1, False, "", "", None, b"", FRAME_MIN_SIZE)
    with pytest.raises(LocalProtocolError):
        encode_deliver(1, "c", -1, False, "", "", None, b"", FRAME_MIN_SIZE)
    with pytest.raises(LocalProtocolError):
        encode_deliver(1, "c", 1, False, "", "", None, b"", FRAME_MIN_SIZE - 1)
    props = commands.Basic.Properties()
    props.priority = 256
    with pytest.raises(LocalProtocolError):
        encode_properties(props)


# --- decoder ------------------------------------------------------------------------------------


def pamqp_decode_method(payload: bytes) -> Any:
    cls = commands.INDEX_MAPPING[struct.unpack(">I", payload[:4])[0]]
    method = cls.__new__(cls)
    method.unmarshal(payload[4:])
    return method


def pamqp_decode_header(payload: bytes) -> tuple[int, int, dict[str, object]]:
    content = header.ContentHeader()
    content.unmarshal(payload)
    return content.class_id, content.body_size, props_dict(content.properties)


def payload_of(frame: bytes) -> bytes:
    return frame[7:-1]


@settings(max_examples=80, deadline=None)
@given(exchange=shortstr(), routing_key=shortstr(), mandatory=st.booleans(),
       immediate=st.booleans(), ticket=st.integers(min_value=0, max_value=0xFFFF))
def test_decode_publish_equals_pamqp(exchange: str, routing_key: str, mandatory: bool,
                                     immediate: bool, ticket: int) -> None:
    # written by hand: pamqp's marshal would refuse most names, its unmarshal reads them all
    ex, rk = exchange.encode(), routing_key.encode()
    payload = (struct.pack(">HHHB", 60, 40, ticket, len(ex)) + ex + bytes([len(rk)]) + rk
               + bytes([mandatory | immediate << 1]))
    fast = decode_publish_fast(payload)
    assert fast is not None
    assert method_dict(fast) == method_dict(pamqp_decode_method(payload))
    assert method_dict(decode_method(payload)) == method_dict(fast)


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(props=basic_properties(), body_size=st.integers(min_value=0, max_value=2**40))
def test_decode_content_header_equals_pamqp(props: commands.Basic.Properties,
                                            body_size: int) -> None:
    payload = payload_of(pamqp_frame.marshal(header.ContentHeader(0, body_size, props), 1))
    class_id, size, decoded = decode_content_header(payload)
    assert (class_id, size, props_dict(decoded)) == pamqp_decode_header(payload)


@settings(max_examples=100, deadline=None)
@given(props=basic_properties(plain=True))
def test_plain_properties_take_the_fast_path(props: commands.Basic.Properties) -> None:
    payload = payload_of(pamqp_frame.marshal(header.ContentHeader(0, 5, props), 1))
    fast = decode_properties_fast(payload)
    assert fast is not None
    assert props_dict(fast) == pamqp_decode_header(payload)[2]


def frames_of(data: bytes) -> Iterable[tuple[int, bytes]]:
    reader = FrameReader(131072, 1 << 22)
    reader.feed(data)
    if data.startswith(PROTOCOL_HEADER):
        reader.read_protocol_header()
    while (frame := reader.next_frame()) is not None:
        yield frame.frame_type, frame.payload


@pytest.mark.parametrize("path", FIXTURE_FILES, ids=lambda p: p.name)
def test_fixtures_decode_like_pamqp(path: Path) -> None:
    seen = 0
    for frame_type, payload in frames_of(path.read_bytes()):
        if frame_type == FRAME_METHOD and payload[:4] == b"\x00\x3c\x00\x28":
            fast = decode_publish_fast(payload)
            assert fast is not None
            assert method_dict(fast) == method_dict(pamqp_decode_method(payload))
            seen += 1
        elif frame_type == FRAME_HEADER:
            class_id, size, props = decode_content_header(payload)
            assert (class_id, size, props_dict(props)) == pamqp_decode_header(payload)
            seen += 1
    if path.name.startswith("basic_publish_"):
        assert seen >= 2  # a publish method and its content header at least


PUBLISH = payload_of(pamqp_frame.marshal(
    commands.Basic.Publish(exchange="ex", routing_key="rk"), 1))


@pytest.mark.parametrize("payload", [
    PUBLISH + b"\x00",  # trailing byte
    PUBLISH[:-1],  # no bits octet
    PUBLISH[:8],  # truncated inside the exchange name
    PUBLISH[:6] + b"\x02\xff\xfe" + PUBLISH[9:],  # exchange not UTF-8
])
def test_irregular_publish_is_left_to_pamqp(payload: bytes) -> None:
    assert decode_publish_fast(payload) is None


def test_undecodable_publish_still_closes_with_frame_error() -> None:
    pair = ConnectionPair()
    pair.handshake()
    pair.open_channel(1)
    bad = PUBLISH[:6] + b"\x02\xff\xfe" + PUBLISH[9:]
    replies = pair.send(struct.pack(">BHI", 1, 1, len(bad)) + bad + b"\xce")
    assert_connection_close(replies, ReplyCode.FRAME_ERROR)


def test_irregular_properties_are_left_to_pamqp() -> None:
    props = commands.Basic.Properties(content_type="text/plain", delivery_mode=2)
    payload = payload_of(pamqp_frame.marshal(header.ContentHeader(0, 1, props), 1))
    assert decode_properties_fast(payload) is not None
    assert decode_properties_fast(payload + b"\x00") is None  # trailing bytes
    assert decode_properties_fast(payload[:-1]) is None  # truncated octet
    assert decode_properties_fast(payload[:14] + b"\x05x") is None  # truncated shortstr
    stamped = commands.Basic.Properties(timestamp=datetime.datetime(2020, 1, 1,
                                                                     tzinfo=datetime.UTC))
    stamped_payload = payload_of(pamqp_frame.marshal(header.ContentHeader(0, 1, stamped), 1))
    assert decode_properties_fast(stamped_payload) is None
    assert decode_content_header(stamped_payload)[2].timestamp == stamped.timestamp


# --- connection ---------------------------------------------------------------------------------


def test_send_deliver_queues_the_bytes_send_content_would() -> None:
    pair = ConnectionPair()
    pair.handshake()
    pair.open_channel(2)
    server = pair.server
    server.data_to_send()
    props = commands.Basic.Properties(content_type="a/b", headers={"n": {"x": [1, "y"]}})
    method = commands.Basic.Deliver(consumer_tag="c", delivery_tag=9, redelivered=True,
                                    exchange="e", routing_key="r")
    assert server.send_content(2, method, props, b"payload")
    expected = server.data_to_send()
    assert server.send_deliver(2, "c", 9, True, "e", "r", props, b"payload")
    assert server.data_to_send() == expected
    assert server.send_encoded_content(2, expected)
    assert server.data_to_send() == expected
    assert not server.send_deliver(5, "c", 9, True, "e", "r", None, b"")  # not open
    assert not server.send_encoded_content(5, expected)
    assert server.data_to_send() == b""
    with pytest.raises(LocalProtocolError):
        server.send_deliver(0, "c", 9, True, "e", "r", None, b"")


def test_fast_decoded_publish_is_assembled() -> None:
    pair = ConnectionPair()
    pair.handshake()
    pair.open_channel(1)
    props = commands.Basic.Properties(content_type="text/plain", delivery_mode=2, priority=3)
    data = (method_frame(1, commands.Basic.Publish(exchange="", routing_key="q", mandatory=True))
            + content_frames(1, b"hello", props))
    pair.send(data)
    publishes = [e for e in pair.events if isinstance(e, Publish)]
    assert len(publishes) == 1
    assert publishes[0].method.routing_key == "q" and publishes[0].method.mandatory
    assert props_dict(publishes[0].properties) == props_dict(props)
    assert publishes[0].body == b"hello"


def test_immediate_is_refused_on_a_repeated_exchange_too() -> None:
    pair = ConnectionPair()
    pair.handshake()
    pair.open_channel(1)
    pair.send(method_frame(1, commands.Basic.Publish(exchange="x"))
              + content_frames(1, b"", commands.Basic.Properties()))
    assert any(isinstance(e, Publish) for e in pair.events)
    replies = pair.method(1, commands.Basic.Publish(exchange="x", immediate=True))
    assert_connection_close(replies, ReplyCode.NOT_IMPLEMENTED)
    assert any(isinstance(e, ConnectionClosing) for e in pair.events)


# --- mapping ------------------------------------------------------------------------------------


def test_bare_publish_maps_to_a_message_without_headers() -> None:
    message = properties_to_message("rk", commands.Basic.Properties(), b"v", 1000)
    assert message.key == b"rk" and message.value == b"v" and message.headers == []
    assert message.timestamp_ms == 1000
    assert properties_to_message("", commands.Basic.Properties(headers={}), b"", 5).key is None


def test_message_without_headers_delivers_without_properties() -> None:
    out = message_to_amqp(Message(b"key", b"v", [], 1))
    assert out.routing_key == "key" and out.body == b"v"
    assert props_dict(out.properties) == props_dict(commands.Basic.Properties())
    assert message_to_amqp(Message(None, None, [], 1)).body == b""
    odd = message_to_amqp(Message(b"\xff", b"v", [], 1))  # not a routing key: goes to ps.key
    assert odd.routing_key == "" and odd.properties.headers == {"ps.key": bytearray(b"\xff")}


# --- acks ---------------------------------------------------------------------------------------


class FakeCore:
    """Records the acks a core consumer receives; can fail like the real one."""

    def __init__(self, unknown: frozenset[int] = frozenset(), closed: bool = False) -> None:
        self.acked: list[tuple[int, int]] = []
        self.calls: list[str] = []
        self.unknown = unknown
        self.closed = closed

    def _one(self, partition: int, offset: int) -> None:
        if self.closed:
            raise ConsumerClosed("closed")
        if offset in self.unknown:
            raise UnknownMessage(partition, offset)
        self.acked.append((partition, offset))

    def ack(self, partition: int, offset: int) -> None:
        self.calls.append("ack")
        self._one(partition, offset)

    def ack_many(self, partition: int, offsets: Iterable[int]) -> None:
        self.calls.append("ack_many")
        for offset in offsets:
            self._one(partition, offset)


def unacked(tag: int, core: FakeCore, partition: int, offset: int) -> Unacked:
    return Unacked(tag, core, partition, offset, "q", None)  # type: ignore[arg-type]


def test_multiple_ack_is_one_ack_many_per_core_and_partition() -> None:
    a, b = FakeCore(), FakeCore()
    items = [unacked(1, a, 0, 10), unacked(2, a, 1, 5), unacked(3, b, 0, 7),
             unacked(4, a, 0, 11), unacked(5, a, 1, 6)]
    DeliveryMixin._ack_many(items)
    assert a.calls == ["ack_many", "ack_many"] and b.calls == ["ack_many"]
    assert sorted(a.acked) == [(0, 10), (0, 11), (1, 5), (1, 6)]
    assert b.acked == [(0, 7)]


def test_multiple_ack_survives_unknown_and_closed_consumers() -> None:
    flaky, gone = FakeCore(unknown=frozenset({20})), FakeCore(closed=True)
    items = [unacked(1, flaky, 0, 20), unacked(2, flaky, 0, 21), unacked(3, gone, 0, 1)]
    DeliveryMixin._ack_many(items)
    assert flaky.acked == [(0, 21)]  # the offset after the unknown one is still acked
    assert gone.acked == []
