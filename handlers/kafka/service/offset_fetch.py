"""OffsetFetch (v1-8): a group's committed offsets (v8: of several groups at once).

A partition without a committed offset answers offset -1 and empty metadata (no error), as
Kafka does; a null topic list (v2+) asks for every partition the group committed.
``RequireStable`` (v7+): a partition with a transactional offset commit still pending (its
transaction neither committed nor aborted, :meth:`TransactionCoordinator.has_pending_offsets`)
answers ``UNSTABLE_OFFSET_COMMIT`` and offset -1; the client retries.
v9 adds KIP-848 member epochs, v10 topic ids: not served.
"""

from __future__ import annotations

from typing import Any

from core.errors import CoreError
from handlers.kafka import registry
from handlers.kafka.apis import ApiKey
from handlers.kafka.codec import KafkaRequest
from handlers.kafka.errors import ErrorCode
from handlers.kafka.groups import CommittedOffset, coordinator_for, subscription_name
from handlers.kafka.service.context import Reply, ServiceContext

__all__ = ["handle"]

_NONE = CommittedOffset(-1, -1, "", -1)


async def _lookup(ctx: ServiceContext, group_id: str, topics: Any | None,
                  require_stable: bool = False
                  ) -> list[tuple[str, list[tuple[int, CommittedOffset, int]]]]:
    """``[(topic, [(partition, committed, error)])]`` for the requested (or all) partitions."""
    committed = await coordinator_for(ctx.core).fetch_offsets(group_id)
    if topics is None:
        by_topic: dict[str, list[tuple[int, CommittedOffset]]] = {}
        for (name, index), found in sorted(committed.items()):
            by_topic.setdefault(name, []).append((index, found))
        found_all = list(by_topic.items())
    else:
        found_all = [(t.name, [(i, committed.get((t.name, i), _NONE))
                               for i in t.partition_indexes]) for t in topics]
    return [(name, [_stable(ctx, group_id, name, i, c, require_stable) for i, c in parts])
            for name, parts in found_all]


def _stable(ctx: ServiceContext, group_id: str, name: str, index: int, found: CommittedOffset,
            require_stable: bool) -> tuple[int, CommittedOffset, int]:
    """``(partition, committed, error)``: UNSTABLE_OFFSET_COMMIT while a transaction holds a
    commit for it (when the client asks for stable offsets)."""
    if require_stable:
        try:
            ref = ctx.topic_ref(name)
        except CoreError:
            return index, found, int(ErrorCode.NONE)
        if ctx.core.transactions.has_pending_offsets(subscription_name(group_id), ref, index):
            return index, _NONE, int(ErrorCode.UNSTABLE_OFFSET_COMMIT)
    return index, found, int(ErrorCode.NONE)


async def handle(ctx: ServiceContext, request: KafkaRequest) -> Reply:
    """Answer the committed offset of each requested partition."""
    version = request.api_version
    body: Any = request.body
    cls = registry.response_class(ApiKey.OffsetFetch, version)
    if version >= 8:
        group_cls = cls.OffsetFetchResponseGroup
        topic_cls = group_cls.OffsetFetchResponseTopics
        part_cls = topic_cls.OffsetFetchResponsePartitions
        groups = []
        for group in body.groups:
            found = await _lookup(ctx, group.group_id, group.topics, body.require_stable)
            topics = [topic_cls(name=name, partitions=[
                part_cls(partition_index=i, committed_offset=c.offset,
                         committed_leader_epoch=c.leader_epoch, metadata=c.metadata,
                         error_code=e) for i, c, e in parts]) for name, parts in found]
            groups.append(group_cls(group_id=group.group_id, topics=topics, error_code=0))
        return cls(throttle_time_ms=0, groups=groups)
    topic_cls = cls.OffsetFetchResponseTopic
    part_cls = topic_cls.OffsetFetchResponsePartition
    found = await _lookup(ctx, body.group_id, body.topics, version >= 7 and body.require_stable)
    topics = [topic_cls(name=name, partitions=[
        part_cls(partition_index=i, committed_offset=c.offset,
                 committed_leader_epoch=c.leader_epoch, metadata=c.metadata, error_code=e)
        for i, c, e in parts]) for name, parts in found]
    return cls(throttle_time_ms=0, topics=topics, error_code=0)
