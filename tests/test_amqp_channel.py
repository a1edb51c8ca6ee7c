"""Channels: open/close handshakes, flow, content assembly, limits and name validation."""

from __future__ import annotations

import struct

import pytest
from fixtures.amqp.client_codec import (
    ConnectionPair,
    assert_channel_close,
    assert_connection_close,
    content_frames,
    method_frame,
    parse_server_output,
)
from pamqp import commands

from handlers.amqp import (
    ChannelClosed,
    ChannelFlow,
    ChannelOpened,
    ConnectionClosing,
    LocalProtocolError,
    MethodReceived,
    NamePolicy,
    Publish,
    ReplyCode,
    ServerSettings,
)


def opened(settings: ServerSettings | None = None, channel: int = 1) -> ConnectionPair:
    pair = ConnectionPair(settings)
    pair.handshake()
    pair.open_channel(channel)
    return pair


def publish_frames(channel: int, exchange: str = "ex", routing_key: str = "rk") -> bytes:
    return method_frame(channel, commands.Basic.Publish(exchange=exchange, routing_key=routing_key))


# ----------------------------------------------------------------------- open / close


def test_open_reports_event_and_open_channels() -> None:
    pair = opened()
    assert isinstance(pair.events[-1], ChannelOpened) and pair.events[-1].channel == 1
    pair.open_channel(7)
    assert pair.server.open_channels == frozenset({1, 7})


def test_frame_on_unopened_channel_is_channel_error() -> None:
    pair = opened()
    replies = pair.method(2, commands.Basic.Qos(prefetch_count=1))
    assert_connection_close(replies, ReplyCode.CHANNEL_ERROR)
    assert isinstance(pair.events[-1], ConnectionClosing)


def test_content_on_unopened_channel_is_channel_error() -> None:
    pair = opened()
    replies = pair.send(content_frames(3, b"x"))
    assert_connection_close(replies, ReplyCode.CHANNEL_ERROR)


def test_open_above_channel_max_is_not_allowed() -> None:
    pair = ConnectionPair(ServerSettings(channel_max=10))
    pair.handshake()
    replies = pair.method(11, commands.Channel.Open())
    assert_connection_close(replies, ReplyCode.NOT_ALLOWED)


def test_open_twice_is_channel_error() -> None:
    pair = opened()
    replies = pair.method(1, commands.Channel.Open())
    assert_connection_close(replies, ReplyCode.CHANNEL_ERROR)


def test_client_close_frees_the_number() -> None:
    pair = opened()
    replies = pair.method(
        1, commands.Channel.Close(reply_code=200, reply_text="bye", class_id=0, method_id=0)
    )
    assert [(ch, type(m)) for ch, m in replies] == [(1, commands.Channel.CloseOk)]
    assert pair.events[-1] == ChannelClosed(1, 200, "bye", by_peer=True)
    assert pair.server.open_channels == frozenset()
    pair.open_channel(1)  # reusable


def test_unsolicited_close_ok_is_command_invalid() -> None:
    pair = opened()
    replies = pair.method(1, commands.Channel.CloseOk())
    assert_connection_close(replies, ReplyCode.COMMAND_INVALID)


def test_server_close_ignores_everything_until_close_ok() -> None:
    pair = opened()
    assert pair.server.close_channel(1, ReplyCode.NOT_FOUND, "no queue 'q'", 50, 10)
    assert pair.server.close_channel(1, ReplyCode.NOT_FOUND, "again") is False
    replies = parse_server_output(pair.server.data_to_send())
    assert_channel_close(replies, 1, ReplyCode.NOT_FOUND)
    assert pair.server.open_channels == frozenset()
    # In flight from the client: methods, a publish with content, even bad content: all dropped.
    assert pair.method(1, commands.Queue.Declare(queue="q")) == []
    assert pair.send(publish_frames(1) + content_frames(1, b"body")) == []
    assert pair.send(content_frames(1, b"stray")) == []
    assert pair.pump() == []
    # The broker cannot send on it either.
    assert pair.server.send_method(1, commands.Basic.QosOk()) is False
    # Crossing close from the client is answered; our close completes with its close-ok.
    crossing = pair.method(
        1, commands.Channel.Close(reply_code=200, reply_text="", class_id=0, method_id=0)
    )
    assert [type(m) for _, m in crossing] == [commands.Channel.CloseOk]
    pair.method(1, commands.Channel.CloseOk())
    assert pair.events[-1] == ChannelClosed(1, 404, "no queue 'q'", by_peer=False)
    # Now the number is free: frames on it are a channel error again, open works.
    pair.open_channel(1)


