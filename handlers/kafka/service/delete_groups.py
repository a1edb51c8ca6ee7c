"""DeleteGroups (v0-2): delete groups without members, with their committed offsets.

``NON_EMPTY_GROUP`` while a group has members, ``GROUP_ID_NOT_FOUND`` for an unknown group.
"""

from __future__ import annotations

from typing import Any

from handlers.kafka import registry
from handlers.kafka.apis import ApiKey
from handlers.kafka.codec import KafkaRequest
from handlers.kafka.groups import coordinator_for
from handlers.kafka.service.context import Reply, ServiceContext

__all__ = ["handle"]


async def handle(ctx: ServiceContext, request: KafkaRequest) -> Reply:
    """Delete each named group; report each."""
    body: Any = request.body
    coordinator = coordinator_for(ctx.core)
    cls = registry.response_class(ApiKey.DeleteGroups, request.api_version)
    results = []
    for group_id in body.groups_names:
        error = await coordinator.delete_group(group_id)
        results.append(cls.DeletableGroupResult(group_id=group_id, error_code=int(error)))
    return cls(throttle_time_ms=0, results=results)
