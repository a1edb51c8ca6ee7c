"""ListOffsets (v1+ semantics): one offset per partition for a timestamp query.

* ``-2`` (earliest): the first offset still stored;
* ``-1`` (latest): the high watermark; with ``isolation_level`` 1 (READ_COMMITTED, v2+) the
  last stable offset (the first offset of the oldest open transaction, else the high
  watermark);
* ``t >= 0``: the first offset of the first batch whose *broker publish time* is at or after
  ``t`` (the core indexes publish time, not the records' own timestamps), with that batch's
  publish time; offset and timestamp -1 when there is none;
* ``-3`` (max timestamp, v7, KIP-734) and other negative queries: ``UNSUPPORTED_VERSION`` for
  that partition -- not implemented yet.
"""

from __future__ import annotations

from core.errors import CoreError
from handlers.kafka import registry
from handlers.kafka.apis import ApiKey
from handlers.kafka.codec import KafkaRequest
from handlers.kafka.errormap import error_code
from handlers.kafka.errors import ErrorCode
from handlers.kafka.service.context import LEADER_EPOCH, Reply, ServiceContext

__all__ = ["EARLIEST", "LATEST", "MAX_TIMESTAMP", "READ_COMMITTED", "handle"]

READ_COMMITTED = 1
"""The request's ``isolation_level`` for READ_COMMITTED (0 is READ_UNCOMMITTED)."""

LATEST = -1
EARLIEST = -2
MAX_TIMESTAMP = -3


async def handle(ctx: ServiceContext, request: KafkaRequest) -> Reply:
    """Answer every (topic, partition, timestamp) query of the request."""
    cls = registry.response_class(ApiKey.ListOffsets, request.api_version)
    topic_cls = cls.ListOffsetsTopicResponse
    part_cls = topic_cls.ListOffsetsPartitionResponse
    committed = request.api_version >= 2 and request.body.isolation_level == READ_COMMITTED
    topics = []
    for topic in request.body.topics:
        parts = []
        for p in topic.partitions:
            error, offset, timestamp = await _lookup(ctx, topic.name, p.partition_index,
                                                     p.timestamp, committed)
            parts.append(part_cls(partition_index=p.partition_index, error_code=int(error),
                                  old_style_offsets=[], timestamp=timestamp, offset=offset,
                                  leader_epoch=LEADER_EPOCH if error == ErrorCode.NONE else -1))
        topics.append(topic_cls(name=topic.name, partitions=parts))
    return cls(throttle_time_ms=0, topics=topics)


async def _lookup(ctx: ServiceContext, name: str, index: int, query: int,
                  committed: bool = False) -> tuple[ErrorCode, int, int]:
    """``(error, offset, timestamp)`` for one partition (``committed``: READ_COMMITTED)."""
    try:
        ref = await ctx.partition(name, index)
        core = ctx.core
        if query == LATEST and committed:
            return ErrorCode.NONE, await core.transactions.last_stable_offset(ref, index), -1
        if query == LATEST:
            return ErrorCode.NONE, await core.latest_offset(ref, index), -1
        if query == EARLIEST:
            return ErrorCode.NONE, await core.earliest_offset(ref, index), -1
        if query < 0:
            return ErrorCode.UNSUPPORTED_VERSION, -1, -1
        found = await core.offset_for_timestamp(ref, index, query)
        if found is None:
            return ErrorCode.NONE, -1, -1
        entries = await core.read(ref, index, found, 1)
        timestamp = entries[0].broker_timestamp if entries else -1
        return ErrorCode.NONE, found, timestamp
    except CoreError as exc:
        return error_code(exc), -1, -1