def test_flow_is_answered_and_reported() -> None:
    pair = opened()
    replies = pair.method(1, commands.Channel.Flow(active=False))
    assert len(replies) == 1
    flow_ok = replies[0][1]
    assert isinstance(flow_ok, commands.Channel.FlowOk) and flow_ok.active is False
    assert pair.events[-1] == ChannelFlow(1, False)
    pair.method(1, commands.Channel.Flow(active=True))
    assert pair.events[-1] == ChannelFlow(1, True)


# ------------------------------------------------------------------- content assembly


def test_publish_assembled_from_many_body_frames() -> None:
    pair = ConnectionPair()
    pair.handshake(frame_max=4096)
    pair.open_channel(1)
    body = bytes(range(256)) * 50  # 12800 bytes → 4 body frames at frame-max 4096
    props = commands.Basic.Properties(
        content_type="text/plain", headers={"a": {"b": [1, "two", {"c": None}]}}, priority=3
    )
    data = publish_frames(1) + content_frames(1, body, props, frame_max=4096)
    for i in range(0, len(data), 1000):
        assert pair.send(data[i : i + 1000]) == []
    publish = pair.events[-1]
    assert isinstance(publish, Publish)
    assert publish.channel == 1 and publish.body == body
    assert publish.properties == props
    assert (publish.method.exchange, publish.method.routing_key) == ("ex", "rk")


def test_empty_body_publish_completes_on_header() -> None:
    pair = opened()
    pair.send(publish_frames(1) + content_frames(1, b""))
    publish = pair.events[-1]
    assert isinstance(publish, Publish) and publish.body == b""


def test_interleaved_channels_assemble_independently() -> None:
    pair = opened()
    pair.open_channel(2)
    h1 = content_frames(1, b"one")
    h2 = content_frames(2, b"two!")
    pair.send(publish_frames(1) + publish_frames(2) + h2 + h1)
    bodies = {e.channel: e.body for e in pair.events if isinstance(e, Publish)}
    assert bodies == {1: b"one", 2: b"two!"}


@pytest.mark.parametrize(
    "data",
    [
        publish_frames(1) + method_frame(1, commands.Basic.Qos(prefetch_count=1)),
        publish_frames(1) + content_frames(1, b"abc")[-11:],  # body frame without a header
        content_frames(1, b"abc"),  # header without a publish
        publish_frames(1) + content_frames(1, b"abcdef", body_size=3),  # body over size
    ],
    ids=["method-for-header", "body-for-header", "header-without-publish", "body-too-long"],
)
def test_content_out_of_sequence_is_unexpected_frame(data: bytes) -> None:
    pair = opened()
    replies = pair.send(data)
    assert_connection_close(replies, ReplyCode.UNEXPECTED_FRAME)


def test_method_between_body_frames_is_unexpected_frame() -> None:
    pair = opened()
    replies = pair.send(
        publish_frames(1)
        + content_frames(1, b"abc", body_size=6)
        + method_frame(1, commands.Basic.Qos(prefetch_count=1))
    )
    assert_connection_close(replies, ReplyCode.UNEXPECTED_FRAME)


