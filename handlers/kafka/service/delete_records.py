"""DeleteRecords (v0-v2): move partitions' log start offset forward.

Per partition: ``offset`` -1 means the high watermark; an offset above the high watermark or
below -1 -> ``OFFSET_OUT_OF_RANGE``; a missing topic/partition ->
``UNKNOWN_TOPIC_OR_PARTITION``.  The answer carries the partition's new low watermark.

Limitation: the core has no "log start offset" of its own yet, only whole-segment trimming.
:func:`truncate_before_offset` drops every storage segment that lies entirely before the
offset, so the low watermark reported is the first offset still stored, which may lie *below*
the requested offset (records of the segment holding it stay readable).  The core API that
would make this exact is proposed in the handler's notes (``Core.delete_records_before``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from core.errors import CoreError, OffsetOutOfRange
from handlers.kafka import registry
from handlers.kafka.apis import ApiKey
from handlers.kafka.codec import KafkaRequest
from handlers.kafka.errormap import error_code
from handlers.kafka.errors import ErrorCode
from handlers.kafka.service.context import Reply, ServiceContext

if TYPE_CHECKING:
    from core.api import Core

__all__ = ["handle", "truncate_before_offset"]

HIGH_WATERMARK = -1


async def handle(ctx: ServiceContext, request: KafkaRequest) -> Reply:
    """Trim every requested partition and report its low watermark."""
    cls = registry.response_class(ApiKey.DeleteRecords, request.api_version)
    topic_cls = cls.DeleteRecordsTopicResult
    part_cls = topic_cls.DeleteRecordsPartitionResult
    topics = []
    for topic in request.body.topics:
        parts = []
        for p in topic.partitions:
            try:
                ref = await ctx.partition(topic.name, p.partition_index)
                low = await truncate_before_offset(ctx.core, ref, p.partition_index, p.offset)
            except CoreError as exc:
                parts.append(part_cls(partition_index=p.partition_index, low_watermark=-1,
                                      error_code=int(error_code(exc))))
            else:
                parts.append(part_cls(partition_index=p.partition_index, low_watermark=low,
                                      error_code=int(ErrorCode.NONE)))
        topics.append(topic_cls(name=topic.name, partitions=parts))
    return cls(throttle_time_ms=0, topics=topics)


async def truncate_before_offset(core: Core, ref: str, partition: int, offset: int) -> int:
    """Drop the stored entries before ``offset`` (-1: the high watermark) as far as storage
    allows (whole segments); return the first offset still stored.

    Raises OffsetOutOfRange for an offset above the high watermark or below -1, and the
    core's lookup errors for a missing topic or partition.
    """
    high = await core.latest_offset(ref, partition)
    if offset == HIGH_WATERMARK:
        offset = high
    if not 0 <= offset <= high:
        raise OffsetOutOfRange(offset, await core.earliest_offset(ref, partition), high)
    if offset > await core.earliest_offset(ref, partition):
        log = await core.storage.open_log(core.parse_topic(ref).log_name(partition))
        # the last entry ending before ``offset``: keys are the offsets of batches' last records
        floor = await log.floor_position(offset - 1)
        if floor is not None:
            await log.truncate_before(floor + 1)
    return await core.earliest_offset(ref, partition)
