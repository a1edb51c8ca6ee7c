"""DescribeCluster (v0-v2): the cluster id and its one broker (node 0, also the controller).

``endpoint_type`` 2 (controllers, v1+) is refused with ``INVALID_REQUEST``: this gateway is a
broker, not a KRaft controller (Apache Kafka answers ``UNSUPPORTED_ENDPOINT_TYPE``, which the
error table does not have yet).
"""

from __future__ import annotations

from handlers.kafka import registry
from handlers.kafka.apis import ApiKey
from handlers.kafka.codec import KafkaRequest
from handlers.kafka.errors import ErrorCode
from handlers.kafka.service.context import BROKER_ID, Reply, ServiceContext

__all__ = ["handle"]

BROKERS_ENDPOINT = 1


async def handle(ctx: ServiceContext, request: KafkaRequest) -> Reply:
    """This broker, as Metadata reports it."""
    version = request.api_version
    cls = registry.response_class(ApiKey.DescribeCluster, version)
    endpoint = request.body.endpoint_type if version >= 1 else BROKERS_ENDPOINT
    if endpoint != BROKERS_ENDPOINT:
        return cls(throttle_time_ms=0, error_code=int(ErrorCode.INVALID_REQUEST),
                   error_message=f"endpoint type {endpoint} is not served (brokers only)",
                   endpoint_type=endpoint, cluster_id=ctx.cluster_id, controller_id=-1,
                   brokers=[], authorized_operations=None)
    broker = cls.DescribeClusterBroker(broker_id=BROKER_ID, host=ctx.advertised_host,
                                       port=ctx.advertised_port, rack=None, is_fenced=False)
    return cls(throttle_time_ms=0, error_code=0, error_message=None,
               endpoint_type=BROKERS_ENDPOINT, cluster_id=ctx.cluster_id,
               controller_id=BROKER_ID, brokers=[broker],
               authorized_operations=None)
