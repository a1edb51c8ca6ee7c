"""The per-batch and cached AMQP hot paths give the same answers as the per-message ones.

* :class:`DeliverEncoder` writes exactly what :func:`encode_deliver` (and so pamqp) writes;
  :func:`delivery_fields` is :func:`message_to_amqp` + :func:`encode_properties`, cached.
* the channel's properties cache and :func:`publish_to_message`'s headers cache map every
  publish as the uncached path does, and never keep what failed validation.
* :meth:`Registry.route` caches per (exchange, routing key) and forgets on every model change;
  routes through headers exchanges are never cached.
* :class:`ConfirmTracker`'s one-run fast path coalesces like the general path.
"""

from __future__ import annotations

import struct
from typing import Any

import pytest
from fixtures.amqp.client_codec import (
    ConnectionPair,
    assert_channel_close,
    assert_connection_close,
    content_frames,
    method_frame,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pamqp import commands
from test_amqp_fastpath import basic_properties, exchange_names, shortstr

from core.records import Message
from handlers.amqp import Publish, ReplyCode
from handlers.amqp.broker.bindings import Binding, DestinationKind
from handlers.amqp.broker.confirms import Confirm, ConfirmTracker
from handlers.amqp.broker.consumers import ChannelDeliveries
from handlers.amqp.broker.queues import Queue, QueueArguments
from handlers.amqp.broker.registry import Registry
from handlers.amqp.frames import (
    FRAME_MIN_SIZE,
    DeliverEncoder,
    FrameReader,
    decode_method,
    encode_deliver,
    encode_properties,
)
from handlers.amqp.mapping import (
    delivery_fields,
    message_to_amqp,
    properties_to_message,
    publish_to_message,
)
from handlers.amqp.names import MAX_TABLE_DEPTH

# --- delivery encoding --------------------------------------------------------------------------


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    props=basic_properties(),
    channel=st.integers(min_value=1, max_value=0xFFFF),
    consumer_tag=shortstr(min_size=1),
    tags=st.lists(st.integers(min_value=0, max_value=2**64 - 1), min_size=1, max_size=3),
    redelivered=st.booleans(),
    exchange=exchange_names,
    routing_key=shortstr(),
    payload=st.binary(max_size=300) | st.binary(min_size=4090, max_size=9000),
)
def test_deliver_encoder_writes_what_encode_deliver_writes(
    props: commands.Basic.Properties, channel: int, consumer_tag: str, tags: list[int],
    redelivered: bool, exchange: str, routing_key: str, payload: bytes,
) -> None:
    encoder = DeliverEncoder(channel, consumer_tag)
    encoded = encode_properties(props)
    for tag in tags:  # the second and later use the cached prefix
        fast = encoder.encode(tag, redelivered, exchange, routing_key, encoded, payload,
                              FRAME_MIN_SIZE)
        assert fast == encode_deliver(channel, consumer_tag, tag, redelivered, exchange,
                                      routing_key, props, payload, FRAME_MIN_SIZE)


def test_deliver_encoder_prefix_cache_is_bounded_and_checks_tags() -> None:
    encoder = DeliverEncoder(1, "c")
    for n in range(600):
        data = encoder.encode(n, False, "x", f"k{n}", b"\x00\x00", b"v", 131072)
        assert data == encode_deliver(1, "c", n, False, "x", f"k{n}", None, b"v", 131072)
    assert len(encoder._prefixes) <= 256
    with pytest.raises(Exception, match="out of range"):
        encoder.encode(-1, False, "x", "k", b"\x00\x00", b"", 131072)
    with pytest.raises(Exception, match="channel 0"):
        DeliverEncoder(0, "c")


header_lists = st.lists(
    st.tuples(
        st.sampled_from(["ps.content-type", "ps.amqp.delivery-mode", "ps.amqp.priority",
                         "ps.amqp.timestamp", "a", "ps.mqtt.qos", ""]),
        st.sampled_from([b"", b"2", b"300", b"text/plain", b"\xff", b"1700000000"]),
    ),
    max_size=6,
)


@settings(max_examples=150, deadline=None)
@given(key=st.none() | st.binary(max_size=8) | st.just(b"k" * 300), headers=header_lists,
       value=st.none() | st.binary(max_size=5))
def test_delivery_fields_equal_the_uncached_mapping(
    key: bytes | None, headers: list[tuple[str, bytes]], value: bytes | None
) -> None:
    message = Message(key, value, headers, 1)
    out = message_to_amqp(message)
    expected = (out.routing_key, encode_properties(out.properties), out.body)
    assert delivery_fields(message) == expected
    assert delivery_fields(Message(key, value, list(headers), 2)) == expected  # from the cache


