"""SyncGroup (v0-5): the leader hands in the assignment; every member gets its own share.

Assignments are opaque bytes (client-side assignors, cooperative-sticky included, pass through
untouched).  Parked until the leader's SyncGroup arrives (or the rebalance times out).
"""

from __future__ import annotations

from typing import Any

from handlers.kafka import registry
from handlers.kafka.apis import ApiKey
from handlers.kafka.codec import KafkaRequest
from handlers.kafka.errors import ErrorCode
from handlers.kafka.groups import SyncResult, coordinator_for
from handlers.kafka.service.context import Reply, ServiceContext

__all__ = ["handle"]


async def handle(ctx: ServiceContext, request: KafkaRequest) -> Reply:
    """Answer with this member's assignment once the leader has sent them."""
    version = request.api_version
    body: Any = request.body
    if not body.group_id:
        result = SyncResult(ErrorCode.INVALID_GROUP_ID)
    else:
        result = await coordinator_for(ctx.core).sync(
            body.group_id, member_id=body.member_id, generation_id=body.generation_id,
            instance_id=body.group_instance_id if version >= 3 else None,
            protocol_type=body.protocol_type if version >= 5 else None,
            protocol_name=body.protocol_name if version >= 5 else None,
            assignments=[(a.member_id, bytes(a.assignment)) for a in body.assignments],
            stopping=ctx.stopping)
    cls = registry.response_class(ApiKey.SyncGroup, version)
    return cls(throttle_time_ms=0, error_code=int(result.error),
               protocol_type=result.protocol_type, protocol_name=result.protocol_name,
               assignment=result.assignment)
