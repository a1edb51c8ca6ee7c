"""LeaveGroup (v0-5): members leave at once instead of waiting for their sessions to expire.

v0-2 name one member; v3+ a batch of members, each by member id and/or group instance id
(static members leave by instance id, KIP-345), each with its own error code.  The top-level
error is the group's (``INVALID_GROUP_ID``); a v0-2 request reports its member's error there.
"""

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
    """Remove the members; the group rebalances without them."""
    version = request.api_version
    body: Any = request.body
    cls = registry.response_class(ApiKey.LeaveGroup, version)
    if version >= 3:
        leaving = [(m.member_id, m.group_instance_id) for m in body.members]
    else:
        leaving = [(body.member_id, None)]
    await trio.lowlevel.checkpoint()
    if not body.group_id:
        return cls(throttle_time_ms=0, error_code=int(ErrorCode.INVALID_GROUP_ID), members=[])
    errors = coordinator_for(ctx.core).leave(body.group_id, leaving)
    if version < 3:
        return cls(throttle_time_ms=0, error_code=int(errors[0]))
    members = [cls.MemberResponse(member_id=m, group_instance_id=i, error_code=int(e))
               for (m, i), e in zip(leaving, errors, strict=True)]
    return cls(throttle_time_ms=0, error_code=0, members=members)
