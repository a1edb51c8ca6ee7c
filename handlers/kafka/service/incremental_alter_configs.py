"""IncrementalAlterConfigs (v0-v1): SET, DELETE, APPEND, SUBTRACT on topic configs.

Only the named configs change (see :func:`handlers.kafka.topic_configs.apply_incremental`);
errors as for AlterConfigs (:mod:`handlers.kafka.service.alter_configs`).
"""

from __future__ import annotations

from typing import Any

from handlers.kafka import registry
from handlers.kafka.apis import ApiKey
from handlers.kafka.codec import KafkaRequest
from handlers.kafka.service.alter_configs import alter_resources
from handlers.kafka.service.context import Reply, ServiceContext
from handlers.kafka.topic_configs import TopicOverrides, apply_incremental

__all__ = ["handle"]


async def handle(ctx: ServiceContext, request: KafkaRequest) -> Reply:
    """Apply the requested operations to every topic."""
    cls = registry.response_class(ApiKey.IncrementalAlterConfigs, request.api_version)

    def change(old: TopicOverrides, resource: Any) -> TopicOverrides:
        return apply_incremental(
            old, ((c.name, c.config_operation, c.value) for c in resource.configs))

    return cls(throttle_time_ms=0, responses=await alter_resources(
        ctx, cls.AlterConfigsResourceResponse, request.body, change))
