"""Bindings: exchange → queue and exchange → exchange, and their identity.

A binding is identified, as in RabbitMQ, by source, destination (kind and name), routing key and
arguments; binding twice is a no-op and unbinding what does not exist succeeds.  Arguments are
compared by their AMQP field-table encoding, which is also how they are persisted.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass, field
from enum import Enum

from pamqp import common, decode, encode

__all__ = ["Binding", "DestinationKind", "decode_table", "encode_table"]


class DestinationKind(Enum):
    """What a binding routes to."""

    QUEUE = "queue"
    EXCHANGE = "exchange"


def encode_table(table: common.FieldTable | None) -> bytes:
    """A field table in its AMQP wire encoding (without the length prefix)."""
    return encode.field_table(table or {})[4:]


def decode_table(data: bytes) -> common.FieldTable:
    """The inverse of :func:`encode_table`."""
    _, table = decode.field_table(len(data).to_bytes(4, "big") + data)
    return table


@dataclass(frozen=True, slots=True)
class Binding:
    """One binding; ``arguments`` travel encoded so that bindings are hashable."""

    source: str
    kind: DestinationKind
    destination: str
    routing_key: str
    encoded_arguments: bytes = b""
    _arguments: common.FieldTable = field(default_factory=dict, compare=False, hash=False)

    @classmethod
    def create(
        cls,
        source: str,
        kind: DestinationKind,
        destination: str,
        routing_key: str,
        arguments: common.FieldTable | None = None,
    ) -> Binding:
        """A binding with its arguments encoded for identity."""
        args = dict(arguments or {})
        return cls(source, kind, destination, routing_key, encode_table(args), args)

    @property
    def arguments(self) -> common.FieldTable:
        return self._arguments

    def to_json(self) -> dict[str, str]:
        """A JSON-able form for the metadata store."""
        return {
            "source": self.source,
            "kind": self.kind.value,
            "destination": self.destination,
            "routing_key": self.routing_key,
            "arguments": base64.b64encode(self.encoded_arguments).decode("ascii"),
        }

    @classmethod
    def from_json(cls, data: dict[str, str]) -> Binding:
        raw = base64.b64decode(data["arguments"])
        return cls(
            data["source"], DestinationKind(data["kind"]), data["destination"],
            data["routing_key"], raw, decode_table(raw) if raw else {},
        )
