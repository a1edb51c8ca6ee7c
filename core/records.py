"""Protocol-neutral messages and their v2 record-batch encoding.

AMQP and MQTT handlers publish :class:`Message` objects; :func:`build_batch`
turns them into one v2 record batch (as a Kafka producer would send it), which
then goes through the same :meth:`core.api.Core.append` path as a Kafka produce.
For delivery, :func:`decode_batch` turns a stored batch back into messages with
their offsets, whatever its compression.

This module decodes records, so it is for the AMQP/MQTT paths only: the Kafka
path never calls it.  :class:`FreshBatches` lets a reader of a batch that was
just built here (:func:`build_plain_batch`) skip its decode altogether.

How the codec works
-------------------
Both directions are hand-written loops over ``bytes``; kafka-python is used only
for its compression codecs (:mod:`kafka.codec`) and CRC-32C.  The batch header
is one ``struct`` call (:data:`core.batch.HEADER`).  Each record is::

    length varint | attributes int8 | timestamp_delta varlong | offset_delta varint |
    key (varint length, -1 = null) | value (same) |
    header count varint, then per header: key (varint length, UTF-8) |
    value (varint length, -1 = null)

with zigzag varints (:mod:`core.varint`).  The decoder inlines the one-byte
varint case (nearly every length, delta and count) and calls
:func:`core.varint.decode_varint` for longer ones.  Every slice is checked
against the end of its record and every record against the end of the records
section, so malformed input raises :class:`CorruptBatch`, never ``IndexError``.
The encoder collects each record body's parts in a list and joins them once,
then appends its length and the body to the batch buffer; lengths come from
:data:`core.varint.VARINT_TABLE`, encoded header names from a small bounded
cache.  Its output is byte-for-byte what kafka-python's
``DefaultRecordBatchBuilder`` produces (``tests/test_records_fast.py``).
"""

from __future__ import annotations

import builtins
import struct
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, fields
from typing import NamedTuple

from kafka import codec as _codec
from kafka.record.util import calc_crc32c

from core.batch import (
    ATTRIBUTES_START,
    COMPRESSION_MASK,
    CONTROL_MASK,
    CRC_START,
    HEADER,
    HEADER_SIZE,
    LENGTH_END,
    TIMESTAMP_TYPE_MASK,
    TRANSACTIONAL_MASK,
)
from core.entry_cache import RecentEntries
from core.errors import CorruptBatch
from core.varint import (
    NULL_VARINT,
    SHORT_VARINTS,
    TABLE_SIZE,
    VARINT_TABLE,
    decode_varint,
    encode_varint,
)

CODEC_NONE = 0
CODEC_GZIP = 1
CODEC_SNAPPY = 2
CODEC_LZ4 = 3
CODEC_ZSTD = 4
_MAX_BUILD_BYTES = 2**31 - 1

_CRC = struct.Struct(">I")
#: estimated memory of one held message beyond its bytes (see :class:`FreshBatches`)
_FRESH_OVERHEAD = 200
#: Smallest record body: attributes, timestamp delta, offset delta, key, value, header count.
_MIN_RECORD = 6
#: Smallest header: key length and value length.
_MIN_HEADER = 2
#: Shortest control record key: version int16, type int16.
_CONTROL_KEY_SIZE = 4

_ENCODERS: dict[int, tuple[str, Callable[[], bool], Callable[[bytes], bytes]]] = {
    CODEC_GZIP: ("gzip", _codec.has_gzip, _codec.gzip_encode),
    CODEC_SNAPPY: ("snappy", _codec.has_snappy, _codec.snappy_encode),
    CODEC_LZ4: ("lz4", _codec.has_lz4, _codec.lz4_encode),
    CODEC_ZSTD: ("zstd", _codec.has_zstd, _codec.zstd_encode),
}
_DECODERS: dict[int, tuple[str, Callable[[], bool], Callable[[bytes], bytes]]] = {
    CODEC_GZIP: ("gzip", _codec.has_gzip, _codec.gzip_decode),
    CODEC_SNAPPY: ("snappy", _codec.has_snappy, _codec.snappy_decode),
    CODEC_LZ4: ("lz4", _codec.has_lz4, _codec.lz4_decode),
    CODEC_ZSTD: ("zstd", _codec.has_zstd, _codec.zstd_decode),
}


@dataclass(frozen=True, slots=True)
class Message:
    """One message as every protocol sees it."""

    key: bytes | None
    value: bytes | None
    headers: list[tuple[str, bytes]] = field(default_factory=list)
    timestamp_ms: int = 0


