"""AlterConfigs (v0-v2): replace a topic's whole config set (Kafka's non-incremental API).

Configs not named in the request go back to their defaults, as in Kafka.  Topic configs are
those of :mod:`handlers.kafka.topic_configs` (unknown names or bad values ->
``INVALID_CONFIG``); the broker resource is read-only (``INVALID_REQUEST``); a missing topic
-> ``UNKNOWN_TOPIC_OR_PARTITION``.  ``validate_only`` checks without changing anything.
"""

from __future__ import annotations

from typing import Any

from core.errors import CoreError
from handlers.kafka import registry
from handlers.kafka.apis import ApiKey
from handlers.kafka.codec import KafkaRequest
from handlers.kafka.errormap import error_code
from handlers.kafka.errors import ErrorCode
from handlers.kafka.service.context import Reply, ServiceContext
from handlers.kafka.topic_configs import (
    InvalidConfig,
    ResourceType,
    TopicOverrides,
    load_topic_overrides,
    parse_topic_configs,
    store_topic_overrides,
)

__all__ = ["alter_resources", "handle"]

Change = Any  # (old TopicOverrides, resource) -> new TopicOverrides


async def handle(ctx: ServiceContext, request: KafkaRequest) -> Reply:
    """Replace the configs of every requested topic."""
    cls = registry.response_class(ApiKey.AlterConfigs, request.api_version)

    def change(_old: TopicOverrides, resource: Any) -> TopicOverrides:
        return parse_topic_configs((c.name, c.value) for c in resource.configs)

    return cls(throttle_time_ms=0, responses=await alter_resources(
        ctx, cls.AlterConfigsResourceResponse, request.body, change))


async def alter_resources(ctx: ServiceContext, result_cls: Any, body: Any, change: Change
                          ) -> list[Any]:
    """Apply ``change`` to each resource of an (Incremental)AlterConfigs request."""
    results = []
    for resource in body.resources:
        code, message = await _alter(ctx, resource, change, bool(body.validate_only))
        results.append(result_cls(error_code=int(code), error_message=message,
                                  resource_type=resource.resource_type,
                                  resource_name=resource.resource_name))
    return results


async def _alter(ctx: ServiceContext, resource: Any, change: Change, validate_only: bool
                 ) -> tuple[ErrorCode, str | None]:
    if resource.resource_type == ResourceType.BROKER:
        return ErrorCode.INVALID_REQUEST, ("Broker configs are read-only in this gateway: set "
                                           "them in its configuration file")
    if resource.resource_type != ResourceType.TOPIC:
        return ErrorCode.INVALID_REQUEST, f"Unsupported resource type {resource.resource_type}"
    try:
        ref = ctx.topic_ref(resource.resource_name)
        old = await load_topic_overrides(ctx.core, ctx.core.parse_topic(ref))
        new = change(old, resource)
        if not validate_only and new != old:
            await store_topic_overrides(ctx.core, ref, new)
    except InvalidConfig as exc:
        return ErrorCode.INVALID_CONFIG, str(exc)
    except CoreError as exc:
        return error_code(exc), str(exc) or type(exc).__name__
    return ErrorCode.NONE, None