def test_content_header_for_other_class_is_unexpected_frame() -> None:
    pair = opened()
    header = bytearray(content_frames(1, b""))
    header[7:9] = b"\x00\x32"  # class 50 (queue) instead of 60
    replies = pair.send(publish_frames(1) + bytes(header))
    assert_connection_close(replies, ReplyCode.UNEXPECTED_FRAME)


def test_message_over_max_size_is_precondition_failed_on_the_channel() -> None:
    pair = opened(ServerSettings(max_message_size=1000))
    pair.open_channel(2)
    body = b"x" * 1001
    replies = pair.send(publish_frames(1) + content_frames(1, body))
    assert_channel_close(replies, 1, ReplyCode.PRECONDITION_FAILED)
    assert not any(isinstance(e, Publish) for e in pair.events)
    # The connection and other channels carry on.
    pair.send(publish_frames(2) + content_frames(2, b"x" * 1000))
    publish = pair.events[-1]
    assert isinstance(publish, Publish) and publish.channel == 2


# --------------------------------------------------------------- methods and validation


@pytest.mark.parametrize(
    "method",
    [
        commands.Exchange.Declare(exchange="orders", exchange_type="topic"),
        commands.Exchange.Bind(destination="a", source="b", routing_key="#"),
        commands.Queue.Declare(queue="", exclusive=True),
        commands.Queue.Bind(queue="q", exchange="orders", routing_key="eu.*"),
        commands.Basic.Consume(queue="q", consumer_tag="c1"),
        commands.Basic.Ack(delivery_tag=5, multiple=True),
        commands.Basic.Nack(delivery_tag=5, requeue=False),
        commands.Basic.Qos(prefetch_count=10, global_=True),
        commands.Confirm.Select(),
        commands.Tx.Select(),
        commands.Basic.Get(queue="celery@host.celery.pidbox"),
    ],
    ids=lambda m: m.name,
)
def test_broker_methods_are_passed_upward(method: commands.Basic.Ack) -> None:
    pair = opened()
    assert pair.method(1, method) == []
    event = pair.events[-1]
    assert isinstance(event, MethodReceived)
    assert event.channel == 1 and type(event.method) is type(method)
    assert dict(event.method) == dict(method)


def test_server_only_method_from_client_is_command_invalid() -> None:
    pair = opened()
    deliver = commands.Basic.Deliver(consumer_tag="c", delivery_tag=1, exchange="", routing_key="")
    replies = pair.method(1, deliver)
    assert_connection_close(replies, ReplyCode.COMMAND_INVALID)


def test_connection_method_on_channel_is_command_invalid() -> None:
    pair = opened()
    replies = pair.method(1, commands.Connection.Open(virtual_host="/"))
    assert_connection_close(replies, ReplyCode.COMMAND_INVALID)


@pytest.mark.parametrize(
    ("method", "code"),
    [
        (commands.Exchange.Declare(exchange="amq.mine"), ReplyCode.ACCESS_REFUSED),
        (commands.Exchange.Declare(exchange=""), ReplyCode.ACCESS_REFUSED),
        (commands.Exchange.Delete(exchange="amq.direct"), ReplyCode.ACCESS_REFUSED),
        (commands.Queue.Declare(queue="amq.q"), ReplyCode.ACCESS_REFUSED),
    ],
)
def test_reserved_names_are_refused(method: commands.Queue.Declare, code: ReplyCode) -> None:
    pair = opened()
    replies = pair.method(1, method)
    assert_channel_close(replies, 1, code)
    assert 1 not in pair.server.open_channels


def test_passive_declare_of_reserved_name_is_allowed() -> None:
    pair = opened()
    pair.method(1, commands.Exchange.Declare(exchange="amq.topic", passive=True))
    assert isinstance(pair.events[-1], MethodReceived)


def _raw_queue_declare(channel: int, name: bytes) -> bytes:
    payload = struct.pack(">HHH", 50, 10, 0) + bytes([len(name)]) + name + b"\x00"
    payload += struct.pack(">I", 0)
    return struct.pack(">BHI", 1, channel, len(payload)) + payload + b"\xce"


