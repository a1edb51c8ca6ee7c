"""OffsetDelete (v0): delete a group's committed offsets for some partitions.

``GROUP_ID_NOT_FOUND`` for a group that has neither members nor offsets; partitions of topics
the members of a non-empty group subscribe to get ``GROUP_SUBSCRIBED_TO_TOPIC``.
"""

from __future__ import annotations

from typing import Any

from handlers.kafka import registry
from handlers.kafka.apis import ApiKey
from handlers.kafka.codec import KafkaRequest
from handlers.kafka.errors import ErrorCode
from handlers.kafka.groups import coordinator_for
from handlers.kafka.service.context import Reply, ServiceContext

__all__ = ["handle"]


async def handle(ctx: ServiceContext, request: KafkaRequest) -> Reply:
    """Delete the offsets the group may lose; report each partition."""
    body: Any = request.body
    wanted = [(t.name, p.partition_index) for t in body.topics for p in t.partitions]
    error, errors = await coordinator_for(ctx.core).delete_offsets(body.group_id, wanted)
    cls = registry.response_class(ApiKey.OffsetDelete, request.api_version)
    topic_cls = cls.OffsetDeleteResponseTopic
    part_cls = topic_cls.OffsetDeleteResponsePartition
    if error != ErrorCode.NONE:
        return cls(error_code=int(error), throttle_time_ms=0, topics=[])
    topics = [topic_cls(name=t.name, partitions=[
        part_cls(partition_index=p.partition_index,
                 error_code=int(errors.get((t.name, p.partition_index), ErrorCode.NONE)))
        for p in t.partitions]) for t in body.topics]
    return cls(error_code=0, throttle_time_ms=0, topics=topics)
