"""FindCoordinator: this broker coordinates every group and every transactional id.

Key type 0 (group) and 1 (transaction: the core's transaction coordinator, reached through
InitProducerId, AddPartitionsToTxn, ..., EndTxn) are answered with our node; v4+ answers each
key of the batch (``CoordinatorKeys``, KIP-699).  Other key types get ``INVALID_REQUEST``.
"""

from __future__ import annotations

from typing import Any

from handlers.kafka import registry
from handlers.kafka.apis import ApiKey
from handlers.kafka.codec import KafkaRequest
from handlers.kafka.errors import ErrorCode
from handlers.kafka.service.context import BROKER_ID, Reply, ServiceContext

__all__ = ["GROUP_KEY", "TRANSACTION_KEY", "handle"]

GROUP_KEY = 0
TRANSACTION_KEY = 1


async def handle(ctx: ServiceContext, request: KafkaRequest) -> Reply:
    """Name this broker as the coordinator of the key (or of each key, v4+)."""
    version = request.api_version
    cls = registry.response_class(ApiKey.FindCoordinator, version)
    body: Any = request.body
    key_type = body.key_type if version >= 1 else GROUP_KEY
    ok = key_type in (GROUP_KEY, TRANSACTION_KEY)
    error = ErrorCode.NONE if ok else ErrorCode.INVALID_REQUEST
    message = None if ok else f"unsupported coordinator key type {key_type}"
    node, host, port = (BROKER_ID, ctx.advertised_host, ctx.advertised_port) if ok else (
        -1, "", -1)
    if version >= 4:
        coordinators = [cls.Coordinator(key=key, node_id=node, host=host, port=port,
                                        error_code=int(error), error_message=message)
                        for key in body.coordinator_keys]
        return cls(throttle_time_ms=0, coordinators=coordinators)
    return cls(throttle_time_ms=0, error_code=int(error), error_message=message, node_id=node,
               host=host, port=port)
