"""DescribeTransactions (v0): state, producer and partitions of transactional ids.

An id with a transaction in progress is described from the core's coordinator
(:meth:`TransactionCoordinator.list`); otherwise from the last transaction it ended through
EndTxn on this broker (``CompleteCommit``/``CompleteAbort``, no partitions, as Kafka shows a
finished transaction).  Any other id gets ``TRANSACTIONAL_ID_NOT_FOUND`` -- including one that
was initialised (InitProducerId) but has not ended a transaction here since the broker started,
which Kafka would show as ``Empty``: the core does not expose idle producers.
The start time is not kept by the core: ``TransactionStartTimeMs`` is -1.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import trio

from core.errors import CoreError
from core.transactions.coordinator import TxnInfo
from handlers.kafka import registry
from handlers.kafka.apis import ApiKey
from handlers.kafka.codec import KafkaRequest
from handlers.kafka.errors import ErrorCode
from handlers.kafka.service.context import Reply, ServiceContext
from handlers.kafka.service.end_txn import ended_transactions

if TYPE_CHECKING:
    from core.api import Core

__all__ = ["find_transactions", "handle", "kafka_partitions"]


def find_transactions(core: Core) -> dict[str, TxnInfo]:
    """``transactional id -> its transaction``: the one in progress, else the last ended."""
    found: dict[str, TxnInfo] = {}
    txns = core.transactions
    for txn in ended_transactions(core):
        try:
            info = txns.describe(txn)
        except CoreError:
            continue  # forgotten by the coordinator
        if info.transactional_id is not None:
            found[info.transactional_id] = info
    for info in txns.list():
        if info.transactional_id is not None:
            found[info.transactional_id] = info
    return found


def kafka_partitions(core: Core, info: TxnInfo) -> dict[str, list[int]]:
    """The transaction's partitions by Kafka topic name (none once it is complete)."""
    if info.state.is_complete:
        return {}
    topics: dict[str, list[int]] = {}
    for topic, index in info.partitions:
        topics.setdefault(core.parse_topic(topic).local, []).append(index)
    return topics


async def handle(ctx: ServiceContext, request: KafkaRequest) -> Reply:
    """Describe each requested transactional id."""
    body: Any = request.body
    cls = registry.response_class(ApiKey.DescribeTransactions, request.api_version)
    state_cls = cls.TransactionState
    topic_cls = state_cls.TopicData
    known = find_transactions(ctx.core)
    states = []
    for tid in body.transactional_ids:
        info = known.get(tid)
        if info is None:
            states.append(state_cls(
                error_code=int(ErrorCode.TRANSACTIONAL_ID_NOT_FOUND), transactional_id=tid,
                transaction_state="", transaction_timeout_ms=0, transaction_start_time_ms=-1,
                producer_id=-1, producer_epoch=-1, topics=[]))
            continue
        topics = [topic_cls(topic=name, partitions=parts)
                  for name, parts in sorted(kafka_partitions(ctx.core, info).items())]
        states.append(state_cls(
            error_code=int(ErrorCode.NONE), transactional_id=tid,
            transaction_state=info.state.value, transaction_timeout_ms=info.timeout_ms,
            transaction_start_time_ms=-1, producer_id=info.txn_id.producer_id,
            producer_epoch=info.txn_id.epoch, topics=topics))
    await trio.lowlevel.checkpoint()
    return cls(throttle_time_ms=0, transaction_states=states)
