"""Transaction markers: the control batches written to every participating partition.

A marker is a v2 record batch with the transactional (bit 4) and control (bit 5)
attributes, the transaction's producer id and epoch, no sequence (-1), and one
record whose key is ``version int16 (0) | type int16 (0 abort, 1 commit)`` and
whose value is ``version int16 (0) | coordinator epoch int32`` -- byte for byte
what a Kafka broker writes, so the Kafka fetch path returns it unchanged and
Kafka clients skip it.  Sans-IO: bytes in, bytes out.
"""

from __future__ import annotations

import enum
import struct

from kafka.record.util import calc_crc32c

from core.batch import CONTROL_MASK, HEADER, HEADER_SIZE, TRANSACTIONAL_MASK
from core.errors import CorruptBatch

__all__ = ["ControlType", "build_marker", "marker_type"]

_KEY = struct.Struct(">hh")
_VALUE = struct.Struct(">hi")
_ATTRIBUTES_AT = 21
_LENGTH_END = 12


class ControlType(enum.IntEnum):
    """The control record types of a transaction marker."""

    ABORT = 0
    COMMIT = 1


def _varint(value: int) -> bytes:
    zigzag = (value << 1) ^ (value >> 63)
    out = bytearray()
    while True:
        byte = zigzag & 0x7F
        zigzag >>= 7
        if zigzag:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _read_varint(view: memoryview, pos: int) -> tuple[int, int]:
    shift = 0
    raw = 0
    while True:
        if pos >= len(view) or shift > 63:
            raise CorruptBatch("truncated varint in a control record")
        byte = view[pos]
        pos += 1
        raw |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return (raw >> 1) ^ -(raw & 1), pos
        shift += 7


def build_marker(
    producer_id: int, producer_epoch: int, control: ControlType, timestamp_ms: int,
    coordinator_epoch: int = 0,
) -> bytes:
    """One control batch (base offset 0: the core sets it on append)."""
    key = _KEY.pack(0, int(control))
    value = _VALUE.pack(0, coordinator_epoch)
    body = b"".join((
        b"\x00", _varint(0), _varint(0),  # attributes, timestamp delta, offset delta
        _varint(len(key)), key, _varint(len(value)), value, _varint(0),  # no headers
    ))
    record = _varint(len(body)) + body
    attributes = TRANSACTIONAL_MASK | CONTROL_MASK
    header = bytearray(HEADER.pack(
        0, HEADER_SIZE - _LENGTH_END + len(record), 0, 2, 0, attributes, 0,
        timestamp_ms, timestamp_ms, producer_id, producer_epoch, -1, 1,
    ))
    batch = header + record
    struct.pack_into(">I", batch, 17, calc_crc32c(bytes(batch[_ATTRIBUTES_AT:])))
    return bytes(batch)


def marker_type(batch: memoryview | bytes) -> ControlType:
    """The type (commit/abort) of a control batch; :class:`CorruptBatch` if unreadable."""
    view = memoryview(batch)
    pos = HEADER_SIZE
    _, pos = _read_varint(view, pos)  # record length
    pos += 1  # record attributes
    _, pos = _read_varint(view, pos)  # timestamp delta
    _, pos = _read_varint(view, pos)  # offset delta
    key_len, pos = _read_varint(view, pos)
    if key_len < _KEY.size or pos + _KEY.size > len(view):
        raise CorruptBatch("control record without a 4-byte key")
    _, kind = _KEY.unpack_from(view, pos)
    try:
        return ControlType(kind)
    except ValueError:
        raise CorruptBatch(f"unknown control record type {kind}") from None
