"""Protocol-neutral messages and their v2 record-batch encoding.

AMQP and MQTT handlers publish :class:`Message` objects; :func:`build_batch`
turns them into one v2 record batch (as a Kafka producer would send it), which
then goes through the same :meth:`core.api.Core.append` path as a Kafka produce.
For delivery, :func:`decode_batch` turns a stored batch back into messages with
their offsets, whatever its compression.

This module decodes records, so it is for the AMQP/MQTT paths only: the Kafka
path never calls it.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from kafka.errors import KafkaError
from kafka.record.default_records import DefaultRecordBatch, DefaultRecordBatchBuilder

from core.batch import CONTROL_MASK, HEADER_SIZE
from core.errors import CorruptBatch

CODEC_NONE = 0
CODEC_GZIP = 1
CODEC_SNAPPY = 2
CODEC_LZ4 = 3
CODEC_ZSTD = 4
_MAX_BUILD_BYTES = 2**31 - 1


@dataclass(frozen=True, slots=True)
class Message:
    """One message as every protocol sees it."""

    key: bytes | None
    value: bytes | None
    headers: list[tuple[str, bytes]] = field(default_factory=list)
    timestamp_ms: int = 0


@dataclass(frozen=True, slots=True)
class StoredMessage:
    """A message read back from the log, with its offset."""

    offset: int
    message: Message
    #: True for records of a control batch (transaction markers).
    control: bool = False


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

    Raises ``ValueError`` for an empty message list.  With a codec, the batch is
    compressed unless compression would not make it smaller.
    """
    builder = DefaultRecordBatchBuilder(
        magic=2,
        compression_type=compression,
        is_transactional=transactional,
        producer_id=producer_id,
        producer_epoch=producer_epoch,
        base_sequence=base_sequence,
        batch_size=_MAX_BUILD_BYTES,
    )
    count = 0
    for i, msg in enumerate(messages):
        builder.append(i, msg.timestamp_ms, msg.key, msg.value, list(msg.headers))
        count += 1
    if count == 0:
        raise ValueError("a record batch needs at least one message")
    return bytes(builder.build())


def decode_batch(batch: bytes | memoryview) -> list[StoredMessage]:
    """Decode every record of one v2 batch (decompressing as needed).

    Raises :class:`CorruptBatch` when the records do not parse.
    """
    if len(batch) < HEADER_SIZE:
        raise CorruptBatch("batch shorter than its header")
    try:
        parsed = DefaultRecordBatch(batch)
        control = bool(parsed.attributes & CONTROL_MASK)
        out: list[StoredMessage] = []
        for record in parsed:
            headers = [(k, v if v is not None else b"") for k, v in record.headers]
            msg = Message(record.key, record.value, headers, record.timestamp)
            out.append(StoredMessage(record.offset, msg, control))
    except (KafkaError, ValueError, IndexError, OSError, EOFError) as exc:
        raise CorruptBatch(f"cannot decode record batch: {exc}") from None
    return out
