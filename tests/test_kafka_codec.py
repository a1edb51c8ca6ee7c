"""Kafka codec: captured request frames decode and re-encode; responses encode to exact bytes."""

from __future__ import annotations

import contextlib
import json
import struct
import subprocess
import sys
from pathlib import Path
from typing import Any

import kafka.errors
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tools import require_tool

from handlers.kafka import registry
from handlers.kafka.apis import SUPPORTED_APIS, ApiKey, ApiVersionRange
from handlers.kafka.codec import (
    KafkaRequest,
    RequestHeader,
    UnsupportedApiVersionsRequest,
    api_versions_response,
    decode_request,
    decode_request_header,
    encode_request,
    encode_response,
    encode_unsupported_api_versions,
)
from handlers.kafka.errors import (
    ErrorCode,
    KafkaCodecError,
    MalformedRequestError,
    UnsupportedApiKeyError,
    UnsupportedVersionError,
)

FIXTURES = Path(__file__).parent / "fixtures" / "kafka"
FRAMES = sorted(FIXTURES.glob("*.bin"))
CLIENT_IDS = {"kcat": "rdkafka", "librdkafka": "rdkafka", "kafkapython": "kafka-python",
              "aiokafka": "aiokafka"}
# Every version kafka-python can decode, to check fixtures outside what we serve.
ALL_VERSIONS = {key: ApiVersionRange(ApiKey(key), 0, spec.max_version)
                for key, spec in registry.SPECS.items()}


def parse_name(path: Path) -> tuple[str, int, str]:
    api, version, client, _ = path.stem.split("_")
    return api, int(version.removeprefix("v")), client


def payload(path: Path) -> bytes:
    raw = path.read_bytes()
    (size,) = struct.unpack_from(">i", raw)
    assert size == len(raw) - 4
    return raw[4:]


def decode_any(path: Path) -> KafkaRequest:
    request = decode_request(payload(path), ALL_VERSIONS)
    assert isinstance(request, KafkaRequest)
    return request


def test_fixtures_cover_every_client_and_api() -> None:
    seen = {parse_name(p)[0] for p in FRAMES}
    clients = {parse_name(p)[2] for p in FRAMES}
    assert seen == {"apiversions", "metadata", "produce", "fetch", "listoffsets"}
    assert clients == set(CLIENT_IDS)
    flexible = [p for p in FRAMES if decode_any(p).header.header_version == 2]
    assert flexible and len(flexible) < len(FRAMES)  # both header v1 and v2 are captured


@pytest.mark.parametrize("path", FRAMES, ids=lambda p: p.stem)
def test_fixture_decodes_to_its_class_and_version(path: Path) -> None:
    api, version, client = parse_name(path)
    request = decode_any(path)
    spec = registry.SPECS[request.api_key]
    assert spec.name.lower() == api
    assert type(request.body) is spec.request
    assert request.api_version == version == request.body.version
    assert request.header.header_version == (2 if spec.is_flexible(version) else 1)
    assert request.header.client_id is not None
    assert request.header.client_id.startswith(CLIENT_IDS[client])
    assert request.correlation_id >= 0


@pytest.mark.parametrize("path", FRAMES, ids=lambda p: p.stem)
def test_fixture_reencodes_to_the_same_bytes(path: Path) -> None:
    request = decode_any(path)
    assert encode_request(request.header, request.body) == payload(path)


@pytest.mark.parametrize("path", [p for p in FRAMES if p.name.startswith("produce")],
                         ids=lambda p: p.stem)
def test_produce_fixture_keeps_the_record_batch_as_a_view_of_the_frame(path: Path) -> None:
    frame = payload(path)
    body = decode_request(frame, ALL_VERSIONS).body
    assert body.acks in (1, -1)  # aiokafka defaults to acks=1, the others to all
    assert body.transactional_id is None
    [topic] = body.topic_data
    assert topic.name == "capture"
    [partition] = topic.partition_data
    assert partition.index == 0
    records = partition.records
    assert isinstance(records, memoryview)
    assert records.obj is frame  # a slice of the received frame, not a copy
    base_offset, batch_length, _, magic = struct.unpack_from(">qiib", records)
    assert (base_offset, magic) == (0, 2)  # one v2 record batch, kept whole
    assert batch_length == len(records) - 12
    assert bytes(records) in frame


@pytest.mark.parametrize("path", [p for p in FRAMES if p.name.startswith("fetch")],
                         ids=lambda p: p.stem)
