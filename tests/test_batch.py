"""Validation of produced v2 record batches, against byte fixtures."""

from __future__ import annotations

import contextlib
import struct
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from kafka.record.util import calc_crc32c

from core.batch import split_batches
from core.errors import (
    CorruptBatch,
    InvalidBatch,
    MessageTooLarge,
    UnsupportedBatchVersion,
)
from core.records import CODEC_GZIP, CODEC_NONE, Message, build_batch, decode_batch

FIXTURES = Path(__file__).parent / "fixtures" / "batches"
NAMES = [
    "librdkafka_v2_none_000",
    "librdkafka_v2_gzip_000",
    "kafka_python_v2_none_000",
    "kafka_python_v2_gzip_000",
]
BIG = 1 << 20


def fixture(name: str) -> bytes:
    return (FIXTURES / f"{name}.bin").read_bytes()


def recrc(batch: bytearray) -> bytearray:
    """Recompute the CRC after editing covered fields."""
    struct.pack_into(">I", batch, 17, calc_crc32c(memoryview(batch)[21:]))
    return batch


@pytest.mark.parametrize("name", NAMES)
def test_fixture_batches_validate(name: str) -> None:
    data = fixture(name)
    (batch,) = split_batches(data, BIG)
    assert batch.size == len(data)
    assert bytes(batch.view) == data
    assert batch.record_count == 3
    assert batch.last_offset_delta == 2
    assert batch.first_timestamp == 1_700_000_000_000
    assert batch.max_timestamp == 1_700_000_000_002
    assert batch.producer_id == -1
    assert batch.compression == (CODEC_GZIP if "gzip" in name else CODEC_NONE)
    assert not batch.is_transactional and not batch.is_control


def test_librdkafka_and_kafka_python_agree_on_uncompressed_bytes() -> None:
    assert fixture("librdkafka_v2_none_000") == fixture("kafka_python_v2_none_000")


@pytest.mark.parametrize("name", NAMES)
def test_fixture_records_decode(name: str) -> None:
    decoded = decode_batch(fixture(name))
    assert [m.offset for m in decoded] == [0, 1, 2]
    assert decoded[1].message == Message(
        b"key-1", b"value 1 " * 20, [("h", b"x"), ("n", b"1")], 1_700_000_000_001
    )


def test_concatenated_batches_are_split() -> None:
    a, b = fixture("librdkafka_v2_none_000"), fixture("librdkafka_v2_gzip_000")
    batches = split_batches(a + b + a, BIG)
    assert [bytes(x.view) for x in batches] == [a, b, a]


def test_input_types() -> None:
    data = fixture("librdkafka_v2_none_000")
    for buf in (bytearray(data), memoryview(data)):
        assert len(split_batches(buf, BIG)) == 1


def test_crc_mismatch() -> None:
    data = bytearray(fixture("librdkafka_v2_none_000"))
    data[-1] ^= 0x01
    with pytest.raises(CorruptBatch, match="CRC"):
        split_batches(data, BIG)


def test_base_offset_and_leader_epoch_are_not_covered_by_the_crc() -> None:
    data = bytearray(fixture("librdkafka_v2_none_000"))
    struct.pack_into(">q", data, 0, 12345)
    struct.pack_into(">i", data, 12, 7)
    assert len(split_batches(data, BIG)) == 1


@pytest.mark.parametrize("delta", [-1, 1, 100])
def test_length_field_disagrees_with_buffer(delta: int) -> None:
    data = bytearray(fixture("librdkafka_v2_none_000"))
    (length,) = struct.unpack_from(">i", data, 8)
    struct.pack_into(">i", data, 8, length + delta)
    with pytest.raises(CorruptBatch):
        split_batches(data, BIG)


def test_length_smaller_than_header() -> None:
    data = bytearray(fixture("librdkafka_v2_none_000"))
    struct.pack_into(">i", data, 8, 10)
    with pytest.raises(CorruptBatch):
        split_batches(data, BIG)


