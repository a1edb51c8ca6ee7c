"""Validation of produced record batches (Kafka v2 layout), without decoding records.

A produce carries one or more v2 record batches back to back.  Each batch::

    base_offset i64 | length i32 | partition_leader_epoch i32 | magic i8 | crc u32 |
    attributes i16 | last_offset_delta i32 | first_timestamp i64 | max_timestamp i64 |
    producer_id i64 | producer_epoch i16 | base_sequence i32 | record_count i32 | records...

``length`` counts the bytes after the length field; the CRC-32C covers everything
from ``attributes`` to the end of the batch.  Neither the base offset nor the
partition leader epoch is covered, so the broker may rewrite them.

:func:`split_batches` checks the framing, magic, CRC, record count and size of
every batch and returns :class:`BatchInfo` views into the input; on any error it
raises before anything is stored.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from kafka.record.util import calc_crc32c

from core.errors import CorruptBatch, InvalidBatch, MessageTooLarge, UnsupportedBatchVersion

HEADER = struct.Struct(">qiibIhiqqqhii")
HEADER_SIZE = HEADER.size  # 61
LENGTH_END = 12  # base offset + length field
CRC_START = 17  # magic at 16, CRC at 17..20
ATTRIBUTES_START = 21

COMPRESSION_MASK = 0x07
TIMESTAMP_TYPE_MASK = 0x08
TRANSACTIONAL_MASK = 0x10
CONTROL_MASK = 0x20
MAX_COMPRESSION_CODEC = 4  # none, gzip, snappy, lz4, zstd


@dataclass(frozen=True, slots=True)
class BatchInfo:
    """One validated batch: its header fields and a view of its bytes."""

    view: memoryview
    attributes: int
    last_offset_delta: int
    first_timestamp: int
    max_timestamp: int
    producer_id: int
    producer_epoch: int
    base_sequence: int
    record_count: int

    @property
    def size(self) -> int:
        """Bytes in the batch (header included)."""
        return len(self.view)

    @property
    def compression(self) -> int:
        """Codec id: 0 none, 1 gzip, 2 snappy, 3 lz4, 4 zstd."""
        return self.attributes & COMPRESSION_MASK

    @property
    def is_transactional(self) -> bool:
        return bool(self.attributes & TRANSACTIONAL_MASK)

    @property
    def is_control(self) -> bool:
        return bool(self.attributes & CONTROL_MASK)

    @property
    def log_append_time(self) -> bool:
        """True when the timestamp type bit says LogAppendTime."""
        return bool(self.attributes & TIMESTAMP_TYPE_MASK)


def read_header(view: memoryview) -> BatchInfo:
    """Parse the fixed header of the batch that fills ``view`` (no checks beyond size)."""
    if len(view) < HEADER_SIZE:
        raise CorruptBatch(f"batch shorter than its {HEADER_SIZE}-byte header")
    (_, _, _, _, _, attributes, last_delta, first_ts, max_ts, pid, epoch, base_seq,
     count) = HEADER.unpack_from(view)
    return BatchInfo(view, attributes, last_delta, first_ts, max_ts, pid, epoch, base_seq, count)


def split_batches(
    data: bytes | bytearray | memoryview, max_batch_bytes: int, *, allow_control: bool = False
) -> list[BatchInfo]:
    """Validate every batch in ``data`` (a concatenation) and return them in order.

    Raises :class:`CorruptBatch` for bad framing (truncation, trailing bytes, bad
    length, CRC mismatch, record count that does not match the last offset delta,
    unknown codec), :class:`UnsupportedBatchVersion` for magic != 2,
    :class:`MessageTooLarge` when a batch exceeds ``max_batch_bytes`` and
    :class:`InvalidBatch` for a control batch unless ``allow_control``.
    """
    view = memoryview(data)
    if view.ndim != 1 or view.itemsize != 1:
        view = view.cast("B")
    total = len(view)
    if total == 0:
        raise CorruptBatch("no record batch")
    out: list[BatchInfo] = []
    pos = 0
    while pos < total:
        if total - pos < LENGTH_END + 5:
            raise CorruptBatch(f"{total - pos} trailing bytes are not a record batch")
        (length,) = struct.unpack_from(">i", view, pos + 8)
        magic = view[pos + 16]
        if magic != 2:
            raise UnsupportedBatchVersion(f"record batch magic {magic}, only 2 is supported")
        size = LENGTH_END + length
        if size < HEADER_SIZE:
            raise CorruptBatch(f"batch length {length} is smaller than the header")
        if pos + size > total:
            raise CorruptBatch(f"batch length {length} runs past the end of the data")
        if size > max_batch_bytes:
            raise MessageTooLarge(f"record batch of {size} bytes exceeds {max_batch_bytes}")
        batch = read_header(view[pos : pos + size])
        (crc,) = struct.unpack_from(">I", view, pos + CRC_START)
        if calc_crc32c(view[pos + ATTRIBUTES_START : pos + size]) != crc:
            raise CorruptBatch("record batch CRC-32C mismatch")
        if batch.record_count < 1 or batch.last_offset_delta != batch.record_count - 1:
            raise CorruptBatch(
                f"record count {batch.record_count} does not match last offset delta "
                f"{batch.last_offset_delta}"
            )
        if batch.compression > MAX_COMPRESSION_CODEC:
            raise CorruptBatch(f"unknown compression codec {batch.compression}")
        if batch.is_control and not allow_control:
            raise InvalidBatch("clients may not produce control batches")
        out.append(batch)
        pos += size
    return out


def built_batch(data: bytes, max_batch_bytes: int) -> list[BatchInfo]:
    """:func:`split_batches` for one batch this process just built
    (:func:`core.records.build_plain_batch`): its framing and CRC are right by
    construction, so only the size limit is checked (:class:`MessageTooLarge`).
    """
    if len(data) > max_batch_bytes:
        raise MessageTooLarge(f"record batch of {len(data)} bytes exceeds {max_batch_bytes}")
    return [read_header(memoryview(data))]