def test_fetch_fixture_fields(path: Path) -> None:
    body = decode_any(path).body
    [topic] = body.topics
    assert topic.topic == "capture"
    assert [p.partition for p in topic.partitions] == [0]
    assert body.max_wait_ms > 0
    assert body.isolation_level in (0, 1)


@pytest.mark.parametrize("path", [p for p in FRAMES if p.name.startswith("listoffsets")],
                         ids=lambda p: p.stem)
def test_list_offsets_fixture_fields(path: Path) -> None:
    body = decode_any(path).body
    [topic] = body.topics
    assert topic.name == "capture"
    [partition] = topic.partitions
    assert partition.partition_index == 0
    assert partition.timestamp == -2  # EARLIEST: every client was told to start at the beginning


@pytest.mark.parametrize("path", [p for p in FRAMES if p.name.startswith("metadata")],
                         ids=lambda p: p.stem)
def test_metadata_fixture_fields(path: Path) -> None:
    body = decode_any(path).body
    names = None if body.topics is None else [t.name for t in body.topics]
    assert names in (None, [], ["capture"])


API_KEYS = {spec.name.lower(): key for key, spec in registry.SPECS.items()}


def test_served_fixtures_decode_with_the_default_table() -> None:
    served = [p for p in FRAMES if parse_name(p)[1] in SUPPORTED_APIS[API_KEYS[parse_name(p)[0]]]]
    assert len(served) == len(FRAMES) - 2  # all but the two ApiVersions v4 requests
    for path in served:
        assert isinstance(decode_request(payload(path)), KafkaRequest)


def test_api_versions_v4_gets_unsupported_version_in_v0_format() -> None:
    path = FIXTURES / "apiversions_v4_kafkapython_000.bin"
    event = decode_request(payload(path))
    assert isinstance(event, UnsupportedApiVersionsRequest)
    corr = event.header.correlation_id
    assert event.header.client_id == "kafka-python-producer-1"
    reply = encode_unsupported_api_versions(corr)
    # size, correlation id (header v0), error 35, [1 entry: ApiVersions 0..3]
    assert reply == struct.pack(">iihihhh", 16, corr, 35, 1, 18, 0, 3)
    decoded = registry.SPECS[18].response.decode(reply[8:], version=0)
    assert decoded.error_code == ErrorCode.UNSUPPORTED_VERSION


# -- ApiVersions responses ------------------------------------------------------------------

# What ApiVersions advertises is exactly the served table (checked elsewhere to be a subset of
# what kafka-python can encode); the bytes below are built independently of the encoder.
EXPECTED_KEYS = [(r.api_key, r.min_version, r.max_version) for r in SUPPORTED_APIS.values()]


@pytest.mark.parametrize("version", [0, 1, 2, 3])
def test_api_versions_response_bytes(version: int) -> None:
    frame = encode_response(18, version, 0x01020304, api_versions_response(version))
    (size,) = struct.unpack_from(">i", frame)
    assert size == len(frame) - 4
    assert frame[4:8] == b"\x01\x02\x03\x04"
    body = frame[8:]  # header v0 for every version, v3 included: no tagged-field byte here
    entries = b"".join(struct.pack(">hhh", *k) for k in EXPECTED_KEYS)
    if version < 3:
        expected = struct.pack(">hi", 0, len(EXPECTED_KEYS)) + entries
        if version >= 1:
            expected += struct.pack(">i", 0)  # throttle_time_ms
    else:
        # error, compact array (n+1), entries each with an empty tag section, throttle, tags
        entries = b"".join(struct.pack(">hhh", *k) + b"\x00" for k in EXPECTED_KEYS)
        expected = struct.pack(">hB", 0, len(EXPECTED_KEYS) + 1) + entries
        expected += struct.pack(">i", 0) + b"\x00"
    assert body == expected
    decoded = registry.SPECS[18].response.decode(frame, version=version, header=True,
                                                 framed=True)
    assert [(k.api_key, k.min_version, k.max_version) for k in decoded.api_keys] == EXPECTED_KEYS


def test_flexible_response_uses_header_v1() -> None:
    cls = registry.response_class(3, 9)
    body = cls(throttle_time_ms=0, brokers=[], cluster_id=None, controller_id=-1, topics=[])
    frame = encode_response(3, 9, 7, body)
    assert frame[4:9] == b"\x00\x00\x00\x07\x00"  # correlation id + empty tag section
    decoded = cls.decode(frame, version=9, header=True, framed=True)
    assert decoded.header.correlation_id == 7
    cls8 = registry.response_class(3, 8)
    frame8 = encode_response(3, 8, 7, cls8(
        throttle_time_ms=0, brokers=[], cluster_id=None, controller_id=-1, topics=[]))
    assert frame8[4:12] == b"\x00\x00\x00\x07" + b"\x00\x00\x00\x00"  # header v0, throttle
    assert cls8.decode(frame8, version=8, header=True, framed=True).header.correlation_id == 7


