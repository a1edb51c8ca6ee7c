"""InitProducerId: give an idempotent producer its producer id and epoch.

* ``transactional_id`` null (an idempotent, non-transactional producer): a fresh
  producer id from :meth:`core.api.Core.allocate_producer_id`, epoch 0.  As in Kafka,
  the ``producer_id``/``producer_epoch`` of v3+ (a producer asking to bump its epoch
  after an error, KIP-360) get a new id with epoch 0 too: without a transactional id
  there is nothing to fence, and a new id starts a clean sequence.  The core then
  deduplicates the producer's batches per partition (see :mod:`core.dedup`).
* ``transactional_id`` set: ``TRANSACTIONAL_ID_AUTHORIZATION_FAILED`` until
  transactions are served.  A fatal error, so a transactional client fails at once
  with a clear message; ``COORDINATOR_NOT_AVAILABLE`` would be retriable and leave it
  retrying forever.  Produce refuses transactional requests with the same code.
"""

from __future__ import annotations

from core.errors import CoreError
from handlers.kafka import registry
from handlers.kafka.apis import ApiKey
from handlers.kafka.codec import KafkaRequest
from handlers.kafka.errormap import error_code
from handlers.kafka.errors import ErrorCode
from handlers.kafka.service.context import Reply, ServiceContext

__all__ = ["INITIAL_EPOCH", "handle"]

INITIAL_EPOCH = 0


async def handle(ctx: ServiceContext, request: KafkaRequest) -> Reply:
    """Allocate a producer id for a non-transactional producer."""
    cls = registry.response_class(ApiKey.InitProducerId, request.api_version)
    if request.body.transactional_id is not None:
        refused = ErrorCode.TRANSACTIONAL_ID_AUTHORIZATION_FAILED
        return cls(throttle_time_ms=0, error_code=int(refused), producer_id=-1, producer_epoch=-1)
    try:
        producer_id = await ctx.core.allocate_producer_id()
    except CoreError as exc:
        return cls(throttle_time_ms=0, error_code=int(error_code(exc)), producer_id=-1,
                   producer_epoch=-1)
    return cls(throttle_time_ms=0, error_code=int(ErrorCode.NONE), producer_id=producer_id,
               producer_epoch=INITIAL_EPOCH)
