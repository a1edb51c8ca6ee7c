"""Fuzzing: whatever bytes a client sends, the server state machine only produces its own events
(closing the connection where needed) and never raises.
"""

from __future__ import annotations

import struct

from fixtures.amqp.client_codec import ConnectionPair, method_frame, parse_server_output
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pamqp import commands

from handlers.amqp import ConnectionClosed, ConnectionState, ServerConnection
from handlers.amqp.events import (
    AuthenticationRequest,
    ChannelClosed,
    ChannelFlow,
    ChannelOpened,
    ConnectionClosing,
    ConnectionTuned,
    MethodReceived,
    Publish,
    VhostRequest,
)
from handlers.amqp.frames import PROTOCOL_HEADER

EVENT_TYPES = (
    AuthenticationRequest,
    ConnectionTuned,
    VhostRequest,
    ChannelOpened,
    ChannelClosed,
    ChannelFlow,
    Publish,
    MethodReceived,
    ConnectionClosing,
    ConnectionClosed,
)
METHOD_IDS = sorted(commands.INDEX_MAPPING)
FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def drive(conn: ServerConnection, chunks: list[bytes]) -> None:
    """Feed chunks, answering requests positively, and check the event stream's invariants."""
    closed = False
    for chunk in chunks:
        conn.receive_data(chunk)
        while (event := conn.next_event()) is not None:
            assert isinstance(event, EVENT_TYPES)
            assert not closed, "event after ConnectionClosed"
            if isinstance(event, AuthenticationRequest):
                conn.accept_auth()
            elif isinstance(event, VhostRequest):
                conn.accept_vhost()
            elif isinstance(event, ConnectionClosed):
                closed = True
        out = conn.data_to_send()
        if out and not out.startswith(b"AMQP"):
            parse_server_output(out)  # whatever we send is well-formed
    assert closed == (conn.state is ConnectionState.CLOSED)


def opened_connection() -> ServerConnection:
    pair = ConnectionPair()
    pair.handshake(frame_max=4096)
    pair.open_channel(1)
    return pair.server


frames = st.builds(
    lambda frame_type, channel, payload, end: (
        struct.pack(">BHI", frame_type, channel, len(payload)) + payload + bytes([end])
    ),
    st.sampled_from([1, 2, 3, 8, 0, 4, 255]),
    st.sampled_from([0, 1, 2, 65535]),
    st.binary(max_size=64),
    st.sampled_from([0xCE, 0xCE, 0xCE, 0x00]),
)
method_frames = st.builds(
    lambda channel, index, args: (
        struct.pack(">BHI", 1, channel, 4 + len(args)) + struct.pack(">I", index) + args + b"\xce"
    ),
    st.sampled_from([0, 1, 2]),
    st.sampled_from(METHOD_IDS),
    st.binary(max_size=48),
)


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    chunks, last = [], 0
    for point in [*points, len(data)]:
        chunks.append(data[last:point])
        last = point
    return [c for c in chunks if c]


@FUZZ
@given(st.binary(max_size=512), st.lists(st.integers(0, 512), max_size=5))
def test_arbitrary_bytes_from_scratch(data: bytes, cuts: list[int]) -> None:
    drive(ServerConnection(), split(data, cuts))


@FUZZ
@given(st.binary(max_size=512), st.lists(st.integers(0, 512), max_size=5))
def test_arbitrary_bytes_after_protocol_header(data: bytes, cuts: list[int]) -> None:
    drive(ServerConnection(), [PROTOCOL_HEADER, *split(data, cuts)])


@FUZZ
@given(st.lists(st.one_of(frames, method_frames), max_size=12))
def test_arbitrary_frames_on_open_connection(chunks: list[bytes]) -> None:
    drive(opened_connection(), chunks)


@FUZZ
@given(st.lists(method_frames, max_size=8))
def test_random_method_arguments_during_handshake(chunks: list[bytes]) -> None:
    drive(ServerConnection(), [PROTOCOL_HEADER, *chunks])


@FUZZ
@given(st.binary(max_size=300))
def test_random_content_header_after_publish(header_payload: bytes) -> None:
    publish = method_frame(1, commands.Basic.Publish(exchange="x", routing_key="k"))
    header = struct.pack(">BHI", 2, 1, len(header_payload)) + header_payload + b"\xce"
    drive(opened_connection(), [publish, header, b"\x03\x00\x01\x00\x00\x00\x01x\xce"])
