"""SaslHandshake (v0-v1): choose the SASL mechanism of a connection.

The exchange itself lives in :mod:`handlers.kafka.sasl`; the session calls :func:`handshake`
with its connection's :class:`~handlers.kafka.sasl.KafkaSaslServer`.  :func:`handle` (the
``SERVICES`` entry) serves listeners without SASL: like Kafka on a PLAINTEXT listener it
answers ``ILLEGAL_SASL_STATE`` and keeps the connection.
"""

from __future__ import annotations

from handlers.kafka import registry
from handlers.kafka.apis import ApiKey
from handlers.kafka.codec import KafkaRequest
from handlers.kafka.errors import ErrorCode
from handlers.kafka.sasl import KafkaSaslServer, SaslFailure
from handlers.kafka.service.context import Reply, ServiceContext

__all__ = ["handle", "handshake"]


async def handle(ctx: ServiceContext, request: KafkaRequest) -> Reply:
    """A handshake on a listener without SASL: ``ILLEGAL_SASL_STATE``, no mechanisms."""
    cls = registry.response_class(ApiKey.SaslHandshake, request.api_version)
    return cls(error_code=int(ErrorCode.ILLEGAL_SASL_STATE), mechanisms=[])


def handshake(sasl: KafkaSaslServer, request: KafkaRequest) -> tuple[Reply, SaslFailure | None]:
    """Answer a handshake; with a failure the session logs it and closes after the reply."""
    cls = registry.response_class(ApiKey.SaslHandshake, request.api_version)
    try:
        sasl.handshake(request.body.mechanism, request.api_version)
    except SaslFailure as exc:
        return cls(error_code=int(exc.code), mechanisms=list(sasl.mechanisms)), exc
    return cls(error_code=0, mechanisms=list(sasl.mechanisms)), None
