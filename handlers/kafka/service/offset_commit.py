"""OffsetCommit (v2-9): store a group's committed offsets as its core cursors.

Group members commit with their generation and member id (errors as Kafka: ``UNKNOWN_MEMBER_ID``,
``ILLEGAL_GENERATION``, ``REBALANCE_IN_PROGRESS``, ``FENCED_INSTANCE_ID``); a commit with
generation -1 and no member id into a group without members is a "simple" commit (manual
assignment) and is accepted.  Unknown topics or partitions get ``UNKNOWN_TOPIC_OR_PARTITION``,
metadata longer than :data:`MAX_METADATA_BYTES` gets ``OFFSET_METADATA_TOO_LARGE``.  The answer
is sent once the offsets are durable.  v10 names topics by id only, which we lack.
"""

from __future__ import annotations

from typing import Any

from core.api import wall_clock_ms
from core.errors import CoreError
from handlers.kafka import registry
from handlers.kafka.apis import ApiKey
from handlers.kafka.codec import KafkaRequest
from handlers.kafka.errormap import error_code
from handlers.kafka.errors import ErrorCode
from handlers.kafka.groups import CommittedOffset, coordinator_for
from handlers.kafka.service.context import Reply, ServiceContext

__all__ = ["MAX_METADATA_BYTES", "handle"]

MAX_METADATA_BYTES = 4096
"""Kafka's ``offset.metadata.max.bytes`` default."""


async def handle(ctx: ServiceContext, request: KafkaRequest) -> Reply:
    """Validate each partition, then commit the valid ones if the group allows it."""
    version = request.api_version
    body: Any = request.body
    now = wall_clock_ms()
    errors: dict[tuple[str, int], int] = {}
    valid: dict[tuple[str, int], tuple[CommittedOffset, str]] = {}
    for topic in body.topics:
        for p in topic.partitions:
            tp = (topic.name, p.partition_index)
            metadata = p.committed_metadata
            if metadata is not None and len(metadata.encode("utf-8")) > MAX_METADATA_BYTES:
                errors[tp] = ErrorCode.OFFSET_METADATA_TOO_LARGE
                continue
            try:
                ref = await ctx.partition(topic.name, p.partition_index)
            except CoreError as exc:
                errors[tp] = error_code(exc)
                continue
            log_name = ctx.core.parse_topic(ref).log_name(p.partition_index)
            epoch = p.committed_leader_epoch if version >= 6 else -1
            valid[tp] = (CommittedOffset(p.committed_offset, epoch, metadata, now), log_name)
            errors[tp] = ErrorCode.NONE
    group_error = await coordinator_for(ctx.core).commit(
        body.group_id, member_id=body.member_id, generation_id=body.generation_id_or_member_epoch,
        instance_id=body.group_instance_id if version >= 7 else None,
        offsets=valid if valid else {})
    if group_error != ErrorCode.NONE:
        errors = dict.fromkeys(errors, group_error)
    cls = registry.response_class(ApiKey.OffsetCommit, version)
    topic_cls = cls.OffsetCommitResponseTopic
    part_cls = topic_cls.OffsetCommitResponsePartition
    topics = [topic_cls(name=topic.name, partitions=[
        part_cls(partition_index=p.partition_index,
                 error_code=int(errors[(topic.name, p.partition_index)]))
        for p in topic.partitions]) for topic in body.topics]
    return cls(throttle_time_ms=0, topics=topics)
