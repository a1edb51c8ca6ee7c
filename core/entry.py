"""The log entry format: broker entry metadata followed by one record batch.

Layout (big-endian)::

    magic            u16   0x0e02 (as Pulsar's broker entry metadata magic)
    metadata_size    u32
    metadata         protobuf BrokerEntryMetadata (see core.entry_metadata)
    batch            a Kafka v2 record batch whose base offset == metadata index

Decoding never copies the batch: :class:`DecodedEntry` holds a memoryview slice
of the stored bytes.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from core.entry_metadata import decode_metadata, encode_metadata
from core.errors import CorruptEntry

ENTRY_MAGIC = 0x0E02
_PREFIX = struct.Struct(">HI")
_BASE_OFFSET = struct.Struct(">q")
#: Largest metadata we accept when decoding (the real one is ~20 bytes).
MAX_METADATA_SIZE = 4096


@dataclass(frozen=True, slots=True)
class DecodedEntry:
    """A decoded log entry; ``batch`` is a zero-copy view into the entry bytes."""

    index: int
    broker_timestamp: int
    batch: memoryview


def encode_entry(index: int, broker_timestamp: int, batch: bytes | memoryview) -> bytes:
    """Frame ``batch`` (stored as given) with its broker entry metadata."""
    meta = encode_metadata(index, broker_timestamp)
    return b"".join((_PREFIX.pack(ENTRY_MAGIC, len(meta)), meta, batch))


def build_entry(index: int, broker_timestamp: int, batch: memoryview) -> bytes:
    """Frame a validated batch and set its base offset to ``index`` (one copy).

    The base offset is outside the batch CRC, so the CRC stays valid.
    """
    meta = encode_metadata(index, broker_timestamp)
    return b"".join(
        (_PREFIX.pack(ENTRY_MAGIC, len(meta)), meta, _BASE_OFFSET.pack(index), batch[8:])
    )


def framed_batch(entry: bytes) -> memoryview:
    """The batch of an entry this process just framed (:func:`build_entry`), as
    :func:`decode_entry` would return it, without parsing the metadata again.

    Only for trusted entries: nothing but the prefix is read.
    """
    return memoryview(entry)[_PREFIX.size + _PREFIX.unpack_from(entry)[1] :]


def decode_entry(data: bytes | memoryview) -> DecodedEntry:
    """Split an entry into its metadata and batch; raise :class:`CorruptEntry` if malformed."""
    view = memoryview(data)
    if len(view) < _PREFIX.size:
        raise CorruptEntry(f"entry too short ({len(view)} bytes)")
    magic, size = _PREFIX.unpack_from(view)
    if magic != ENTRY_MAGIC:
        raise CorruptEntry(f"bad entry magic 0x{magic:04x}")
    end = _PREFIX.size + size
    if size > MAX_METADATA_SIZE or end > len(view):
        raise CorruptEntry(f"bad metadata size {size}")
    index, broker_timestamp = decode_metadata(view[_PREFIX.size : end])
    return DecodedEntry(index, broker_timestamp, view[end:])