class StoredMessage(NamedTuple):
    """A message read back from the log, with its offset.

    A named tuple (immutable, like the frozen dataclass it was): the read path
    builds one per record per batch read, directly with ``tuple.__new__``.
    """

    offset: int
    message: Message
    #: True for records of a control batch (transaction markers).
    control: bool = False


def slot_setters(
    cls: type, names: tuple[str, ...]
) -> tuple[Callable[[object, object], None], ...]:
    """The slot descriptors' setters of ``cls``'s fields, checked to be exactly ``names``.

    The decoder (and :func:`new_message`, and handlers' hot paths for their own
    frozen dataclasses) build objects with ``object.__new__`` and these setters:
    the same slots a frozen dataclass's
    ``__init__`` fills through ``object.__setattr__``, at about half the cost.
    The check makes any change to the fields (or a ``__post_init__``) fail at
    import rather than build half-initialised objects.
    """
    if tuple(f.name for f in fields(cls)) != names or hasattr(cls, "__post_init__"):
        raise RuntimeError(f"the fields of {cls.__name__} changed: update its fast constructor")
    return tuple(cls.__dict__[name].__set__ for name in names)


_MESSAGE_SETTERS = slot_setters(Message, ("key", "value", "headers", "timestamp_ms"))


def new_message(
    key: bytes | None, value: bytes | None, headers: list[tuple[str, bytes]], timestamp_ms: int
) -> Message:
    """``Message(key, value, headers, timestamp_ms)`` for a publish hot path (about half the
    cost of the frozen ``__init__``; the arguments are taken as they are)."""
    m: Message = object.__new__(Message)
    set_key, set_value, set_headers, set_ts = _MESSAGE_SETTERS
    set_key(m, key)
    set_value(m, value)
    set_headers(m, headers)
    set_ts(m, timestamp_ms)
    return m
#: ``tuple.__new__``: builds a named tuple from a tuple, skipping its generated ``__new__``
_new_tuple = tuple.__new__


def build_batch(
    messages: Iterable[Message],
    compression: int = CODEC_NONE,
    *,
    producer_id: int = -1,
    producer_epoch: int = -1,
    base_sequence: int = -1,
    transactional: bool = False,
) -> bytes:
    """Encode ``messages`` as one v2 record batch (base offset 0; the core sets it).

    Raises ``ValueError`` for an empty message list, an unknown compression
    codec or a batch over 2 GiB.  With a codec, the batch is compressed unless
    compression would not make it smaller.  A header value of ``None`` is
    written as a null header value.
    """
    return build_plain_batch(
        messages, compression, producer_id=producer_id, producer_epoch=producer_epoch,
        base_sequence=base_sequence, transactional=transactional,
    )[0]


def build_plain_batch(
    messages: Iterable[Message],
    compression: int = CODEC_NONE,
    *,
    producer_id: int = -1,
    producer_epoch: int = -1,
    base_sequence: int = -1,
    transactional: bool = False,
) -> tuple[bytes, bool]:
    """:func:`build_batch`, and whether every message is *plain*.

    A plain message is a :class:`Message` (not a subclass) whose key and value
    are ``bytes`` or ``None``, whose timestamp is an ``int`` and whose headers
    are a ``list`` of ``(str, bytes)`` tuples.  When all are, :func:`decode_batch`
    of the batch gives back messages equal to them, field by field and type by
    type, which is what lets :class:`FreshBatches` stand in for that decode.
    """
    encoder = None
    if compression != CODEC_NONE:
        if compression not in _ENCODERS:
            raise ValueError(f"unknown compression codec {compression}")
        name, available, encoder = _ENCODERS[compression]
        if not available():
            raise ValueError(f"the {name} codec is not installed")
    out = bytearray(HEADER_SIZE)
    count, first_ts, max_ts, plain = _append_records(out, messages)
    if count == 0:
        raise ValueError("a record batch needs at least one message")
    attributes = TRANSACTIONAL_MASK if transactional else 0
    if encoder is not None:
        records = bytes(out[HEADER_SIZE:])
        compressed = encoder(records)
        if len(compressed) < len(records):
            del out[HEADER_SIZE:]
            out += compressed
            attributes |= compression
    HEADER.pack_into(
        out, 0, 0, len(out) - LENGTH_END, 0, 2, 0, attributes, count - 1, first_ts, max_ts,
        producer_id, producer_epoch, base_sequence, count,
    )
    _CRC.pack_into(out, CRC_START, calc_crc32c(memoryview(out)[ATTRIBUTES_START:]))
    return bytes(out), plain


