"""The hand-written Fetch response encoder: byte-for-byte what kafka-python encodes.

:class:`handlers.kafka.service.fetch.FetchResponse` encodes itself so that stored batches
are sent by reference; its frame must equal the generic codec's encoding of the same
response (kafka-python's generated encoder) for every served version, v4-12.
"""

from __future__ import annotations

import os
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from handlers.kafka import registry
from handlers.kafka.apis import ApiKey
from handlers.kafka.codec import encode_response
from handlers.kafka.service.fetch import (
    BY_REFERENCE_BYTES,
    FetchableTopic,
    FetchResponse,
    PartitionData,
)

VERSIONS = range(4, 13)


def kafka_python_frame(response: FetchResponse, correlation_id: int) -> bytes:
    """The same response built as kafka-python objects and encoded by the codec."""
    cls = registry.response_class(ApiKey.Fetch, response.version)
    topic_cls = cls.FetchableTopicResponse
    part_cls = topic_cls.PartitionData
    aborted_cls = part_cls.AbortedTransaction
    topics = [
        topic_cls(topic=t.topic, partitions=[
            part_cls(partition_index=p.partition_index, error_code=p.error_code,
                     high_watermark=p.high_watermark, last_stable_offset=p.last_stable_offset,
                     log_start_offset=p.log_start_offset,
                     aborted_transactions=None if p.aborted_transactions is None else [
                         aborted_cls(producer_id=pid, first_offset=first)
                         for pid, first in p.aborted_transactions],
                     preferred_read_replica=p.preferred_read_replica,
                     records=b"".join(p.batches))
            for p in t.partitions])
        for t in response.responses
    ]
    body = cls(throttle_time_ms=response.throttle_time_ms, error_code=response.error_code,
               session_id=response.session_id, responses=topics)
    return encode_response(int(ApiKey.Fetch), response.version, correlation_id, body)


def sample(version: int) -> FetchResponse:
    small = os.urandom(100)
    large = memoryview(os.urandom(BY_REFERENCE_BYTES + 7))
    return FetchResponse(version, [
        FetchableTopic("orders", [
            PartitionData(0, 0, 42, 40, 3, None, [small, large, large, small]),
            PartitionData(1, 1, -1, -1, -1, None, []),  # an error, no records
            PartitionData(2, 0, 7, 7, 0, [], [small]),
        ]),
        FetchableTopic("ünïcode-tøpic", [
            PartitionData(5, 0, 1 << 40, 1 << 40, 1 << 39, [(17, 3), (18, -1)], [large]),
        ]),
    ], error_code=0, session_id=0, throttle_time_ms=12)


@pytest.mark.parametrize("version", VERSIONS)
def test_matches_kafka_python_byte_for_byte(version: int) -> None:
    response = sample(version)
    assert b"".join(response.encode_frame(99)) == kafka_python_frame(response, 99)


@pytest.mark.parametrize("version", VERSIONS)
def test_empty_and_error_responses(version: int) -> None:
    for response in (FetchResponse(version, []),
                     FetchResponse(version, [], error_code=70 if version >= 7 else 0),
                     FetchResponse(version, [FetchableTopic("t", [])])):
        assert b"".join(response.encode_frame(-5)) == kafka_python_frame(response, -5)


def test_large_batches_are_sent_by_reference_small_ones_copied() -> None:
    small = b"s" * 10
    large = memoryview(bytearray(BY_REFERENCE_BYTES))
    response = FetchResponse(12, [FetchableTopic("t", [
        PartitionData(0, 0, 1, 1, 0, None, [small, large, small, small, large])])])
    frame = response.encode_frame(1)
    assert [buf is large for buf in frame] == [False, True, False, True, False]
    assert all(isinstance(buf, bytearray) for buf in frame if buf is not large)
    assert int.from_bytes(frame[0][:4], "big") == sum(len(b) for b in frame) - 4


def test_records_property_joins_the_batches() -> None:
    part = PartitionData(0, 0, 1, 1, 0, None, [b"ab", memoryview(b"cd")])
    assert part.records == b"abcd"


def test_versions_outside_4_to_12_are_refused() -> None:
    for version in (3, 13):
        with pytest.raises(ValueError, match="4-12"):
            FetchResponse(version, []).encode_frame(1)


_ints32 = st.integers(-(2**31), 2**31 - 1)
_ints64 = st.integers(-(2**63), 2**63 - 1)
_batches = st.lists(st.one_of(st.binary(max_size=64),
                              st.integers(BY_REFERENCE_BYTES, BY_REFERENCE_BYTES + 64).map(
                                  lambda n: memoryview(bytes(n)))), max_size=4)
_partitions = st.builds(
    PartitionData, _ints32, st.integers(-1, 120), _ints64, _ints64, _ints64,
    st.none() | st.lists(st.tuples(_ints64, _ints64), max_size=3), _batches, _ints32)
_topics = st.builds(FetchableTopic, st.text(max_size=20),
                    st.lists(_partitions, max_size=3))


@settings(max_examples=150, deadline=None)
@given(st.sampled_from(VERSIONS), st.lists(_topics, max_size=3), st.integers(-1, 120),
       _ints32, st.integers(0, 2**31 - 1), _ints32)
def test_any_response_matches_kafka_python(version: int, topics: list[FetchableTopic],
                                           error: int, session_id: int, throttle: int,
                                           correlation_id: int) -> None:
    response: Any = FetchResponse(version, topics, error_code=error, session_id=session_id,
                                  throttle_time_ms=throttle)
    if version < 7:
        response.error_code = response.session_id = 0  # not in the wire format before v7
    if version < 11:
        for topic in topics:
            for part in topic.partitions:
                part.preferred_read_replica = -1
    assert (b"".join(response.encode_frame(correlation_id))
            == kafka_python_frame(response, correlation_id))
