"""ListGroups (v0-5): every group of this broker (v4: filtered by state, v5: by type).

All our groups are "classic" groups (v5's ``GroupType``); groups known only from committed
offsets (after a restart) are listed as Empty ``consumer`` groups.
"""

from __future__ import annotations

from typing import Any

from handlers.kafka import registry
from handlers.kafka.apis import ApiKey
from handlers.kafka.codec import KafkaRequest
from handlers.kafka.groups import coordinator_for
from handlers.kafka.service.context import Reply, ServiceContext

__all__ = ["GROUP_TYPE", "handle"]

GROUP_TYPE = "classic"


async def handle(ctx: ServiceContext, request: KafkaRequest) -> Reply:
    """List the groups that pass the request's filters."""
    version = request.api_version
    body: Any = request.body
    states = {s.lower() for s in body.states_filter} if version >= 4 else set()
    types = {t.lower() for t in body.types_filter} if version >= 5 else set()
    cls = registry.response_class(ApiKey.ListGroups, version)
    groups = []
    for g in await coordinator_for(ctx.core).list_groups():
        if states and g.state.value.lower() not in states:
            continue
        if types and GROUP_TYPE not in types:
            continue
        groups.append(cls.ListedGroup(group_id=g.group_id, protocol_type=g.protocol_type,
                                      group_state=g.state.value, group_type=GROUP_TYPE))
    return cls(throttle_time_ms=0, error_code=0, groups=groups)