@pytest.mark.parametrize("version", [4, 11, 12])
def test_fetch_response_carries_stored_batch_bytes_verbatim(version: int) -> None:
    batch = bytes(decode_any(FIXTURES / "produce_v9_kafkapython_000.bin").body.topic_data[0]
                  .partition_data[0].records)
    stored = memoryview(bytearray(batch))  # what a storage read would hand us
    cls = registry.response_class(1, version)
    part = cls.FetchableTopicResponse.PartitionData(
        partition_index=0, error_code=0, high_watermark=1, last_stable_offset=1,
        log_start_offset=0, aborted_transactions=[], preferred_read_replica=-1, records=stored)
    body = cls(throttle_time_ms=0, error_code=0, session_id=0,
               responses=[cls.FetchableTopicResponse(topic="t", partitions=[part])])
    frame = encode_response(1, version, 9, body)
    assert frame.endswith(batch + (b"\x00\x00\x00" if version >= 12 else b""))
    decoded = cls.decode(frame, version=version, header=True, framed=True)
    assert decoded.responses[0].partitions[0].records == batch


def test_encode_response_rejects_a_mismatched_body() -> None:
    with pytest.raises(ValueError):
        encode_response(3, 1, 1, api_versions_response(1))


# -- errors ---------------------------------------------------------------------------------


def header_bytes(api_key: int, version: int, corr: int = 42, client: bytes = b"c") -> bytes:
    return struct.pack(">hhih", api_key, version, corr, len(client)) + client


def test_unsupported_api_key_carries_the_correlation_id() -> None:
    unserved = next(k for k in registry.SPECS if k not in SUPPORTED_APIS)
    with pytest.raises(UnsupportedApiKeyError) as info:
        decode_request(header_bytes(unserved, 0) + b"\x00\x01g\x00")
    assert (info.value.api_key, info.value.correlation_id) == (unserved, 42)


@pytest.mark.parametrize(("api_key", "version"), [(0, 2), (0, 13), (1, 3), (1, 13), (3, 12)])
def test_unserved_versions_are_refused(api_key: int, version: int) -> None:
    with pytest.raises(UnsupportedVersionError) as info:
        decode_request(header_bytes(api_key, version))
    assert info.value.api_version == version


@pytest.mark.parametrize("path", FRAMES[::3], ids=lambda p: p.stem)
def test_every_truncation_is_malformed_and_trailing_bytes_are_ignored(path: Path) -> None:
    data = payload(path)
    for end in range(len(data)):
        with pytest.raises(MalformedRequestError):
            decode_request(data[:end], ALL_VERSIONS)
    whole = decode_request(data, ALL_VERSIONS)
    assert isinstance(whole, KafkaRequest)
    padded = decode_request(data + b"\x01\x00\x00", ALL_VERSIONS)
    assert isinstance(padded, KafkaRequest)
    assert padded.body == whole.body


def test_librdkafka_admin_all_topics_metadata_with_trailing_bytes() -> None:
    # captured from confluent-kafka 2.16 AdminClient.list_topics(): 3 bytes after the v11 body
    frame = bytes.fromhex("0003000b00000003000772646b61666b610000000000010000")
    request = decode_request(frame)
    assert isinstance(request, KafkaRequest)
    assert request.body.topics is None


def test_bad_client_id_is_malformed() -> None:
    with pytest.raises(MalformedRequestError, match="UTF-8"):
        decode_request_header(header_bytes(18, 0, client=b"\xff\xfe"))
    with pytest.raises(MalformedRequestError, match="length"):
        decode_request_header(struct.pack(">hhih", 18, 0, 1, -2))


def test_header_v2_tagged_fields_round_trip() -> None:
    header = RequestHeader(18, 3, 5, None, 2, {0: b"ab", 7: b""})
    data = header.encode() + b"\x00\x00\x00"  # empty compact strings and no body tags
    decoded, offset = decode_request_header(data)
    assert decoded == header
    assert offset == len(header.encode())
    request = decode_request(data)
    assert isinstance(request, KafkaRequest)
    assert encode_request(request.header, request.body) == data


