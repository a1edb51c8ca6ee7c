"""Produce: append each partition's record batches to the core, as received.

* ``acks`` 1 and -1 both answer once the core's append is durable (there are no replicas to
  wait for); ``acks=0`` sends no response at all, and -- as Kafka does -- an error then closes
  the connection so the producer notices.  Other ``acks`` values get ``INVALID_REQUIRED_ACKS``.
* The ``records`` bytes go to :meth:`core.api.Core.append` untouched; the core validates them
  (CRC, framing, size) and stores nothing on error: ``CORRUPT_MESSAGE``, ``MESSAGE_TOO_LARGE``,
  ``INVALID_RECORD`` (see :mod:`handlers.kafka.errormap`).
* The partitions of one request are appended concurrently (one nursery), so they share the
  storage's group commit; so do the appends of pipelined requests (see
  :mod:`handlers.kafka.session`): offsets are assigned in request order, then the durable
  waits overlap.
* The response's base offset is the first offset assigned; ``log_append_time_ms`` is -1
  (CreateTime topics); ``log_start_offset`` (v5+) is the partition's earliest offset.
* ``timeout_ms`` is not applied: once offsets are assigned the append always completes.

Idempotent batches (producer id set, from InitProducerId) are deduplicated by the core in the
same step that assigns offsets.

Transactional requests (``transactional_id`` set) go to the producer's open transaction on the
core (:meth:`TransactionCoordinator.append`): the batches must carry the transaction's producer
id and epoch and the transactional bit, and the partition must have been added with
AddPartitionsToTxn -- otherwise ``INVALID_TXN_STATE`` (no open transaction, partition not
added, non-transactional batch) or ``INVALID_PRODUCER_EPOCH`` (an old epoch: a fenced zombie,
Kafka's answer to Produce).
"""

from __future__ import annotations

import logging
from typing import Any

import trio

from core.batch import read_header
from core.errors import CoreError
from core.transactions import InvalidTxnState, ProducerFenced
from handlers.kafka import registry
from handlers.kafka.apis import ApiKey
from handlers.kafka.codec import KafkaRequest
from handlers.kafka.errormap import error_code
from handlers.kafka.errors import ErrorCode
from handlers.kafka.service.context import NO_RESPONSE, CloseConnection, Reply, ServiceContext
from handlers.kafka.service.init_producer_id import current_epoch

__all__ = ["handle"]

log = logging.getLogger(__name__)

VALID_ACKS = frozenset({-1, 0, 1})


class _Result:
    """The outcome of one partition's append, filled in by its task."""

    __slots__ = ("base_offset", "error", "log_start_offset", "message")

    def __init__(self) -> None:
        self.error = ErrorCode.NONE
        self.message: str | None = None
        self.base_offset = -1
        self.log_start_offset = -1


async def handle(
    ctx: ServiceContext, request: KafkaRequest,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> Reply:
    """Append every partition's batches; the response lists each partition's outcome.

    ``task_status.started()`` is called once every append of this request has its offsets
    (before the appends are durable), so the session can start the next request.
    """
    body = request.body
    acks = body.acks
    refused: ErrorCode | None = None
    if acks not in VALID_ACKS:
        refused = ErrorCode.INVALID_REQUIRED_ACKS
    results: list[tuple[str, list[tuple[int, _Result]]]] = []
    appends: list[tuple[str, int, Any, _Result]] = []
    for topic in body.topic_data:
        parts: list[tuple[int, _Result]] = []
        results.append((topic.name, parts))
        for data in topic.partition_data:
            result = _Result()
            parts.append((data.index, result))
            if refused is not None:
                result.error = refused
                continue
            ref = await _resolve(ctx, topic.name, data.index, result)
            if ref is not None:
                appends.append((ref, data.index, data.records, result))
    append = _append if body.transactional_id is None else _append_txn
    async with trio.open_nursery() as nursery:
        for ref, index, records, result in appends:
            await nursery.start(append, ctx, ref, index, records, result)
        task_status.started()
    if acks == 0:
        failed = [(name, index, r) for name, parts in results for index, r in parts
                  if r.error != ErrorCode.NONE]
        if failed:
            name, index, r = failed[0]
            raise CloseConnection(f"acks=0 produce to {name}[{index}] failed: "
                                  f"{r.error.name} {r.message or ''}".rstrip())
        return NO_RESPONSE
    return _response(request.api_version, results)


async def _resolve(ctx: ServiceContext, name: str, index: int, result: _Result) -> str | None:
    """The partition's core reference (auto-creating the topic), or None with the error set."""
    try:
        ref, info = await ctx.topic(name, create=True)
    except CoreError as exc:
        result.error = error_code(exc)
        result.message = str(exc)
        return None
    if not 0 <= index < info.partitions:
        result.error = ErrorCode.UNKNOWN_TOPIC_OR_PARTITION
        return None
    return ref


async def _append(ctx: ServiceContext, ref: str, index: int, records: Any, result: _Result,
                  task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
    # started() first, then straight into Core.append: the topic is cached (just resolved), so
    # the core assigns offsets before its first checkpoint -- before nursery.start() returns.
    task_status.started()
    try:
        appended = await ctx.core.append(ref, index, b"" if records is None else records)
        result.base_offset = appended.base_offset
        result.log_start_offset = await ctx.core.earliest_offset(ref, index)
    except CoreError as exc:
        result.error = error_code(exc)
        result.message = str(exc)
        log.debug("produce to %s[%d] refused: %s", ref, index, exc)


async def _append_txn(ctx: ServiceContext, ref: str, index: int, records: Any,
                      result: _Result,
                      task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
    # As _append: nothing awaits between started() and the partition's offset assignment (the
    # coordinator's checks before it are synchronous for a cached topic).
    task_status.started()
    data = memoryview(b"" if records is None else records)
    try:
        header = read_header(data)
        producer_id = header.producer_id
        txn = ctx.core.transactions.current(producer_id)
        if txn is None:
            known = current_epoch(ctx.core, producer_id)
            if known is not None and header.producer_epoch < known:
                raise ProducerFenced(f"producer {producer_id} epoch is fenced by {known}")
            raise InvalidTxnState(f"producer {producer_id} has no open transaction")
        appended = await ctx.core.transactions.append(txn, ref, index, data)
        result.base_offset = appended.base_offset
        result.log_start_offset = await ctx.core.earliest_offset(ref, index)
    except CoreError as exc:
        # Kafka answers a stale epoch on Produce with INVALID_PRODUCER_EPOCH
        result.error = ErrorCode.INVALID_PRODUCER_EPOCH if isinstance(
            exc, ProducerFenced) else error_code(exc)
        result.message = str(exc)
        log.debug("transactional produce to %s[%d] refused: %s", ref, index, exc)


def _response(version: int, results: list[tuple[str, list[tuple[int, _Result]]]]) -> Any:
    cls = registry.response_class(ApiKey.Produce, version)
    topic_cls = cls.TopicProduceResponse
    part_cls = topic_cls.PartitionProduceResponse
    topics = []
    for name, parts in results:
        responses = [
            part_cls(index=index, error_code=int(r.error), base_offset=r.base_offset,
                     log_append_time_ms=-1, log_start_offset=r.log_start_offset,
                     record_errors=[], error_message=r.message)
            for index, r in parts
        ]
        topics.append(topic_cls(name=name, partition_responses=responses))
    return cls(responses=topics, throttle_time_ms=0)
