"""DeleteTopics (v1-v5, by name): delete topics with their partitions' logs and configs.

v6 names topics by id (or name) and is not served: topic ids are not supported yet.  Per
topic: an illegal name -> ``INVALID_TOPIC_EXCEPTION``; a missing one ->
``UNKNOWN_TOPIC_OR_PARTITION``.  A name given twice is deleted once and reported twice.
"""

from __future__ import annotations

from core.errors import CoreError
from handlers.kafka import registry
from handlers.kafka.apis import ApiKey
from handlers.kafka.codec import KafkaRequest
from handlers.kafka.errormap import error_code
from handlers.kafka.errors import ErrorCode
from handlers.kafka.service.context import Reply, ServiceContext
from handlers.kafka.topic_configs import delete_topic_overrides

__all__ = ["handle"]


async def handle(ctx: ServiceContext, request: KafkaRequest) -> Reply:
    """Delete every named topic and report each outcome."""
    cls = registry.response_class(ApiKey.DeleteTopics, request.api_version)
    done: dict[str, tuple[ErrorCode, str | None]] = {}
    results = []
    for name in request.body.topic_names:
        if name not in done:
            done[name] = await _delete(ctx, name)
        code, message = done[name]
        results.append(cls.DeletableTopicResult(name=name, topic_id=None, error_code=int(code),
                                                error_message=message))
    return cls(throttle_time_ms=0, responses=results)


async def _delete(ctx: ServiceContext, name: str) -> tuple[ErrorCode, str | None]:
    core = ctx.core
    try:
        ref = ctx.topic_ref(name)
        topic = core.parse_topic(ref)
        await core.delete_topic(ref)
        await delete_topic_overrides(core, topic)
    except CoreError as exc:
        return error_code(exc), str(exc) or type(exc).__name__
    return ErrorCode.NONE, None
