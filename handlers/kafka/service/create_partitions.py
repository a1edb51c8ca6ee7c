"""CreatePartitions (v0-v3): grow a topic to a new partition count, or a dry run.

Per topic: a missing topic -> ``UNKNOWN_TOPIC_OR_PARTITION``; a count not above the current
one, or above the core's limit -> ``INVALID_PARTITIONS``; ``assignments`` must place each new
partition on broker 0 alone (this gateway is one broker), else ``INVALID_REQUEST``; a topic
named twice -> ``INVALID_REQUEST`` for both.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from core.errors import CoreError, InvalidPartitionCount
from core.topics import check_partition_count
from handlers.kafka import registry
from handlers.kafka.apis import ApiKey
from handlers.kafka.codec import KafkaRequest
from handlers.kafka.errormap import error_code
from handlers.kafka.errors import ErrorCode
from handlers.kafka.service.context import BROKER_ID, Reply, ServiceContext

__all__ = ["handle"]


async def handle(ctx: ServiceContext, request: KafkaRequest) -> Reply:
    """Add partitions to every topic of the request."""
    cls = registry.response_class(ApiKey.CreatePartitions, request.api_version)
    body = request.body
    counts = Counter(t.name for t in body.topics)
    results = []
    for topic in body.topics:
        code: ErrorCode
        message: str | None
        if counts[topic.name] > 1:
            code, message = ErrorCode.INVALID_REQUEST, "Duplicate topic in request."
        else:
            code, message = await _grow(ctx, topic, bool(body.validate_only))
        results.append(cls.CreatePartitionsTopicResult(
            name=topic.name, error_code=int(code), error_message=message))
    return cls(throttle_time_ms=0, results=results)


async def _grow(ctx: ServiceContext, topic: Any, validate_only: bool
                ) -> tuple[ErrorCode, str | None]:
    try:
        ref, info = await ctx.topic(topic.name)
        count = topic.count
        if count <= info.partitions:
            raise InvalidPartitionCount(
                f"Topic currently has {info.partitions} partitions, which is higher than or "
                f"equal to the requested {count}.")
        check_partition_count(count)
        if topic.assignments is not None:
            if len(topic.assignments) != count - info.partitions:
                return ErrorCode.INVALID_REQUEST, (
                    f"Increasing the number of partitions by {count - info.partitions} but "
                    f"{len(topic.assignments)} assignments provided.")
            if any(list(a.broker_ids) != [BROKER_ID] for a in topic.assignments):
                return ErrorCode.INVALID_REQUEST, (
                    f"This gateway is one broker (id {BROKER_ID}): new partitions must be "
                    f"assigned to [{BROKER_ID}]")
        if not validate_only:
            await ctx.core.add_partitions(ref, count)
    except CoreError as exc:
        return error_code(exc), str(exc) or type(exc).__name__
    return ErrorCode.NONE, None
