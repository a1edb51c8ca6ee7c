"""Framing: the bounded frame reader, method/header decoding and the content encoder."""

from __future__ import annotations

import struct

import pytest
from fixtures.amqp.client_codec import method_frame, parse_server_output
from pamqp import commands

from handlers.amqp.errors import AMQPConnectionError, FrameError, LocalProtocolError, ReplyCode
from handlers.amqp.frames import (
    FRAME_BODY,
    FRAME_METHOD,
    PROTOCOL_HEADER,
    FrameReader,
    decode_content_header,
    decode_method,
    encode_content,
    encode_heartbeat,
    encode_method,
)


def raw_frame(frame_type: int, channel: int, payload: bytes, end: int = 0xCE) -> bytes:
    return struct.pack(">BHI", frame_type, channel, len(payload)) + payload + bytes([end])


def test_reader_needs_whole_frame_then_yields_it() -> None:
    data = method_frame(1, commands.Channel.Open())
    reader = FrameReader(4096, 4096)
    for byte in data[:-1]:
        reader.feed(bytes([byte]))
        assert reader.next_frame() is None
    reader.feed(data[-1:])
    frame = reader.next_frame()
    assert frame is not None
    assert (frame.frame_type, frame.channel) == (FRAME_METHOD, 1)
    assert isinstance(decode_method(frame.payload), commands.Channel.Open)
    assert reader.buffered == 0
    assert reader.next_frame() is None


def test_reader_bad_end_octet() -> None:
    reader = FrameReader(4096, 4096)
    reader.feed(raw_frame(FRAME_BODY, 1, b"abc", end=0x00))
    with pytest.raises(FrameError, match="end octet") as info:
        reader.next_frame()
    assert info.value.reply_code is ReplyCode.FRAME_ERROR


def test_reader_unknown_type_detected_from_header_alone() -> None:
    reader = FrameReader(4096, 4096)
    reader.feed(bytes([9, 0, 1, 0, 0, 0, 200]))  # 7 header bytes, payload not yet here
    with pytest.raises(FrameError, match="unknown frame type 9"):
        reader.next_frame()


def test_reader_rejects_oversized_frame_before_buffering_payload() -> None:
    reader = FrameReader(4096, 4096)
    reader.feed(struct.pack(">BHI", FRAME_BODY, 1, 4096 - 7))  # one byte over payload limit
    with pytest.raises(FrameError, match="exceeds frame_max"):
        reader.next_frame()
    ok = FrameReader(4096, 4096)
    ok.feed(raw_frame(FRAME_BODY, 1, b"x" * (4096 - 8)))
    frame = ok.next_frame()
    assert frame is not None and len(frame.payload) == 4096 - 8


def test_reader_buffer_is_bounded() -> None:
    reader = FrameReader(4096, 4096)
    reader.feed(b"\x01" * 8192)
    with pytest.raises(LocalProtocolError, match="drain"):
        reader.feed(b"\x01")


def test_protocol_header_answers_early_on_mismatch() -> None:
    reader = FrameReader(4096, 4096)
    reader.feed(b"AMQ")
    assert reader.read_protocol_header() is None
    reader.feed(b"P\x00\x00\x09")
    assert reader.read_protocol_header() is None
    reader.feed(b"\x01")
    assert reader.read_protocol_header() == PROTOCOL_HEADER
    http = FrameReader(4096, 4096)
    http.feed(b"GET")
    assert http.read_protocol_header() == b"GET"


def test_decode_method_errors_are_typed() -> None:
    with pytest.raises(AMQPConnectionError) as short:
        decode_method(b"\x00\x14")
    assert short.value.reply_code is ReplyCode.FRAME_ERROR
    with pytest.raises(AMQPConnectionError) as unknown:
        decode_method(struct.pack(">HH", 99, 1))
    assert (unknown.value.reply_code, unknown.value.class_id) == (ReplyCode.NOT_IMPLEMENTED, 99)
    # queue.declare whose arguments table claims more bytes than there are
    declare = struct.pack(">HHH", 50, 10, 0) + b"\x01q" + b"\x00" + struct.pack(">I", 1000)
    with pytest.raises(AMQPConnectionError) as bad:
        decode_method(declare)
    assert bad.value.reply_code is ReplyCode.FRAME_ERROR
    assert (bad.value.class_id, bad.value.method_id) == (50, 10)


def test_decode_content_header_roundtrip_and_garbage() -> None:
    props = commands.Basic.Properties(content_type="text/plain", headers={"a": {"b": [1]}})
    data = encode_content(1, commands.Basic.Publish(exchange="x"), props, b"hello", 4096)
    replies = parse_server_output(data)
    assert replies[1] == (1, ("header", 5, props))
    with pytest.raises(AMQPConnectionError):
        decode_content_header(b"\x00\x3c\x00\x00" + b"\x00" * 8 + b"\xff\xff")


def test_encode_content_splits_at_frame_max() -> None:
    body = bytes(range(256)) * 40  # 10240 bytes
    data = encode_content(
        3,
        commands.Basic.Deliver(consumer_tag="c", delivery_tag=1, exchange="x", routing_key="k"),
        commands.Basic.Properties(),
        body,
        4096,
    )
    frames = parse_server_output(data)
    bodies = [f[1] for f in frames if isinstance(f[1], tuple) and f[1][0] == "body"]
    assert [len(b[1]) for b in bodies] == [4088, 4088, 2064]
    assert b"".join(b[1] for b in bodies) == body
    assert all(channel == 3 for channel, _ in frames)


def test_encode_content_empty_body_has_no_body_frame() -> None:
    data = encode_content(1, commands.Basic.GetEmpty(), commands.Basic.Properties(), b"", 4096)
    kinds = [f[1] for f in parse_server_output(data)]
    assert len(kinds) == 2 and kinds[1] == ("header", 0, commands.Basic.Properties())


def test_encode_method_invalid_arguments_is_local_error() -> None:
    method = commands.Queue.DeclareOk(queue="q", message_count=0, consumer_count=0)
    method.queue = "bad name!"  # pamqp validates in __init__ too, so set it afterwards
    with pytest.raises(LocalProtocolError):
        encode_method(1, method)


def test_heartbeat_frame_bytes() -> None:
    assert encode_heartbeat() == b"\x08\x00\x00\x00\x00\x00\x00\xce"