@pytest.mark.parametrize(
    ("policy", "name", "accepted"),
    [
        (NamePolicy.COMPATIBLE, b"celery@host.pidbox", True),
        (NamePolicy.COMPATIBLE, b"orders/eu", True),
        (NamePolicy.COMPATIBLE, b"bad!name", False),
        (NamePolicy.COMPATIBLE, b"tab\tname", False),
        (NamePolicy.COMPATIBLE, b"q" * 255, True),
        (NamePolicy.STRICT, b"orders.eu:1", True),
        (NamePolicy.STRICT, b"celery@host", False),
        (NamePolicy.STRICT, b"q" * 128, False),
    ],
)
def test_queue_name_policy(policy: NamePolicy, name: bytes, accepted: bool) -> None:
    pair = opened(ServerSettings(name_policy=policy))
    replies = pair.send(_raw_queue_declare(1, name))
    if accepted:
        assert replies == []
        event = pair.events[-1]
        assert isinstance(event, MethodReceived)
        assert isinstance(event.method, commands.Queue.Declare)
        assert event.method.queue == name.decode()
    else:
        assert_channel_close(replies, 1, ReplyCode.PRECONDITION_FAILED)


def test_exchange_name_over_127_is_precondition_failed() -> None:
    pair = opened()
    # pamqp refuses to encode such a name, but a client can still send it: build it by hand.
    payload = b"\x00\x3c\x00\x28\x00\x00" + bytes([128]) + b"e" * 128 + b"\x00\x00"
    replies = pair.send(b"\x01\x00\x01" + len(payload).to_bytes(4, "big") + payload + b"\xce")
    assert_channel_close(replies, 1, ReplyCode.PRECONDITION_FAILED)


def test_invalid_utf8_name_is_frame_error() -> None:
    pair = opened()
    replies = pair.send(_raw_queue_declare(1, b"\xff\xfe"))
    assert_connection_close(replies, ReplyCode.FRAME_ERROR)


@pytest.mark.parametrize(
    "method",
    [
        commands.Basic.Publish(exchange="x", routing_key="k", immediate=True),
        commands.Basic.Qos(prefetch_size=1024),
    ],
    ids=["publish-immediate", "qos-prefetch-size"],
)
def test_unsupported_flags_are_not_implemented(method: commands.Basic.Qos) -> None:
    pair = opened()
    replies = pair.method(1, method)
    assert_connection_close(replies, ReplyCode.NOT_IMPLEMENTED)


def test_broker_close_channel_codes() -> None:
    pair = opened()
    with pytest.raises(LocalProtocolError):
        pair.server.close_channel(1, ReplyCode.COMMAND_INVALID, "a connection-level code")
    assert pair.server.close_channel(1, ReplyCode.REPLY_SUCCESS, "consumer done")
    replies = parse_server_output(pair.server.data_to_send())
    assert_channel_close(replies, 1, ReplyCode.REPLY_SUCCESS)


def test_send_content_uses_negotiated_frame_max() -> None:
    pair = ConnectionPair()
    pair.handshake(frame_max=4096)
    pair.open_channel(1)
    deliver = commands.Basic.Deliver(
        consumer_tag="c1", delivery_tag=1, exchange="ex", routing_key="rk"
    )
    body = b"z" * 10000
    props = commands.Basic.Properties(content_type="text/plain")
    assert pair.server.send_content(1, deliver, props, body)
    frames = parse_server_output(pair.server.data_to_send())
    assert isinstance(frames[0][1], commands.Basic.Deliver)
    assert frames[1] == (1, ("header", 10000, props))
    chunks = [f[1][1] for f in frames[2:] if isinstance(f[1], tuple)]
    assert [len(c) for c in chunks] == [4088, 4088, 1824]
    assert b"".join(chunks) == body
    with pytest.raises(LocalProtocolError):
        pair.server.send_content(0, deliver, props, body)