#: header name -> its record encoding (varint length + UTF-8), for the few names in use
_NAME_FIELDS: dict[str, bytes] = {}
_MAX_NAME_FIELDS = 512


def _name_field(name: str) -> bytes:
    """The record encoding of header name ``name``, remembered (bounded) for the next batch."""
    field_ = _NAME_FIELDS.get(name)
    if field_ is None:
        raw = name.encode()
        field_ = encode_varint(len(raw)) + raw
        if len(_NAME_FIELDS) < _MAX_NAME_FIELDS:
            _NAME_FIELDS[name] = field_
    return field_


def _append_records(
    out: bytearray, messages: Iterable[Message]
) -> tuple[int, int, int, bool]:
    """Append every message to ``out`` as a record (offset delta = its index).

    Returns ``(count, first timestamp, max timestamp, plain)``; timestamp deltas
    are relative to the first message's timestamp, as a Kafka producer writes
    them; ``plain`` as :func:`build_plain_batch` defines it.  Raises
    ``ValueError`` as soon as the batch would not fit its int32 length.

    Each record body is a list of parts joined once; header names come encoded
    from :data:`_NAME_FIELDS` (a handler uses a handful of names).
    """
    table = VARINT_TABLE
    size = TABLE_SIZE
    enc = encode_varint
    null = NULL_VARINT
    names_get = _NAME_FIELDS.get
    name_field = _name_field
    join = b"".join
    message_cls = Message
    tp, bytes_, list_, tuple_, str_ = type, bytes, list, tuple, str
    count = first_ts = max_ts = 0
    plain = True
    for msg in messages:
        ts = msg.timestamp_ms
        if tp(msg) is not message_cls:
            plain = False
        if count == 0:
            first_ts = max_ts = ts
        elif ts > max_ts:
            max_ts = ts
        n = ts - first_ts
        parts = [
            b"\x00",  # record attributes
            table[n] if 0 <= n < size else enc(n),
            table[count] if count < size else enc(count),
        ]
        add = parts.append
        key = msg.key
        if key is None:
            add(null)
        else:
            if tp(key) is not bytes_:
                plain = False
            n = len(key)
            add(table[n] if n < size else enc(n))
            add(key)
        value = msg.value
        if value is None:
            add(null)
        else:
            if tp(value) is not bytes_:
                plain = False
            n = len(value)
            add(table[n] if n < size else enc(n))
            add(value)
        headers = msg.headers
        if tp(headers) is not list_:
            plain = False
        n = len(headers)
        add(table[n] if n < size else enc(n))
        for header in headers:
            h_key, h_value = header
            if tp(h_key) is str_:
                add(names_get(h_key) or name_field(h_key))
            else:
                plain = False
                raw = h_key.encode()
                add(enc(len(raw)))
                add(raw)
            if h_value is None:
                add(null)
                plain = False
            else:
                if tp(h_value) is not bytes_ or tp(header) is not tuple_:
                    plain = False
                n = len(h_value)
                add(table[n] if n < size else enc(n))
                add(h_value)
        body = join(parts)
        n = len(body)
        out += table[n] if n < size else enc(n)
        out += body
        count += 1
        if len(out) - LENGTH_END > _MAX_BUILD_BYTES:
            raise ValueError(f"record batch over {_MAX_BUILD_BYTES} bytes")
    return count, first_ts, max_ts, plain


def decode_batch(batch: bytes | memoryview) -> list[StoredMessage]:
    """Decode every record of one v2 batch (decompressing as needed).

    Null keys and values decode as ``None``, empty ones as ``b""``; a null
    header value decodes as ``b""``.  Records of a control batch come back with
    ``control=True``.  Offsets are the batch's base offset plus each record's
    offset delta; with the LogAppendTime bit set every record gets the batch's
    max timestamp.  Raises :class:`CorruptBatch` when the batch or its records
    do not parse (including trailing bytes after the last record).
    """
    buf = batch if type(batch) is bytes else bytes(batch)
    if len(buf) < HEADER_SIZE:
        raise CorruptBatch("batch shorter than its header")
    (base_offset, _, _, magic, _, attributes, _, first_ts, max_ts, _, _, _,
     count) = HEADER.unpack_from(buf)
    if magic != 2:
        raise CorruptBatch(f"record batch magic {magic}, only 2 is supported")
    if count < 0:
        raise CorruptBatch(f"negative record count {count}")
    codec = attributes & COMPRESSION_MASK
    if codec == CODEC_NONE:
        pos = HEADER_SIZE
    else:
        buf = _decompress(codec, buf[HEADER_SIZE:])
        pos = 0
    append_ts = max_ts if attributes & TIMESTAMP_TYPE_MASK else None
    control = bool(attributes & CONTROL_MASK)
    try:
        return _decode_records(buf, pos, count, base_offset, first_ts, append_ts, control)
    except CorruptBatch:
        raise
    except (IndexError, ValueError) as exc:  # ran off the end; long varint; bad UTF-8
        raise CorruptBatch(f"cannot decode record batch: {exc!r}") from None