# --- publish mapping ----------------------------------------------------------------------------


def publishes(pair: ConnectionPair) -> list[Publish]:
    return [e for e in pair.events if isinstance(e, Publish)]


def test_repeated_properties_are_decoded_once_and_map_like_the_uncached_path() -> None:
    pair = ConnectionPair()
    pair.handshake()
    pair.open_channel(1)
    first = commands.Basic.Properties(delivery_mode=2, headers={"n": 1, "s": "x"})
    second = commands.Basic.Properties(content_type="text/plain")
    data = b"".join(
        method_frame(1, commands.Basic.Publish(exchange="", routing_key=f"q{n}"))
        + content_frames(1, b"body%d" % n, props)
        for n, props in enumerate((first, first, second, first))
    )
    pair.send(data)
    got = publishes(pair)
    assert [p.body for p in got] == [b"body0", b"body1", b"body2", b"body3"]
    assert got[0].properties is got[1].properties is got[3].properties  # decoded once
    assert got[2].properties.content_type == "text/plain"
    assert got[0].raw_properties == got[3].raw_properties != got[2].raw_properties
    for publish in got:
        assert publish_to_message(publish, 7) == properties_to_message(
            publish.method.routing_key, publish.properties, publish.body, 7)
    a, b = publish_to_message(got[0], 7), publish_to_message(got[1], 7)
    assert a.headers == b.headers and a.headers is not b.headers  # never a shared list


def test_properties_that_fail_validation_are_not_remembered() -> None:
    pair = ConnectionPair()
    pair.handshake()
    pair.open_channel(1)
    good = commands.Basic.Properties(headers={"a": 1})
    pair.send(method_frame(1, commands.Basic.Publish(exchange="")) + content_frames(1, b"v", good))
    assert len(publishes(pair)) == 1
    nested: dict[str, Any] = {"leaf": 1}
    for _ in range(MAX_TABLE_DEPTH + 1):
        nested = {"n": nested}
    bad = commands.Basic.Properties(headers=nested)
    replies = pair.send(method_frame(1, commands.Basic.Publish(exchange=""))
                        + content_frames(1, b"v", bad))
    assert_connection_close(replies, ReplyCode.SYNTAX_ERROR)
    assert len(publishes(pair)) == 1


def test_oversized_body_is_refused_even_with_known_properties() -> None:
    pair = ConnectionPair()
    pair.handshake()
    pair.open_channel(1)
    props = commands.Basic.Properties(delivery_mode=1)
    pair.send(method_frame(1, commands.Basic.Publish(exchange="")) + content_frames(1, b"v", props))
    assert len(publishes(pair)) == 1
    big = 16 * 1024 * 1024 + 1
    header_frame = content_frames(1, b"", props)  # body size 0: patch in a larger one
    patched = header_frame[:11] + big.to_bytes(8, "big") + header_frame[19:]
    replies = pair.send(method_frame(1, commands.Basic.Publish(exchange="")) + patched)
    assert_channel_close(replies, 1, ReplyCode.PRECONDITION_FAILED)


# --- routing ------------------------------------------------------------------------------------


def registry_with(queues: list[str], **exchanges: str) -> Registry:
    registry = Registry("/")
    for name, type_name in exchanges.items():
        registry.declare_exchange(name, type_name, durable=False, auto_delete=False,
                                  internal=False, arguments={}, passive=False)
    for name in queues:
        registry.add_queue(Queue(name))
    return registry


def bind(registry: Registry, source: str, queue: str, key: str,
         arguments: dict[str, Any] | None = None) -> Binding:
    binding = Binding.create(source, DestinationKind.QUEUE, queue, key, arguments)
    assert registry.add_binding(binding)
    return binding


def test_cached_routes_follow_binding_queue_and_exchange_changes() -> None:
    registry = registry_with(["a", "b"], x="direct")
    assert registry.route("x", "k", []).queues == set()
    first = bind(registry, "x", "a", "k")
    assert registry.route("x", "k", []).queues == {"a"}
    assert registry.route("x", "k", []) is registry.route("x", "k", [])  # cached
    bind(registry, "x", "b", "k")
    assert registry.route("x", "k", []).queues == {"a", "b"}
    registry.remove_binding(first)
    assert registry.route("x", "k", []).queues == {"b"}
    registry.remove_queue("b")
    assert registry.route("x", "k", []).queues == set()
    assert registry.route("", "a", []).direct_queue == "a"
    registry.remove_queue("a")
    assert registry.route("", "a", []).direct_queue is None
    registry.add_queue(Queue("a"))
    assert registry.route("", "a", []).direct_queue == "a"
    registry.delete_exchange("x", False)
    registry.declare_exchange("x", "fanout", durable=False, auto_delete=False, internal=False,
                              arguments={}, passive=False)
    bind(registry, "x", "a", "ignored")
    assert registry.route("x", "k", []).queues == {"a"}


