"""AddPartitionsToTxn (v0-3): register the partitions a transaction will write to.

The first AddPartitionsToTxn (or AddOffsetsToTxn) of a producer begins its transaction on the
core (Kafka begins transactions implicitly, :meth:`TransactionCoordinator.ensure_open`); the
partitions are logged durably before any data may reach them.  Errors are answered per
partition: an unknown topic or partition gets ``UNKNOWN_TOPIC_OR_PARTITION`` and the others
``OPERATION_NOT_ATTEMPTED`` (nothing is added), as Kafka does; a producer error (fenced epoch,
unknown producer id, transaction completing) is given to every partition.

v4+ batch several transactions and are sent by brokers only (KIP-890): not served.

The helpers :func:`open_transaction` and :func:`txn_error_code` are shared with the other
transaction services.
"""

from __future__ import annotations

from typing import Any

from core.errors import CoreError
from core.transactions import InvalidProducerIdMapping, TxnId
from handlers.kafka import registry
from handlers.kafka.apis import ApiKey
from handlers.kafka.codec import KafkaRequest
from handlers.kafka.errormap import error_code
from handlers.kafka.errors import ErrorCode
from handlers.kafka.service.context import Reply, ServiceContext

__all__ = ["handle", "open_transaction", "txn_error_code"]

"""Kafka's code for a partition left alone because another one of the request failed."""

_PRODUCER_FENCED_SINCE = 2  # AddPartitionsToTxn, AddOffsetsToTxn and EndTxn v2 (KIP-588)


def txn_error_code(exc: CoreError, version: int,
                   fenced_since: int = _PRODUCER_FENCED_SINCE) -> int:
    """The Kafka code for ``exc``; ``PRODUCER_FENCED`` becomes ``INVALID_PRODUCER_EPOCH`` for
    request versions before ``fenced_since`` (older clients do not know the newer code)."""
    code = error_code(exc)
    if code == ErrorCode.PRODUCER_FENCED and version < fenced_since:
        return int(ErrorCode.INVALID_PRODUCER_EPOCH)
    return int(code)


async def open_transaction(ctx: ServiceContext, transactional_id: str, producer_id: int,
                           epoch: int) -> TxnId:
    """The producer's open transaction on the core, begun if needed.

    Raises the core's transaction errors: :class:`ProducerFenced` for an old epoch,
    :class:`InvalidProducerIdMapping` when the producer id is not ``transactional_id``'s,
    :class:`ConcurrentTransactions` while its previous transaction completes.
    """
    txns = ctx.core.transactions
    txn = await txns.ensure_open(producer_id, epoch)
    owner = txns.describe(txn).transactional_id
    if owner != transactional_id:
        if not txns.describe(txn).partitions:
            await txns.end(txn, commit=False)  # begun just now for the wrong caller
        raise InvalidProducerIdMapping(
            f"producer id {producer_id} does not belong to transactional id "
            f"{transactional_id!r}")
    return txn


async def handle(ctx: ServiceContext, request: KafkaRequest) -> Reply:
    """Add every requested partition to the producer's transaction (all or none)."""
    version = request.api_version
    body: Any = request.body
    wanted: list[tuple[str, list[int]]] = [(t.name, list(t.partitions))
                                           for t in body.v3_and_below_topics]
    codes: dict[tuple[str, int], int] = {}
    refs: list[tuple[str, int]] = []
    for name, parts in wanted:
        for index in parts:
            try:
                refs.append((await ctx.partition(name, index), index))
                codes[(name, index)] = int(ErrorCode.NONE)
            except CoreError as exc:
                codes[(name, index)] = int(error_code(exc))
    if any(code != ErrorCode.NONE for code in codes.values()):
        codes = {tp: ErrorCode.OPERATION_NOT_ATTEMPTED if code == ErrorCode.NONE else code
                 for tp, code in codes.items()}
    else:
        try:
            txn = await open_transaction(ctx, body.v3_and_below_transactional_id,
                                         body.v3_and_below_producer_id,
                                         body.v3_and_below_producer_epoch)
            await ctx.core.transactions.add_partitions(txn, refs)
        except CoreError as exc:
            codes = dict.fromkeys(codes, txn_error_code(exc, version))
    cls = registry.response_class(ApiKey.AddPartitionsToTxn, version)
    topic_cls = cls.AddPartitionsToTxnTopicResult
    part_cls = topic_cls.AddPartitionsToTxnPartitionResult
    results = [topic_cls(name=name, results_by_partition=[
        part_cls(partition_index=i, partition_error_code=codes[(name, i)]) for i in parts])
        for name, parts in wanted]
    return cls(throttle_time_ms=0, error_code=0, results_by_transaction=[],
               results_by_topic_v3_and_below=results)