def test_trailing_bytes() -> None:
    data = fixture("librdkafka_v2_none_000")
    for extra in (b"\x00", b"\x00" * 20, data[:70]):
        with pytest.raises(CorruptBatch):
            split_batches(data + extra, BIG)


def test_every_truncated_prefix_is_rejected() -> None:
    data = fixture("librdkafka_v2_gzip_000")
    for n in range(len(data)):
        with pytest.raises(CorruptBatch):
            split_batches(data[:n], BIG)


@pytest.mark.parametrize(("count", "last_delta"), [(2, 2), (4, 2), (0, -1), (3, 3)])
def test_record_count_inconsistent_with_last_offset_delta(count: int, last_delta: int) -> None:
    data = bytearray(fixture("librdkafka_v2_none_000"))
    struct.pack_into(">i", data, 23, last_delta)
    struct.pack_into(">i", data, 57, count)
    with pytest.raises(CorruptBatch, match="record count"):
        split_batches(recrc(data), BIG)


@pytest.mark.parametrize("magic", [0, 1, 3])
def test_other_magic_versions(magic: int) -> None:
    data = bytearray(fixture("librdkafka_v2_none_000"))
    data[16] = magic
    with pytest.raises(UnsupportedBatchVersion):
        split_batches(data, BIG)


def test_too_large() -> None:
    data = fixture("librdkafka_v2_none_000")
    assert len(split_batches(data, len(data))) == 1
    with pytest.raises(MessageTooLarge):
        split_batches(data, len(data) - 1)
    # one oversized batch among several rejects the whole produce
    with pytest.raises(MessageTooLarge):
        split_batches(fixture("librdkafka_v2_gzip_000") + data, len(data) - 1)


def test_unknown_codec() -> None:
    data = bytearray(fixture("librdkafka_v2_none_000"))
    struct.pack_into(">h", data, 21, 7)
    with pytest.raises(CorruptBatch, match="codec"):
        split_batches(recrc(data), BIG)


def test_control_batches_only_when_allowed() -> None:
    data = bytearray(fixture("librdkafka_v2_none_000"))
    struct.pack_into(">h", data, 21, 0x20)
    recrc(data)
    with pytest.raises(InvalidBatch):
        split_batches(data, BIG)
    (batch,) = split_batches(data, BIG, allow_control=True)
    assert batch.is_control


def test_empty_input() -> None:
    with pytest.raises(CorruptBatch):
        split_batches(b"", BIG)


def test_build_batch_round_trip_with_compression() -> None:
    msgs = [
        Message(None, b"v" * 50, [], 1),
        Message(b"k", None, [("a", b"1"), ("b", b"")], 2),
    ]
    for codec in (CODEC_NONE, CODEC_GZIP, 2, 3, 4):
        data = build_batch(msgs, codec)
        (batch,) = split_batches(data, BIG)
        assert batch.record_count == 2
        assert [m.message for m in decode_batch(data)] == msgs
    with pytest.raises(ValueError):
        build_batch([])


def test_decode_batch_rejects_garbage_records() -> None:
    data = bytearray(fixture("librdkafka_v2_none_000"))
    data[70:80] = b"\xff" * 10
    with pytest.raises(CorruptBatch):
        decode_batch(bytes(data))
    with pytest.raises(CorruptBatch):
        decode_batch(b"\x00" * 10)


@given(st.binary(max_size=300))
def test_fuzz_only_batch_errors(data: bytes) -> None:
    with contextlib.suppress(InvalidBatch):
        split_batches(data, BIG)


@given(st.integers(0, 606), st.integers(0, 255))
def test_fuzz_single_byte_edits(pos: int, value: int) -> None:
    data = bytearray(fixture("librdkafka_v2_none_000"))
    changed = data[pos] != value
    data[pos] = value
    try:
        split_batches(data, BIG)
    except InvalidBatch:
        return
    # only bytes outside the CRC and length/magic checks may change unnoticed
    assert not changed or pos < 8 or 12 <= pos < 16
