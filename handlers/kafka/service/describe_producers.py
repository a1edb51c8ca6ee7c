"""DescribeProducers (v0): the producers with a transaction open on each partition.

For every requested partition: each producer id whose transaction is still open there
(``CurrentTxnStartOffset`` = the transaction's first offset on the partition), with its epoch
and last sequence from the partition's idempotence state.  Idempotent producers without an open
transaction are not listed: the core's per-partition producer state offers no listing.
``LastTimestamp`` is the broker time of the producer's last remembered batch, -1 if none.
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

__all__ = ["handle"]


async def _producers(ctx: ServiceContext, cls: Any, name: str, index: int) -> Any:
    """One partition's PartitionResponse."""
    try:
        ref = await ctx.partition(name, index)
        # the core has no public per-partition view of open transactions yet
        partition = await ctx.core._partition(ref, index)
    except CoreError as exc:
        return cls(partition_index=index, error_code=int(error_code(exc)), error_message=str(exc),
                   active_producers=[])
    active = []
    for pid, first in sorted(partition.txns.open_transactions.items()):
        txn = ctx.core.transactions.current(pid)
        epoch, last_seq, last_ts = (-1 if txn is None else txn.epoch), -1, -1
        state = partition.dedup.producer(pid)
        if state is not None:
            epoch = state[0]
            if state[1]:
                last_seq, last_ts = state[1][-1].last_seq, state[1][-1].broker_timestamp
        active.append(cls.ProducerState(
            producer_id=pid, producer_epoch=epoch, last_sequence=last_seq,
            last_timestamp=last_ts, coordinator_epoch=0, current_txn_start_offset=first))
    return cls(partition_index=index, error_code=int(ErrorCode.NONE), error_message=None,
               active_producers=active)


async def handle(ctx: ServiceContext, request: KafkaRequest) -> Reply:
    """Describe the active producers of every requested partition."""
    cls = registry.response_class(ApiKey.DescribeProducers, request.api_version)
    topic_cls = cls.TopicResponse
    part_cls = topic_cls.PartitionResponse
    topics = [topic_cls(name=t.name, partitions=[await _producers(ctx, part_cls, t.name, i)
                                                 for i in t.partition_indexes])
              for t in request.body.topics]
    return cls(throttle_time_ms=0, topics=topics)
