"""JoinGroup (v0-9): join a consumer group; parked until the join phase completes.

From v4 a member without a member id is first answered ``MEMBER_ID_REQUIRED`` with its new id
(KIP-394); from v5 ``group.instance.id`` makes it a static member (KIP-345).  v9's
``SkipAssignment`` is always false (we never ask a leader to skip assigning).
"""

from __future__ import annotations

from typing import Any

from handlers.kafka import registry
from handlers.kafka.apis import ApiKey
from handlers.kafka.codec import KafkaRequest
from handlers.kafka.errors import ErrorCode
from handlers.kafka.groups import JoinResult, coordinator_for
from handlers.kafka.service.context import Reply, ServiceContext

__all__ = ["handle"]


async def handle(ctx: ServiceContext, request: KafkaRequest) -> Reply:
    """Join the group; answer once the rebalance's join phase completes."""
    version = request.api_version
    body: Any = request.body
    if not body.group_id:
        result = JoinResult(ErrorCode.INVALID_GROUP_ID, body.member_id)
    else:
        instance_id = body.group_instance_id if version >= 5 else None
        result = await coordinator_for(ctx.core).join(
            body.group_id, stopping=ctx.stopping, member_id=body.member_id, instance_id=instance_id,
            client_id=request.header.client_id or "", client_host=ctx_peer(ctx),
            session_timeout_ms=body.session_timeout_ms,
            rebalance_timeout_ms=body.rebalance_timeout_ms if version >= 1 else -1,
            protocol_type=body.protocol_type,
            protocols=[(p.name, bytes(p.metadata)) for p in body.protocols],
            require_known_member_id=version >= 4)
    cls = registry.response_class(ApiKey.JoinGroup, version)
    members = [cls.JoinGroupResponseMember(member_id=m, group_instance_id=i, metadata=meta)
               for m, i, meta in result.members]
    protocol_name = result.protocol_name
    if protocol_name is None and version < 7:
        protocol_name = ""  # not nullable before v7
    return cls(throttle_time_ms=0, error_code=int(result.error),
               generation_id=result.generation_id, protocol_type=result.protocol_type,
               protocol_name=protocol_name, leader=result.leader_id, skip_assignment=False,
               member_id=result.member_id, members=members)


def ctx_peer(ctx: ServiceContext) -> str:
    """The client host DescribeGroups reports: ``/<peer host>``, as Kafka writes it, or
    "unknown" for a context without a connection (in-process tests)."""
    return f"/{ctx.peer_host}" if ctx.peer_host else "unknown"
