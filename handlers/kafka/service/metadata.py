"""Metadata: one broker (node 0) that leads every partition and is the controller.

* ``topics`` null (v1+), or empty at v0, lists every topic of the handler's namespace;
* a named topic that does not exist is created when the core's ``auto_create_topics`` is on and
  the request allows it (``allow_auto_topic_creation``, v4+; always allowed before v4), with
  the handler's ``num_partitions``; otherwise ``UNKNOWN_TOPIC_OR_PARTITION``;
* an illegal name gets ``INVALID_TOPIC_EXCEPTION``; a topic asked for by id only (v10+ with a
  null name) gets ``UNKNOWN_TOPIC_ID`` -- topic ids are not supported yet.
"""

from __future__ import annotations

from typing import Any

from core.errors import CoreError
from handlers.kafka import registry
from handlers.kafka.apis import ApiKey
from handlers.kafka.codec import KafkaRequest
from handlers.kafka.errormap import error_code
from handlers.kafka.errors import ErrorCode
from handlers.kafka.service.context import BROKER_ID, LEADER_EPOCH, Reply, ServiceContext

__all__ = ["handle"]

async def handle(ctx: ServiceContext, request: KafkaRequest) -> Reply:
    """Brokers, cluster id, controller and the requested (or all) topics.

    ``authorized_operations`` are left unset (encoded as INT32_MIN, "not requested"): there is
    no authorization yet.
    """
    version = request.api_version
    body = request.body
    cls = registry.response_class(ApiKey.Metadata, version)
    allow_create = version < 4 or bool(body.allow_auto_topic_creation)
    if body.topics is None or (version == 0 and not body.topics):
        try:
            infos = await ctx.core.list_topics(ctx.namespace)
        except CoreError:  # the namespace does not exist (yet): no topics
            infos = []
        topics = [_topic(cls, info.name.local, ErrorCode.NONE, info.partitions)
                  for info in infos]
    else:
        topics = []
        for wanted in body.topics:
            name = wanted.name
            if name is None:
                topics.append(_topic(cls, "", ErrorCode.UNKNOWN_TOPIC_ID, 0))
                continue
            try:
                _, info = await ctx.topic(name, create=allow_create)
            except CoreError as exc:
                topics.append(_topic(cls, name, error_code(exc), 0))
            else:
                topics.append(_topic(cls, name, ErrorCode.NONE, info.partitions))
    broker = cls.MetadataResponseBroker(node_id=BROKER_ID, host=ctx.advertised_host,
                                        port=ctx.advertised_port, rack=None)
    return cls(throttle_time_ms=0, brokers=[broker], cluster_id=ctx.cluster_id,
               controller_id=BROKER_ID, topics=topics, authorized_operations=None)


def _topic(cls: Any, name: str, error: ErrorCode, partitions: int) -> Any:
    part_cls = cls.MetadataResponseTopic.MetadataResponsePartition
    parts = [part_cls(error_code=0, partition_index=i, leader_id=BROKER_ID,
                      leader_epoch=LEADER_EPOCH, replica_nodes=[BROKER_ID],
                      isr_nodes=[BROKER_ID], offline_replicas=[])
             for i in range(partitions)]
    return cls.MetadataResponseTopic(error_code=int(error), name=name, topic_id=None,
                                     is_internal=False, partitions=parts,
                                     authorized_operations=None)
