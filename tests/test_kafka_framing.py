"""Kafka request framing: whole, byte-by-byte and arbitrarily split input; size limits; EOF."""

from __future__ import annotations

import itertools
import struct
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from handlers.kafka import framing
from handlers.kafka.codec import KafkaRequest, UnsupportedApiVersionsRequest
from handlers.kafka.errors import (
    FrameSizeError,
    KafkaCodecError,
    MalformedRequestError,
    TruncatedFrameError,
    UnsupportedVersionError,
)
from handlers.kafka.framing import KafkaServerConnection, RequestEvent, frame

FIXTURES = Path(__file__).parent / "fixtures" / "kafka"
# Requests at versions we serve (the ApiVersions v4 captures become UnsupportedApiVersions).
FRAMES = [p.read_bytes() for p in sorted(FIXTURES.glob("*.bin"))]
STREAM = b"".join(FRAMES)


def drain(conn: KafkaServerConnection) -> list[RequestEvent]:
    events = []
    while (event := conn.next_request()) is not None:
        events.append(event)
    return events


def summary(events: list[RequestEvent]) -> list[tuple[int, int, int]]:
    return [(e.header.api_key, e.header.api_version, e.header.correlation_id) for e in events]


def expected_summary() -> list[tuple[int, int, int]]:
    return [struct.unpack_from(">hhi", raw, 4) for raw in FRAMES]


def feed(chunks: list[bytes]) -> list[RequestEvent]:
    conn = KafkaServerConnection()
    events: list[RequestEvent] = []
    for chunk in chunks:
        conn.receive_data(chunk)
        events += drain(conn)
    conn.receive_data(b"")
    events += drain(conn)
    assert conn.closed
    assert conn.buffered == 0
    return events


def test_whole_stream_at_once() -> None:
    events = feed([STREAM])
    assert summary(events) == expected_summary()
    unsupported = [e for e in events if isinstance(e, UnsupportedApiVersionsRequest)]
    assert [e.header.api_version for e in unsupported] == [4, 4]
    assert all(isinstance(e, KafkaRequest) for e in events if e not in unsupported)
    produced = [e.body.topic_data[0].partition_data[0].records for e in events
                if isinstance(e, KafkaRequest) and e.api_key == 0]
    assert produced and all(r.obj is STREAM for r in produced)  # views of the received chunk


def test_one_byte_at_a_time() -> None:
    events = feed([STREAM[i : i + 1] for i in range(len(STREAM))])
    assert summary(events) == expected_summary()


def test_one_frame_per_chunk_and_mutable_buffers() -> None:
    events = feed([bytes(f) for f in FRAMES[:10]] + [bytearray(f) for f in FRAMES[10:]])
    assert summary(events) == expected_summary()


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(0, len(STREAM)), max_size=40))
def test_arbitrary_splits(cuts: list[int]) -> None:
    bounds = [0, *sorted(cuts), len(STREAM)]
    chunks = [STREAM[a:b] for a, b in itertools.pairwise(bounds) if b > a]
    assert summary(feed(chunks)) == expected_summary()


def test_nothing_is_returned_until_the_frame_is_complete() -> None:
    conn = KafkaServerConnection()
    raw = FRAMES[0]
    conn.receive_data(raw[:-1])
    assert conn.next_request() is None
    assert conn.buffered == len(raw) - 5  # the size prefix is consumed
    conn.receive_data(raw[-1:])
    assert isinstance(conn.next_request(), KafkaRequest)
    assert conn.next_request() is None


@pytest.mark.parametrize("size", [-1, -(2**31), 1025, 2**31 - 1])
def test_bad_size_is_refused_before_the_body_arrives(size: int) -> None:
    conn = KafkaServerConnection(max_request_size=1024)
    conn.receive_data(struct.pack(">i", size))  # no body at all
    with pytest.raises(FrameSizeError) as info:
        conn.next_request()
    assert (info.value.size, info.value.max_size) == (size, 1024)
    with pytest.raises(FrameSizeError):  # sticky: the stream is out of sync
        conn.next_request()


def test_a_frame_of_exactly_the_maximum_size_is_accepted() -> None:
    raw = FRAMES[0]
    conn = KafkaServerConnection(max_request_size=len(raw) - 4)
    conn.receive_data(raw)
    assert isinstance(conn.next_request(), KafkaRequest)


def test_bad_max_request_size() -> None:
    with pytest.raises(ValueError):
        KafkaServerConnection(max_request_size=0)
    with pytest.raises(ValueError):
        KafkaServerConnection(max_request_size=2**31)


@pytest.mark.parametrize("keep", [1, 3, 4, 10])
def test_eof_inside_a_frame(keep: int) -> None:
    conn = KafkaServerConnection()
    conn.receive_data(FRAMES[0][:keep])
    assert conn.next_request() is None
    conn.receive_data(b"")
    with pytest.raises(TruncatedFrameError):
        conn.next_request()
    assert not conn.closed


def test_eof_after_complete_frames_and_no_data_after_eof() -> None:
    conn = KafkaServerConnection()
    conn.receive_data(FRAMES[0] + FRAMES[1])
    conn.receive_data(b"")
    assert not conn.closed
    assert len(drain(conn)) == 2
    assert conn.closed
    with pytest.raises(RuntimeError):
        conn.receive_data(b"x")


def test_errors_from_the_codec_are_sticky_and_keep_the_correlation_id() -> None:
    conn = KafkaServerConnection()
    produce_v2 = struct.pack(">hhih", 0, 2, 77, -1)
    conn.receive_data(frame(produce_v2) + FRAMES[0])
    with pytest.raises(UnsupportedVersionError) as info:
        conn.next_request()
    assert info.value.correlation_id == 77
    with pytest.raises(UnsupportedVersionError):
        conn.next_request()


def test_empty_frame_is_malformed() -> None:
    conn = KafkaServerConnection()
    conn.receive_data(frame(b""))
    with pytest.raises(MalformedRequestError):
        conn.next_request()


def test_a_frame_received_as_one_chunk_is_decoded_without_a_copy(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    seen: list[object] = []
    monkeypatch.setattr(framing, "decode_request", lambda data, apis: seen.append(data))
    raw = FRAMES[0]
    body = raw[4:]
    conn = KafkaServerConnection()
    conn.receive_data(raw[:4])
    conn.receive_data(body)
    conn.next_request()
    assert seen[0] is body


@settings(max_examples=300, deadline=None)
@given(st.lists(st.binary(min_size=1, max_size=64), max_size=8))
def test_fuzz_arbitrary_streams_raise_only_codec_errors(chunks: list[bytes]) -> None:
    conn = KafkaServerConnection(max_request_size=4096)
    try:
        for chunk in [*chunks, b""]:
            conn.receive_data(chunk)
            drain(conn)
    except KafkaCodecError:
        pass
