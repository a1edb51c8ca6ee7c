"""AddOffsetsToTxn (v0-4): announce that a transaction will commit a group's offsets.

Kafka adds the group's ``__consumer_offsets`` partition to the transaction here; our offset
commits are held by the core's transaction itself (:meth:`TransactionCoordinator.commit_offsets`,
see :mod:`handlers.kafka.service.txn_offset_commit`), so this only begins the producer's
transaction if needed and checks the producer (fenced epoch, unknown producer id).
v4 only adds ``TRANSACTION_ABORTABLE``, which we never answer.
"""

from __future__ import annotations

from typing import Any

from core.errors import CoreError
from handlers.kafka import registry
from handlers.kafka.apis import ApiKey
from handlers.kafka.codec import KafkaRequest
from handlers.kafka.errors import ErrorCode
from handlers.kafka.service.add_partitions_to_txn import open_transaction, txn_error_code
from handlers.kafka.service.context import Reply, ServiceContext

__all__ = ["handle"]


async def handle(ctx: ServiceContext, request: KafkaRequest) -> Reply:
    """Open (or find) the producer's transaction; the group id needs no registration."""
    body: Any = request.body
    cls = registry.response_class(ApiKey.AddOffsetsToTxn, request.api_version)
    code = int(ErrorCode.NONE)
    if not body.group_id:
        code = int(ErrorCode.INVALID_REQUEST)
    else:
        try:
            await open_transaction(ctx, body.transactional_id, body.producer_id,
                                   body.producer_epoch)
        except CoreError as exc:
            code = txn_error_code(exc, request.api_version)
    return cls(throttle_time_ms=0, error_code=code)
