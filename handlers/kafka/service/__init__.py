"""The Kafka APIs, one module each, and the table that dispatches requests to them.

Every module exposes ``async def handle(ctx: ServiceContext, request: KafkaRequest) -> Reply``
(see :mod:`handlers.kafka.service.context`).  The table covers exactly the APIs in
:data:`handlers.kafka.apis.SUPPORTED_APIS`; the codec refuses every other request before it
gets here.

:func:`dispatch` follows trio's ``nursery.start`` protocol so the session can pipeline
requests: ``task_status.started()`` is called once the requests that follow may start.  Only
Produce is order-sensitive (its appends must get offsets in request order), so only Produce
receives the task status; for every other API it is called before the service runs.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from types import MappingProxyType

import trio

from handlers.kafka.apis import ApiKey
from handlers.kafka.codec import KafkaRequest
from handlers.kafka.service import (
    add_offsets_to_txn,
    add_partitions_to_txn,
    alter_configs,
    api_versions,
    create_partitions,
    create_topics,
    delete_groups,
    delete_records,
    delete_topics,
    describe_cluster,
    describe_configs,
    describe_groups,
    describe_producers,
    describe_transactions,
    end_txn,
    fetch,
    find_coordinator,
    heartbeat,
    incremental_alter_configs,
    init_producer_id,
    join_group,
    leave_group,
    list_groups,
    list_offsets,
    list_transactions,
    metadata,
    offset_commit,
    offset_delete,
    offset_fetch,
    produce,
    sasl_authenticate,
    sasl_handshake,
    sync_group,
    txn_offset_commit,
)
from handlers.kafka.service.context import (
    NO_RESPONSE,
    CloseConnection,
    NoResponse,
    Reply,
    ServiceContext,
)

__all__ = [
    "NO_RESPONSE",
    "SERVICES",
    "CloseConnection",
    "NoResponse",
    "Reply",
    "Service",
    "ServiceContext",
    "dispatch",
]

Service = Callable[[ServiceContext, KafkaRequest], Awaitable[Reply]]

SERVICES: Mapping[int, Service] = MappingProxyType({
    int(ApiKey.Produce): produce.handle,
    int(ApiKey.Fetch): fetch.handle,
    int(ApiKey.ListOffsets): list_offsets.handle,
    int(ApiKey.Metadata): metadata.handle,
    int(ApiKey.CreateTopics): create_topics.handle,
    int(ApiKey.DeleteTopics): delete_topics.handle,
    int(ApiKey.DeleteRecords): delete_records.handle,
    int(ApiKey.DescribeConfigs): describe_configs.handle,
    int(ApiKey.AlterConfigs): alter_configs.handle,
    int(ApiKey.IncrementalAlterConfigs): incremental_alter_configs.handle,
    int(ApiKey.CreatePartitions): create_partitions.handle,
    int(ApiKey.DescribeCluster): describe_cluster.handle,
    int(ApiKey.SaslHandshake): sasl_handshake.handle,
    int(ApiKey.SaslAuthenticate): sasl_authenticate.handle,
    int(ApiKey.ApiVersions): api_versions.handle,
    int(ApiKey.FindCoordinator): find_coordinator.handle,
    int(ApiKey.JoinGroup): join_group.handle,
    int(ApiKey.SyncGroup): sync_group.handle,
    int(ApiKey.Heartbeat): heartbeat.handle,
    int(ApiKey.LeaveGroup): leave_group.handle,
    int(ApiKey.OffsetCommit): offset_commit.handle,
    int(ApiKey.OffsetFetch): offset_fetch.handle,
    int(ApiKey.OffsetDelete): offset_delete.handle,
    int(ApiKey.ListGroups): list_groups.handle,
    int(ApiKey.DescribeGroups): describe_groups.handle,
    int(ApiKey.DeleteGroups): delete_groups.handle,
    int(ApiKey.InitProducerId): init_producer_id.handle,
    int(ApiKey.AddPartitionsToTxn): add_partitions_to_txn.handle,
    int(ApiKey.AddOffsetsToTxn): add_offsets_to_txn.handle,
    int(ApiKey.EndTxn): end_txn.handle,
    int(ApiKey.TxnOffsetCommit): txn_offset_commit.handle,
    int(ApiKey.DescribeProducers): describe_producers.handle,
    int(ApiKey.DescribeTransactions): describe_transactions.handle,
    int(ApiKey.ListTransactions): list_transactions.handle,
})
"""api_key -> the coroutine function that serves it."""


async def dispatch(
    ctx: ServiceContext, request: KafkaRequest,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> Reply:
    """Serve one decoded request; return its response body or :data:`NO_RESPONSE`.

    ``task_status.started()`` is called once the next request may start (see the module
    docstring); it is not called if the service raises first.  Raises
    :class:`CloseConnection` when Kafka would close the connection instead, and KeyError for
    an API without a service (the codec's table and ``SERVICES`` disagree).
    """
    service = SERVICES[request.api_key]
    if request.api_key == ApiKey.Produce:
        return await produce.handle(ctx, request, task_status=task_status)
    task_status.started()
    return await service(ctx, request)
