"""DescribeConfigs (v1-v4): topic configs and the read-only broker resource.

* topic (resource type 2): the configs of :mod:`handlers.kafka.topic_configs`, each with its
  source (``DYNAMIC_TOPIC_CONFIG`` when set on the topic, else the namespace policy or core
  setting it inherits); a missing topic -> ``UNKNOWN_TOPIC_OR_PARTITION``;
* broker (resource type 4) named ``""`` or ``"0"``: the core's defaults, read-only; another
  broker id -> ``INVALID_REQUEST``;
* other resource types -> ``INVALID_REQUEST``.

``configuration_keys`` null lists everything; unknown keys are left out, as Kafka does.
Synonyms (v1+) and documentation (v3+) are included when asked for.
"""

from __future__ import annotations

from typing import Any

from core.errors import CoreError
from handlers.kafka import registry
from handlers.kafka.apis import ApiKey
from handlers.kafka.codec import KafkaRequest
from handlers.kafka.errormap import error_code
from handlers.kafka.errors import ErrorCode
from handlers.kafka.service.context import BROKER_ID, Reply, ServiceContext
from handlers.kafka.topic_configs import (
    ConfigEntry,
    ResourceType,
    broker_configs,
    load_topic_overrides,
    topic_configs,
)

__all__ = ["handle", "is_this_broker"]


def is_this_broker(name: str) -> bool:
    """Whether a broker resource name means this broker (``""`` is the cluster default)."""
    return name in ("", str(BROKER_ID))


async def handle(ctx: ServiceContext, request: KafkaRequest) -> Reply:
    """Describe every requested resource."""
    version = request.api_version
    body = request.body
    cls = registry.response_class(ApiKey.DescribeConfigs, version)
    synonyms = bool(body.include_synonyms)
    docs = version >= 3 and bool(body.include_documentation)
    results = []
    for resource in body.resources:
        code, message, entries = ErrorCode.NONE, None, []
        keys = resource.configuration_keys
        try:
            if resource.resource_type == ResourceType.TOPIC:
                ref = ctx.topic_ref(resource.resource_name)
                overrides = await load_topic_overrides(ctx.core, ctx.core.parse_topic(ref))
                ns = await ctx.core.namespace_policies(ctx.namespace)
                entries = topic_configs(overrides, ctx.core.settings, ns, keys=keys,
                                        synonyms=synonyms)
            elif resource.resource_type == ResourceType.BROKER:
                if not is_this_broker(resource.resource_name):
                    code, message = ErrorCode.INVALID_REQUEST, (
                        f"Unexpected broker id, expected {BROKER_ID} but received "
                        f"{resource.resource_name}")
                else:
                    ns = await ctx.core.namespace_policies(ctx.namespace)
                    entries = broker_configs(ctx.core.settings, ns, ctx.num_partitions,
                                             keys=keys, synonyms=synonyms)
            else:
                code, message = ErrorCode.INVALID_REQUEST, (
                    f"Unsupported resource type {resource.resource_type}")
        except CoreError as exc:
            code, message, entries = error_code(exc), str(exc) or type(exc).__name__, []
        results.append(cls.DescribeConfigsResult(
            error_code=int(code), error_message=message, resource_type=resource.resource_type,
            resource_name=resource.resource_name,
            configs=[_entry(cls, e, docs) for e in entries]))
    return cls(throttle_time_ms=0, results=results)


def _entry(cls: Any, entry: ConfigEntry, docs: bool) -> Any:
    result_cls = cls.DescribeConfigsResult.DescribeConfigsResourceResult
    syn_cls = result_cls.DescribeConfigsSynonym
    return result_cls(
        name=entry.name, value=entry.value, read_only=entry.read_only,
        config_source=int(entry.source), is_default=False, is_sensitive=False,
        synonyms=[syn_cls(name=n, value=v, source=int(s)) for n, v, s in entry.synonyms],
        config_type=int(entry.config_type),
        documentation=entry.documentation if docs else None)