def test_routes_through_headers_exchanges_are_not_cached() -> None:
    registry = registry_with(["hq", "dq"], h="headers", d="direct")
    bind(registry, "h", "hq", "", {"x-match": "all", "color": "red"})
    bind(registry, "d", "dq", "k")
    registry.add_binding(Binding.create("d", DestinationKind.EXCHANGE, "h", "k"))
    assert registry.route("d", "k", [("color", b"red")]).queues == {"dq", "hq"}
    assert registry.route("d", "k", [("color", b"blue")]).queues == {"dq"}
    assert registry.route("h", "", [("color", b"red")]).queues == {"hq"}
    assert registry.route("h", "", []).queues == set()


def test_length_limited_counts_queues_with_max_length() -> None:
    registry = registry_with(["plain"])
    assert registry.length_limited == 0
    registry.add_queue(Queue("capped", parsed=QueueArguments(max_length=3)))
    assert registry.length_limited == 1
    registry.add_queue(Queue("capped", parsed=QueueArguments(max_length=5)))  # replaced
    assert registry.length_limited == 1
    registry.remove_queue("capped")
    registry.remove_queue("missing")
    assert registry.length_limited == 0


# --- confirms and acks --------------------------------------------------------------------------


def reference_settle(settled: dict[int, bool], low: int, tags: list[int], ack: bool
                     ) -> tuple[list[Confirm], int]:
    for tag in tags:
        settled[tag] = ack
    out = []
    while low in settled:
        kind, end = settled[low], low
        while settled.get(end + 1) is kind:
            end += 1
        for tag in range(low, end + 1):
            del settled[tag]
        out.append(Confirm(end, end > low, kind))
        low = end + 1
    return out, low


@settings(max_examples=100, deadline=None)
@given(st.data())
def test_confirm_fast_path_coalesces_like_the_general_path(data: st.DataObject) -> None:
    tracker = ConfirmTracker()
    total = data.draw(st.integers(min_value=1, max_value=30))
    for _ in range(total):
        tracker.publish()
    remaining = list(range(1, total + 1))
    settled: dict[int, bool] = {}
    low = 1
    while remaining:
        size = data.draw(st.integers(min_value=1, max_value=len(remaining)))
        shuffled = data.draw(st.booleans())
        batch = sorted(data.draw(st.permutations(remaining))[:size]) if shuffled \
            else remaining[:size]
        ack = data.draw(st.booleans())
        for tag in batch:
            remaining.remove(tag)
        expected, low = reference_settle(settled, low, batch, ack)
        assert tracker.settle(list(batch), ack) == expected
    assert tracker.unconfirmed == 0


def test_one_run_of_acks_is_one_multiple_confirm() -> None:
    tracker = ConfirmTracker()
    for _ in range(5):
        tracker.publish()
    assert tracker.settle([1, 2, 3], True) == [Confirm(3, True, True)]
    assert tracker.settle([4], True) == [Confirm(4, False, True)]
    with pytest.raises(ValueError):
        tracker.settle([4], True)
    with pytest.raises(ValueError):
        tracker.settle([5, 6], True)


def test_multiple_ack_takes_up_to_the_tag_in_order() -> None:
    deliveries = ChannelDeliveries()
    tags = [deliveries.delivered(None, 0, n, "q", None) for n in range(6)]  # type: ignore[arg-type]
    assert [u.delivery_tag for u in deliveries.take(tags[2], True)] == tags[:3]
    assert [u.delivery_tag for u in deliveries.take(tags[4], False)] == [tags[4]]
    assert [u.delivery_tag for u in deliveries.take(0, True)] == [tags[3], tags[5]]


# --- frame reader -------------------------------------------------------------------------------


