"""DescribeGroups (v0-6): state, protocol and members of each group.

A group we do not know is described as ``Dead`` with no error before v6 and with
``GROUP_ID_NOT_FOUND`` from v6 (KIP-1043), as Kafka does.  Member assignments are shown only
once the group is Stable; member metadata is the selected protocol's.  Authorized
operations are not computed (INT32_MIN on the wire).
"""

from __future__ import annotations

from typing import Any

from handlers.kafka import registry
from handlers.kafka.apis import ApiKey
from handlers.kafka.codec import KafkaRequest
from handlers.kafka.errors import ErrorCode
from handlers.kafka.groups import GroupState, coordinator_for
from handlers.kafka.service.context import Reply, ServiceContext

__all__ = ["handle"]


async def handle(ctx: ServiceContext, request: KafkaRequest) -> Reply:
    """Describe every requested group."""
    version = request.api_version
    body: Any = request.body
    cls = registry.response_class(ApiKey.DescribeGroups, version)
    group_cls = cls.DescribedGroup
    member_cls = group_cls.DescribedGroupMember
    coordinator = coordinator_for(ctx.core)
    described = []
    for group_id in body.groups:
        group = coordinator.group(group_id)
        if group is None or group.state is GroupState.DEAD:
            known = await coordinator.known(group_id)
            state = GroupState.EMPTY if known else GroupState.DEAD
            error = ErrorCode.NONE if known or version < 6 else ErrorCode.GROUP_ID_NOT_FOUND
            described.append(group_cls(
                error_code=int(error), error_message=None, group_id=group_id,
                group_state=state.value, protocol_type="consumer" if known else "",
                protocol_data="", members=[], authorized_operations=None))
            continue
        stable = group.state is GroupState.STABLE
        members = [member_cls(member_id=m.member_id, group_instance_id=m.instance_id,
                              client_id=m.client_id, client_host=m.client_host,
                              member_metadata=m.metadata(group.protocol_name),
                              member_assignment=m.assignment if stable else b"")
                   for m in group.members.values()]
        described.append(group_cls(
            error_code=0, error_message=None, group_id=group_id,
            group_state=group.state.value, protocol_type=group.protocol_type or "",
            protocol_data=group.protocol_name or "", members=members,
            authorized_operations=None))
    return cls(throttle_time_ms=0, groups=described)
