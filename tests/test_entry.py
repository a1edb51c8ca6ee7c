"""The log entry format: broker entry metadata (protobuf) + a v2 batch."""

from __future__ import annotations

import contextlib
import struct
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from core.batch import split_batches
from core.entry import ENTRY_MAGIC, build_entry, decode_entry, encode_entry
from core.entry_metadata import BrokerEntryMetadata, decode_metadata, encode_metadata
from core.errors import CorruptEntry

FIXTURES = Path(__file__).parent / "fixtures" / "batches"
ENTRY = (FIXTURES / "entry_v1_000.bin").read_bytes()
BATCH = (FIXTURES / "librdkafka_v2_none_000.bin").read_bytes()


def test_descriptor_uses_pulsar_field_numbers() -> None:
    fields = {f.name: (f.number, f.type) for f in BrokerEntryMetadata.DESCRIPTOR.fields}
    uint64 = 4  # FieldDescriptor.TYPE_UINT64
    assert fields == {"broker_timestamp": (1, uint64), "index": (2, uint64)}


def test_metadata_bytes() -> None:
    # field 1 varint 1700000000123, field 2 varint 42
    assert encode_metadata(42, 1_700_000_000_123) == bytes.fromhex("08fbd095ffbc31102a")
    assert decode_metadata(bytes.fromhex("08fbd095ffbc31102a")) == (42, 1_700_000_000_123)


def test_entry_fixture_decodes() -> None:
    entry = decode_entry(ENTRY)
    assert entry.index == 42
    assert entry.broker_timestamp == 1_700_000_000_123
    assert isinstance(entry.batch, memoryview)
    assert entry.batch.obj is ENTRY  # a slice, no copy
    assert bytes(entry.batch[8:]) == BATCH[8:]
    assert struct.unpack_from(">q", entry.batch)[0] == 42
    # base offset is outside the CRC: the patched batch still validates
    (batch,) = split_batches(entry.batch, 1 << 20)
    assert batch.record_count == 3


def test_entry_fixture_layout() -> None:
    assert ENTRY[:2] == b"\x0e\x02"
    assert struct.unpack_from(">HI", ENTRY) == (ENTRY_MAGIC, 9)
    assert ENTRY[6:15] == encode_metadata(42, 1_700_000_000_123)
    assert build_entry(42, 1_700_000_000_123, memoryview(BATCH)) == ENTRY


def test_encode_entry_keeps_the_batch_as_given() -> None:
    data = encode_entry(7, 99, BATCH)
    entry = decode_entry(data)
    assert (entry.index, entry.broker_timestamp, bytes(entry.batch)) == (7, 99, BATCH)


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\x0e",
        b"\x0e\x03\x00\x00\x00\x00",
        b"\x0e\x02\x00\x00\x00\x10\x08\x01",  # metadata size past the end
        b"\x0e\x02\xff\xff\xff\xff" + b"\x00" * 10,
        b"\x0e\x02\x00\x00\x00\x02\x08\x01",  # index missing
        b"\x0e\x02\x00\x00\x00\x02\xff\xff",  # not protobuf
    ],
)
def test_corrupt_entries(data: bytes) -> None:
    with pytest.raises(CorruptEntry):
        decode_entry(data)


@given(st.integers(0, 2**63 - 1), st.integers(0, 2**63 - 1), st.binary(max_size=64))
def test_round_trip(index: int, ts: int, batch: bytes) -> None:
    entry = decode_entry(encode_entry(index, ts, batch))
    assert (entry.index, entry.broker_timestamp, bytes(entry.batch)) == (index, ts, batch)


@given(st.binary(max_size=40))
def test_fuzz_only_corrupt_entry(data: bytes) -> None:
    with contextlib.suppress(CorruptEntry):
        decode_entry(data)
