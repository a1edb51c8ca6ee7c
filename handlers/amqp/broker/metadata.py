"""Durable exchanges, queues and bindings in the metadata store.

Keys, under the vhost's namespace ``<tenant>/<ns>`` (names URL-quoted)::

    amqp/<tenant>/<ns>/exchanges/<name>   {"type", "durable", "auto_delete", "internal",
                                            "arguments"}
    amqp/<tenant>/<ns>/queues/<name>      {"auto_delete", "arguments"}
    amqp/<tenant>/<ns>/bindings/<source>/<kind>/<destination>/<hex digest>   a binding

``arguments`` are AMQP field tables in their wire encoding, base64.  Only durable exchanges and
queues are stored, and only bindings between durable ends (RabbitMQ's rule), so a restart brings
back exactly what a RabbitMQ restart would.
"""

from __future__ import annotations

import base64
import hashlib
import json
from dataclasses import dataclass
from urllib.parse import quote, unquote

from core.names import NamespaceName
from handlers.amqp.broker.bindings import Binding, decode_table, encode_table
from handlers.amqp.broker.exchanges import Exchange, ExchangeType
from handlers.amqp.broker.queues import Queue, QueueArguments
from storage.api import MetadataStore

__all__ = ["AmqpMetadata", "Stored"]


def _q(name: str) -> str:
    return quote(name, safe="") or "%00default"


@dataclass(slots=True)
class Stored:
    """Everything stored for one vhost."""

    exchanges: list[Exchange]
    queues: list[Queue]
    bindings: list[Binding]


class AmqpMetadata:
    """Reads and writes one namespace's AMQP entities."""

    def __init__(self, store: MetadataStore, namespace: NamespaceName) -> None:
        self._store = store
        self._prefix = f"amqp/{namespace.tenant}/{namespace.namespace}/"

    def _exchange_key(self, name: str) -> str:
        return f"{self._prefix}exchanges/{_q(name)}"

    def _queue_key(self, name: str) -> str:
        return f"{self._prefix}queues/{_q(name)}"

    def _binding_key(self, b: Binding) -> str:
        digest = hashlib.sha256(
            b.routing_key.encode("utf-8") + b"\0" + b.encoded_arguments
        ).hexdigest()[:32]
        return (
            f"{self._prefix}bindings/{_q(b.source)}/{b.kind.value}/{_q(b.destination)}/{digest}"
        )

    async def save_exchange(self, exchange: Exchange) -> None:
        data = {
            "type": exchange.type.value,
            "durable": exchange.durable,
            "auto_delete": exchange.auto_delete,
            "internal": exchange.internal,
            "arguments": base64.b64encode(encode_table(exchange.arguments)).decode("ascii"),
        }
        await self._store.put(self._exchange_key(exchange.name), json.dumps(data).encode())

    async def delete_exchange(self, name: str) -> None:
        await self._store.delete(self._exchange_key(name))

    async def save_queue(self, queue: Queue) -> None:
        data = {
            "auto_delete": queue.auto_delete,
            "arguments": base64.b64encode(encode_table(queue.arguments)).decode("ascii"),
        }
        await self._store.put(self._queue_key(queue.name), json.dumps(data).encode())

    async def delete_queue(self, name: str) -> None:
        await self._store.delete(self._queue_key(name))

    async def save_binding(self, binding: Binding) -> None:
        await self._store.put(self._binding_key(binding), json.dumps(binding.to_json()).encode())

    async def delete_binding(self, binding: Binding) -> None:
        await self._store.delete(self._binding_key(binding))

    async def load(self) -> Stored:
        """Every stored exchange, queue and binding of the namespace."""
        exchanges = []
        for key, rec in await self._store.list(f"{self._prefix}exchanges/"):
            name = unquote(key.rsplit("/", 1)[1])
            name = "" if name == "\0default" else name
            data = json.loads(rec.value)
            raw = base64.b64decode(data["arguments"])
            exchanges.append(Exchange(
                name, ExchangeType(data["type"]), bool(data["durable"]),
                bool(data["auto_delete"]), bool(data["internal"]),
                decode_table(raw) if raw else {},
            ))
        queues = []
        for key, rec in await self._store.list(f"{self._prefix}queues/"):
            name = unquote(key.rsplit("/", 1)[1])
            data = json.loads(rec.value)
            raw = base64.b64decode(data["arguments"])
            args = decode_table(raw) if raw else {}
            queues.append(Queue(
                name, durable=True, auto_delete=bool(data["auto_delete"]), arguments=args,
                parsed=QueueArguments.parse(args),
            ))
        bindings = [
            Binding.from_json(json.loads(rec.value))
            for _, rec in await self._store.list(f"{self._prefix}bindings/")
        ]
        return Stored(exchanges, queues, bindings)
