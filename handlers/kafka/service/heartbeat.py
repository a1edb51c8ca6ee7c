"""Heartbeat (v0-4): keeps a member's session alive; tells it when to rejoin."""

from __future__ import annotations

from typing import Any

import trio

from handlers.kafka import registry
from handlers.kafka.apis import ApiKey
from handlers.kafka.codec import KafkaRequest
from handlers.kafka.errors import ErrorCode
from handlers.kafka.groups import coordinator_for
from handlers.kafka.service.context import Reply, ServiceContext

__all__ = ["handle"]


async def handle(ctx: ServiceContext, request: KafkaRequest) -> Reply:
    """``NONE``, ``REBALANCE_IN_PROGRESS`` (rejoin), or the member's error."""
    body: Any = request.body
    if not body.group_id:
        error: int = ErrorCode.INVALID_GROUP_ID
    else:
        error = coordinator_for(ctx.core).heartbeat(
            body.group_id, member_id=body.member_id, generation_id=body.generation_id,
            instance_id=body.group_instance_id if request.api_version >= 3 else None)
    await trio.lowlevel.checkpoint()
    cls = registry.response_class(ApiKey.Heartbeat, request.api_version)
    return cls(throttle_time_ms=0, error_code=int(error))