def test_frame_reader_cuts_the_same_frames_however_bytes_arrive() -> None:
    data = b"".join(
        method_frame(1, commands.Basic.Publish(exchange="x", routing_key=f"k{n}"))
        + content_frames(1, b"b" * n, commands.Basic.Properties(delivery_mode=2))
        for n in range(5)
    )

    def frames(chunks: list[bytes | bytearray | memoryview]) -> list[Any]:
        reader = FrameReader(FRAME_MIN_SIZE, 1 << 16)
        out = []
        for chunk in chunks:
            reader.feed(chunk)
            while (frame := reader.next_frame()) is not None:
                out.append(frame)
        assert reader.buffered == 0
        return out

    whole = frames([data])
    assert len(whole) == 14  # 4 bodies (the first publish has none) + 5 methods + 5 headers
    assert frames([data[i:i + 1] for i in range(len(data))]) == whole
    assert frames([bytearray(data[:10]), memoryview(data)[10:33], data[33:]]) == whole
    assert all(type(f.payload) is bytes for f in whole)


def test_whole_publishes_take_the_same_course_as_frame_by_frame(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The batched publish path (method, header and body at once) against byte-by-byte input,
    which reads frame by frame: the same events and the same replies, errors included."""
    props = commands.Basic.Properties(delivery_mode=2)

    def publish(channel: int, body: bytes, exchange: str = "", **kw: Any) -> bytes:
        return (method_frame(channel, commands.Basic.Publish(exchange=exchange, **kw))
                + content_frames(channel, body, props, frame_max=4096))

    method = b"\x00\x3c\x00\x28\x00\x00\x04bad!\x00\x00"  # exchange "bad!" pamqp won't write
    bad_exchange = (struct.pack(">BHI", 1, 1, len(method)) + method + b"\xce"
                    + content_frames(1, b"c", props))
    stream = b"".join((
        publish(1, b"a"), publish(2, b""), publish(1, b"b" * 5000),  # empty, split body
        b"\x08\x00\x00\x00\x00\x00\x00\xce",  # heartbeat between publishes
        bad_exchange,  # channel error: its header and body are dropped
        publish(2, b"d"), publish(3, b"e"),  # channel 3 is not open: connection error
        publish(2, b"never"),
    ))

    def run(chunks: list[bytes]) -> tuple[list[Any], bytes]:
        pair = ConnectionPair()
        pair.handshake(frame_max=4096)
        pair.open_channel(1)
        pair.open_channel(2)
        out = b""
        for chunk in chunks:
            pair.server.receive_data(chunk)
            pair.pump()
            out += pair.server.data_to_send()
        events = [(type(e).__name__, getattr(e, "channel", None), getattr(e, "body", None))
                  for e in pair.events]
        return events, out

    commits: list[int] = []
    commit = FrameReader.commit
    monkeypatch.setattr(FrameReader, "commit",
                        lambda self, end: (commits.append(end), commit(self, end))[1])
    whole = run([stream])
    assert len(commits) == 4  # a, the empty one, bad! and d took the batched path
    commits.clear()
    assert whole == run([stream[i:i + 1] for i in range(len(stream))])
    assert commits == []
    bodies = [body for name, _, body in whole[0] if name == "Publish"]
    assert bodies == [b"a", b"", b"b" * 5000, b"d"]
    assert any(name == "ConnectionClosing" for name, _, _ in whole[0])


def test_a_batch_of_encoded_deliveries_is_queued_as_given() -> None:
    pair = ConnectionPair()
    pair.handshake()
    pair.open_channel(2)
    server = pair.server
    server.data_to_send()
    assert not server.has_data_to_send
    encoder = DeliverEncoder(2, "c")
    parts = [encoder.encode(n, False, "x", "k", b"\x00\x00", b"m%d" % n, server.frame_max)
             for n in (1, 2, 3)]
    assert server.send_encoded_contents(2, parts)
    assert server.has_data_to_send
    assert server.data_to_send() == b"".join(parts)
    assert not server.send_encoded_contents(5, parts)  # not open: nothing queued
    assert not server.has_data_to_send


@settings(max_examples=100, deadline=None)
@given(tag=st.integers(min_value=0, max_value=2**64 - 1), bits=st.integers(0, 255))
def test_basic_ack_fast_decode_equals_pamqp(tag: int, bits: int) -> None:
    payload = struct.pack(">HHQB", 60, 80, tag, bits)
    fast = decode_method(payload)
    slow = commands.Basic.Ack()
    slow.unmarshal(payload[4:])
    assert type(fast) is commands.Basic.Ack
    assert (fast.delivery_tag, fast.multiple) == (slow.delivery_tag, slow.multiple)
    assert type(fast.multiple) is type(slow.multiple)
    with pytest.raises(Exception, match="cannot decode"):
        decode_method(payload[:-2])  # truncated: pamqp's answer, a frame error