def _decompress(codec: int, data: bytes) -> bytes:
    """The records section of a compressed batch, decompressed."""
    if codec not in _DECODERS:
        raise CorruptBatch(f"unknown compression codec {codec}")
    name, available, decoder = _DECODERS[codec]
    if not available():
        raise CorruptBatch(f"the {name} codec is not installed")
    try:
        return bytes(decoder(data))
    except Exception as exc:  # each codec library raises its own error types
        raise CorruptBatch(f"cannot decompress {name} records: {exc!r}") from None


def _decode_records(
    buf: bytes,
    pos: int,
    count: int,
    base_offset: int,
    first_ts: int,
    append_ts: int | None,
    control: bool,
) -> list[StoredMessage]:
    """Decode ``count`` records from ``buf[pos:]``, which they must fill exactly.

    Each varint is one lookup of its first byte in :data:`SHORT_VARINTS` (the
    value, or ``None`` when the varint is longer and :func:`decode_varint` reads
    it); record and value lengths also decode two-byte varints inline.  Reading
    a byte past the end of ``buf`` raises ``IndexError``, which the caller turns
    into :class:`CorruptBatch`; slices are checked against the end of their
    record, so they never silently come back short.
    """
    end = len(buf)
    short = SHORT_VARINTS
    slow = decode_varint
    new = object.__new__
    set_key, set_value, set_headers, set_ts = _MESSAGE_SETTERS
    new_tuple = _new_tuple
    message_cls = Message
    stored_cls = StoredMessage
    out: list[StoredMessage] = []
    add = out.append
    for _ in range(count):
        b = buf[pos]
        n = short[b]
        if n is not None:
            pos += 1
        elif buf[pos + 1] < 0x80:  # two bytes: records of 64 bytes to 8 KiB
            n = (b & 0x7F) | (buf[pos + 1] << 7)
            n = (n >> 1) ^ -(n & 1)
            pos += 2
        else:
            n, pos = slow(buf, pos)
        rec_end = pos + n
        if n < _MIN_RECORD or rec_end > end:
            raise CorruptBatch(f"record length {n} out of range at byte {pos}")
        pos += 1  # record attributes (int8, unused)

        ts_delta = short[buf[pos]]
        if ts_delta is None:
            ts_delta, pos = slow(buf, pos)
        else:
            pos += 1
        offset_delta = short[buf[pos]]
        if offset_delta is None:
            offset_delta, pos = slow(buf, pos)
        else:
            pos += 1

        n = short[buf[pos]]
        if n is None:
            n, pos = slow(buf, pos)
        else:
            pos += 1
        key: bytes | None
        if n >= 0:
            stop = pos + n
            if stop > rec_end:
                raise CorruptBatch(f"key of {n} bytes runs past its record")
            key = buf[pos:stop]
            pos = stop
        elif n == -1:
            key = None
        else:
            raise CorruptBatch(f"invalid key length {n}")

        b = buf[pos]
        n = short[b]
        if n is not None:
            pos += 1
        elif buf[pos + 1] < 0x80:  # two bytes: values of 64 bytes to 8 KiB
            n = (b & 0x7F) | (buf[pos + 1] << 7)
            n = (n >> 1) ^ -(n & 1)
            pos += 2
        else:
            n, pos = slow(buf, pos)
        value: bytes | None
        if n >= 0:
            stop = pos + n
            if stop > rec_end:
                raise CorruptBatch(f"value of {n} bytes runs past its record")
            value = buf[pos:stop]
            pos = stop
        elif n == -1:
            value = None
        else:
            raise CorruptBatch(f"invalid value length {n}")

        count_h = short[buf[pos]]
        if count_h is None:
            count_h, pos = slow(buf, pos)
        else:
            pos += 1
        headers: list[tuple[str, bytes]] = []
        if count_h:
            if count_h < 0 or count_h * _MIN_HEADER > rec_end - pos:
                raise CorruptBatch(f"invalid header count {count_h}")
            add_header = headers.append
            for _ in range(count_h):
                n = short[buf[pos]]
                if n is None:
                    n, pos = slow(buf, pos)
                else:
                    pos += 1
                stop = pos + n
                if n < 0 or stop > rec_end:
                    raise CorruptBatch(f"invalid header key length {n}")
                h_key = buf[pos:stop].decode()
                pos = stop
                n = short[buf[pos]]
                if n is None:
                    n, pos = slow(buf, pos)
                else:
                    pos += 1
                if n >= 0:
                    stop = pos + n
                    if stop > rec_end:
                        raise CorruptBatch(f"header value of {n} bytes runs past its record")
                    add_header((h_key, buf[pos:stop]))
                    pos = stop
                elif n == -1:
                    add_header((h_key, b""))
                else:
                    raise CorruptBatch(f"invalid header value length {n}")

        if pos != rec_end:
            raise CorruptBatch(f"record ends at byte {pos}, its length says {rec_end}")
        if control and (key is None or len(key) < _CONTROL_KEY_SIZE):
            raise CorruptBatch("control record without a version and type key")
        msg = new(message_cls)
        set_key(msg, key)
        set_value(msg, value)
        set_headers(msg, headers)
        set_ts(msg, first_ts + ts_delta if append_ts is None else append_ts)
        add(new_tuple(stored_cls, (base_offset + offset_delta, msg, control)))
    if pos != end:
        raise CorruptBatch(f"{end - pos} bytes left after the last record")
    return out