def test_tagged_fields_in_bodies_known_and_unknown() -> None:
    cls = registry.request_class(1, 12)
    fetch = cls(cluster_id="c1", replica_id=-1, max_wait_ms=500, min_bytes=1,
                max_bytes=1000, isolation_level=0, session_id=0, session_epoch=-1, topics=[],
                forgotten_topics_data=[], rack_id="")
    data = RequestHeader(1, 12, 3, "x", 2).encode() + bytes(fetch.encode(version=12))
    request = decode_request(data)
    assert isinstance(request, KafkaRequest)
    assert request.body.cluster_id == "c1"  # tag 0 of FetchRequest v12+
    assert encode_request(request.header, request.body) == data

    # Produce v9 with an unknown tag (9: b"z") after every partition's records.
    partition = struct.pack(">i", 0) + b"\x04abc" + b"\x01\x09\x01z"
    body = b"\x00" + struct.pack(">hi", -1, 1000) + b"\x02\x02t\x04" + partition * 3 + b"\x00\x00"
    request = decode_request(RequestHeader(0, 9, 4, "x", 2).encode() + body)
    assert isinstance(request, KafkaRequest)
    parts = request.body.topic_data[0].partition_data
    assert [(bytes(p.records), p.unknown_tags) for p in parts] == [(b"abc", {"_9": b"z"})] * 3


def test_error_codes_match_kafka() -> None:
    for code in ErrorCode:
        assert kafka.errors.for_code(int(code)).errno == int(code), code


def test_served_ranges_stop_before_topic_ids() -> None:
    def first_version_with(api_key: int, field: str) -> int:
        spec = registry.SPECS[api_key]
        return next(v for v in range(spec.max_version + 1) if any(
            f.name == field and f.for_version_q(v)
            for top in spec.request._struct.fields.values() if top.fields
            for f in top.fields.values()))

    assert SUPPORTED_APIS[0].max_version < first_version_with(0, "topic_id")
    assert SUPPORTED_APIS[1].max_version < first_version_with(1, "topic_id")
    assert SUPPORTED_APIS[3].max_version < 12  # v12: topic lookups by id (name nullable)
    for served in SUPPORTED_APIS.values():
        spec = registry.SPECS[int(served.api_key)]
        assert spec.min_version <= served.min_version <= served.max_version <= spec.max_version


# -- fuzz -----------------------------------------------------------------------------------

SERVED = [(key, v) for key, r in SUPPORTED_APIS.items()
          for v in range(r.min_version, r.max_version + 1)]


def _decode_only_typed_errors(data: bytes, apis: Any = SUPPORTED_APIS) -> None:
    with contextlib.suppress(KafkaCodecError):
        decode_request(data, apis)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_fuzz_arbitrary_payload(data: bytes) -> None:
    _decode_only_typed_errors(data)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(SERVED), st.integers(-1, 2**31 - 1), st.binary(max_size=300))
def test_fuzz_bodies_behind_a_valid_header(key_version: tuple[int, int], corr: int,
                                           body: bytes) -> None:
    key, version = key_version
    header = RequestHeader(key, version, corr, "fuzz",
                           registry.SPECS[key].request_header_version(version))
    _decode_only_typed_errors(header.encode() + body)


@settings(max_examples=400, deadline=None)
@given(st.sampled_from(FRAMES), st.data())
def test_fuzz_mutated_fixtures(path: Path, data: st.DataObject) -> None:
    raw = bytearray(payload(path))
    for _ in range(data.draw(st.integers(1, 4))):
        raw[data.draw(st.integers(0, len(raw) - 1))] = data.draw(st.integers(0, 255))
    _decode_only_typed_errors(bytes(raw), ALL_VERSIONS)


# -- a real client accepts our ApiVersions encoding -----------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("profile", ["current", "legacy"])
def test_librdkafka_proceeds_past_our_api_versions_response(profile: str,
                                                            tmp_path: Path) -> None:
    require_tool("kcat")
    result = subprocess.run(
        [sys.executable, str(FIXTURES / "capture.py"), "--client", "kcat-list",
         "--profile", profile, "--out", str(tmp_path)],
        capture_output=True, text=True, timeout=60, check=True)
    log = json.loads(result.stdout.splitlines()[-1])["requests"]
    # current: v3 is answered; legacy serves ApiVersions 0-2, so kcat's v3 gets
    # UNSUPPORTED_VERSION (our v0-format reply) and it retries at v0.
    expected = ["18:v3", "3:v4"] if profile == "current" else ["18:v3", "18:v0", "3:v4"]
    assert log[: len(expected)] == expected
    assert "exit 0" in log
    assert any(p.name.startswith("metadata_v4_kcat-list") for p in tmp_path.iterdir())
