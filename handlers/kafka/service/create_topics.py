"""CreateTopics (v2-v6): topics with a partition count and topic configs, or a dry run.

Per topic:

* an illegal name -> ``INVALID_TOPIC_EXCEPTION``; an existing topic (or the same name twice in
  one request) -> ``TOPIC_ALREADY_EXISTS``;
* ``num_partitions`` -1 takes the handler's ``num_partitions``; below 1 or above the core's
  limit -> ``INVALID_PARTITIONS``; manual replica ``assignments`` are accepted only when they
  name broker 0 alone and no explicit partition count is given (their count is the partition
  count), else ``INVALID_REQUEST``;
* ``replication_factor`` must be -1 or 1 (there is one broker), else
  ``INVALID_REPLICATION_FACTOR``;
* ``configs`` go through :mod:`handlers.kafka.topic_configs` (``INVALID_CONFIG`` with a
  message for unknown names or bad values);
* ``validate_only``: every check above, nothing created.

v5+ responses carry the partition count, replication factor 1 and the topic's configs.
"""

from __future__ import annotations

from typing import Any

from core.errors import CoreError, TopicAlreadyExists, UnknownTopic
from core.topics import check_partition_count
from handlers.kafka import registry
from handlers.kafka.apis import ApiKey
from handlers.kafka.codec import KafkaRequest
from handlers.kafka.errormap import error_code
from handlers.kafka.errors import ErrorCode
from handlers.kafka.service.context import BROKER_ID, Reply, ServiceContext
from handlers.kafka.topic_configs import (
    InvalidConfig,
    TopicOverrides,
    delete_topic_overrides,
    parse_topic_configs,
    store_topic_overrides,
    topic_configs,
)

__all__ = ["handle"]


class _Refused(Exception):
    def __init__(self, code: ErrorCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


async def handle(ctx: ServiceContext, request: KafkaRequest) -> Reply:
    """Create (or, with ``validate_only``, check) every topic of the request."""
    version = request.api_version
    body = request.body
    cls = registry.response_class(ApiKey.CreateTopics, version)
    seen: set[str] = set()
    results = []
    for topic in body.topics:
        name = topic.name
        try:
            if name in seen:
                raise _Refused(ErrorCode.TOPIC_ALREADY_EXISTS,
                               f"Topic '{name}' is named more than once in the request")
            seen.add(name)
            partitions, overrides = _check(ctx, topic)
            await _create(ctx, name, partitions, overrides, bool(body.validate_only))
        except _Refused as exc:
            results.append(_result(cls, name, exc.code, exc.message))
        except InvalidConfig as exc:
            results.append(_result(cls, name, ErrorCode.INVALID_CONFIG, str(exc)))
        except CoreError as exc:
            results.append(_result(cls, name, error_code(exc), _message(name, exc)))
        else:
            configs = None
            if version >= 5:
                ns = await ctx.core.namespace_policies(ctx.namespace)
                configs = [
                    cls.CreatableTopicResult.CreatableTopicConfigs(
                        name=e.name, value=e.value, read_only=e.read_only,
                        config_source=int(e.source), is_sensitive=False)
                    for e in topic_configs(overrides, ctx.core.settings, ns)]
            results.append(_result(cls, name, ErrorCode.NONE, None, partitions, configs))
    return cls(throttle_time_ms=0, topics=results)


def _check(ctx: ServiceContext, topic: Any) -> tuple[int, TopicOverrides]:
    ctx.topic_ref(topic.name)  # raises InvalidTopicName
    partitions = topic.num_partitions
    if topic.assignments:
        if partitions != -1 or topic.replication_factor != -1:
            raise _Refused(ErrorCode.INVALID_REQUEST, "Both numPartitions or replicationFactor "
                           "and replicasAssignments were set")
        indexes = sorted(a.partition_index for a in topic.assignments)
        if indexes != list(range(len(indexes))):
            raise _Refused(ErrorCode.INVALID_REQUEST,
                           "Partitions must be numbered 0..N-1 in the assignment")
        if any(list(a.broker_ids) != [BROKER_ID] for a in topic.assignments):
            raise _Refused(ErrorCode.INVALID_REQUEST,
                           f"This gateway is one broker (id {BROKER_ID}): every partition must "
                           f"be assigned to [{BROKER_ID}]")
        partitions = len(indexes)
    elif partitions == -1:
        partitions = ctx.num_partitions
    if topic.replication_factor not in (-1, 1):
        raise _Refused(ErrorCode.INVALID_REPLICATION_FACTOR,
                       f"Replication factor: {topic.replication_factor} larger than available "
                       "brokers: 1.")
    check_partition_count(partitions)
    overrides = parse_topic_configs((c.name, c.value) for c in topic.configs)
    return partitions, overrides


async def _create(ctx: ServiceContext, name: str, partitions: int, overrides: TopicOverrides,
                  validate_only: bool) -> None:
    ref = ctx.topic_ref(name)
    core = ctx.core
    if validate_only:
        try:
            await core.topic_metadata(ref)
        except UnknownTopic:
            return
        raise TopicAlreadyExists(name)
    info = await core.create_topic(ref, partitions)
    await delete_topic_overrides(core, info.name)  # left over by a crash during a delete
    if overrides != TopicOverrides():
        await store_topic_overrides(core, ref, overrides)


def _message(name: str, exc: CoreError) -> str:
    if isinstance(exc, TopicAlreadyExists):
        return f"Topic '{name}' already exists."
    return str(exc) or type(exc).__name__


def _result(cls: Any, name: str, code: ErrorCode, message: str | None, partitions: int = -1,
            configs: list[Any] | None = None) -> Any:
    ok = code == ErrorCode.NONE
    return cls.CreatableTopicResult(
        name=name, topic_id=None, error_code=int(code), error_message=message,
        topic_config_error_code=0, num_partitions=partitions if ok else -1,
        replication_factor=1 if ok else -1, configs=configs)