class _Held:
    """One batch held by :class:`FreshBatches` (its records are built on the first read)."""

    __slots__ = ("messages", "records")

    def __init__(self, messages: list[Message]) -> None:
        self.messages = messages
        self.records: list[StoredMessage] | None = None


class FreshBatches:
    """The messages of recently appended batches, so that reading them back skips the decode.

    :meth:`core.api.Core.append_messages` encodes messages into a batch; the
    partition then frames it into one log entry (a new ``bytes`` object) and,
    when the messages are plain (:func:`build_plain_batch`), hands entry and
    messages to :meth:`add`.  A reader that later gets a batch whose memoryview
    is a slice of *that very object* (the log's tail cache returns the bytes it
    was given) knows what :func:`decode_batch` would return: the same messages
    at offsets ``base_offset + i``.  Identity is checked on the object itself
    (a held entry keeps its ``id`` unique), so a copy, a file read or another
    topic's entry never matches.  The messages are shared with the appender and
    with every reader, and so is the list :meth:`records` returns (built on the
    first read); like decoded records they are treated as immutable.

    Bounded to ``max_batches`` entries and ``max_bytes`` of estimated memory
    (twice the entry's bytes plus a fixed overhead per message); the oldest go
    first.  Not thread-safe (one trio run).
    """

    def __init__(self, max_batches: int = 64, max_bytes: int = 4 << 20) -> None:
        self._held: RecentEntries[_Held] = RecentEntries(max_batches, max_bytes)
        self.max_batches = max_batches
        self.max_bytes = max_bytes

    @property
    def bytes(self) -> int:
        """Estimated bytes held."""
        return self._held.bytes

    @property
    def hits(self) -> int:
        """Batches served without a decode (for tests and benchmarks)."""
        return self._held.hits

    def __len__(self) -> int:
        return len(self._held)

    def add(self, entry: builtins.bytes, messages: list[Message]) -> None:
        """Remember that the batch framed in ``entry`` decodes to ``messages`` (all plain)."""
        self._held.add(entry, _Held(messages), 2 * len(entry) + _FRESH_OVERHEAD * len(messages))

    def records(
        self, batch: memoryview, base_offset: int, count: int
    ) -> list[StoredMessage] | None:
        """The records of ``batch`` (a view of a held entry), or None when not held.

        Every reader of one entry gets the same list (do not modify it).
        """
        held = self._held.get(batch.obj)
        if held is None:
            return None
        messages = held.messages
        if len(messages) != count:  # pragma: no cover - the entry is the batch
            return None
        built = held.records
        if built is not None and built[0].offset == base_offset:
            return built
        new_tuple = _new_tuple
        stored_cls = StoredMessage
        built = [
            new_tuple(stored_cls, (offset, message, False))
            for offset, message in enumerate(messages, base_offset)
        ]
        held.records = built
        return built

    def clear(self) -> None:
        """Forget every held batch."""
        self._held.clear()
