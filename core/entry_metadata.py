"""Broker entry metadata, encoded with protobuf.

The schema (Pulsar's field numbers)::

    syntax = "proto2";
    package polystream;
    message BrokerEntryMetadata {
        optional uint64 broker_timestamp = 1;
        optional uint64 index = 2;
    }

The descriptor is built here in Python, so no ``protoc`` is needed at install
time.  ``index`` is the offset of the first record of the entry's batch and
``broker_timestamp`` the broker publish time in epoch milliseconds.
"""

from __future__ import annotations

from typing import Any

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

from core.errors import CorruptEntry

_FILE_NAME = "polystream/broker_entry_metadata.proto"


def _build_message_class() -> Any:
    pool = descriptor_pool.DescriptorPool()
    proto = descriptor_pb2.FileDescriptorProto(
        name=_FILE_NAME, package="polystream", syntax="proto2"
    )
    msg = proto.message_type.add(name="BrokerEntryMetadata")
    for number, name in ((1, "broker_timestamp"), (2, "index")):
        msg.field.add(
            name=name,
            number=number,
            type=descriptor_pb2.FieldDescriptorProto.TYPE_UINT64,
            label=descriptor_pb2.FieldDescriptorProto.LABEL_OPTIONAL,
        )
    pool.Add(proto)
    descriptor = pool.FindMessageTypeByName("polystream.BrokerEntryMetadata")
    return message_factory.GetMessageClass(descriptor)


#: The generated protobuf message class ``BrokerEntryMetadata``.
BrokerEntryMetadata: Any = _build_message_class()


def encode_metadata(index: int, broker_timestamp: int) -> bytes:
    """Serialize one ``BrokerEntryMetadata``."""
    message = BrokerEntryMetadata(broker_timestamp=broker_timestamp, index=index)
    data: bytes = message.SerializeToString()
    return data


def decode_metadata(data: bytes | memoryview) -> tuple[int, int]:
    """Parse ``BrokerEntryMetadata``; return ``(index, broker_timestamp)``.

    Raises :class:`CorruptEntry` when the bytes do not parse or a field is missing.
    """
    message = BrokerEntryMetadata()
    try:
        message.ParseFromString(bytes(data))
    except Exception as exc:  # protobuf raises its own DecodeError
        raise CorruptEntry(f"bad broker entry metadata: {exc}") from None
    if not (message.HasField("index") and message.HasField("broker_timestamp")):
        raise CorruptEntry("broker entry metadata lacks index or broker_timestamp")
    return int(message.index), int(message.broker_timestamp)
