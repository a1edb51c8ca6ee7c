"""Fetch: stored record batches, returned as the bytes they were stored as.

How a fetch is answered
-----------------------
1. *Collect*: for each requested partition, in request order, check the offset against
   ``[earliest, high watermark]`` (``OFFSET_OUT_OF_RANGE`` outside it) and read from the core
   up to the partition's ``partition_max_bytes`` and what is left of the request's
   ``max_bytes``.  As in Kafka (KIP-74), the first batch of the first partition that has data
   is returned even when it exceeds both limits, so a consumer can always make progress; later
   partitions only get batches that fit.
2. *Long poll*: if fewer than ``min_bytes`` were collected, no partition had an error, and
   ``max_wait_ms`` has not passed, wait -- one wait across all requested partitions, on the
   core's data events (no polling) -- until any of them grows past the high watermark seen
   during collection, then collect again.  The wait is bounded by ``trio.move_on_at`` and cut
   short when the broker is stopping.

The response gives per partition the high watermark, ``last_stable_offset`` (= the high
watermark: there are no transactions yet) and ``log_start_offset``.  ``isolation_level`` is
accepted, but READ_COMMITTED behaves as READ_UNCOMMITTED until transactions exist (it gets an
empty ``aborted_transactions`` list).

Fetch sessions (KIP-227) are not supported: every response has ``session_id`` 0 ("no session
created"), so clients keep sending full fetch requests; a request for an existing session gets
``FETCH_SESSION_ID_NOT_FOUND``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import trio

from core.api import ReadEntry
from core.errors import CoreError, OffsetOutOfRange
from handlers.kafka import registry
from handlers.kafka.apis import ApiKey
from handlers.kafka.codec import KafkaRequest
from handlers.kafka.errormap import error_code
from handlers.kafka.errors import ErrorCode
from handlers.kafka.service.context import Reply, ServiceContext

__all__ = ["handle"]

log = logging.getLogger(__name__)

READ_COMMITTED = 1


@dataclass(slots=True)
class _Partition:
    """One requested partition and what the last collection pass found for it."""

    topic: str
    index: int
    offset: int
    max_bytes: int
    ref: str | None = None
    error: ErrorCode = ErrorCode.NONE
    high_watermark: int = -1
    log_start_offset: int = -1
    entries: list[ReadEntry] = field(default_factory=list)

    @property
    def size(self) -> int:
        return sum(len(e.batch) for e in self.entries)

    def records(self) -> bytes | memoryview:
        if len(self.entries) == 1:
            return self.entries[0].batch
        return b"".join(e.batch for e in self.entries)


async def handle(ctx: ServiceContext, request: KafkaRequest) -> Reply:
    """Read the requested partitions, long-polling per ``max_wait_ms``/``min_bytes``."""
    body = request.body
    version = request.api_version
    cls = registry.response_class(ApiKey.Fetch, version)
    if version >= 7 and body.session_id != 0:
        return cls(throttle_time_ms=0, error_code=int(ErrorCode.FETCH_SESSION_ID_NOT_FOUND),
                   session_id=0, responses=[])
    if version >= 7 and body.session_epoch > 0:
        return cls(throttle_time_ms=0, error_code=int(ErrorCode.INVALID_FETCH_SESSION_EPOCH),
                   session_id=0, responses=[])
    wanted = [_Partition(t.topic, p.partition, p.fetch_offset, p.partition_max_bytes)
              for t in body.topics for p in t.partitions]
    max_bytes = body.max_bytes
    deadline = trio.current_time() + max(body.max_wait_ms, 0) / 1000
    total = await _collect(ctx, wanted, max_bytes)
    while total < body.min_bytes and not _stopping(ctx):
        if not wanted or any(p.error != ErrorCode.NONE for p in wanted):
            break  # as in Kafka: an error is answered at once
        log.debug("fetch: long poll on %d partition(s), %d ms left", len(wanted),
                  max(0, int((deadline - trio.current_time()) * 1000)))
        with trio.move_on_at(deadline) as scope:
            await _wait_for_any(ctx, wanted)
        if scope.cancelled_caught:
            break
        total = await _collect(ctx, wanted, max_bytes)
    committed = version >= 4 and body.isolation_level == READ_COMMITTED
    return _response(cls, wanted, committed)


def _stopping(ctx: ServiceContext) -> bool:
    return ctx.stopping is not None and ctx.stopping.is_set()


async def _collect(ctx: ServiceContext, wanted: list[_Partition], max_bytes: int) -> int:
    """One read pass over every partition; return the bytes collected."""
    total = 0
    for p in wanted:
        p.entries = []
        p.error = ErrorCode.NONE
        try:
            if p.ref is None:
                p.ref = await ctx.partition(p.topic, p.index)
            p.high_watermark = await ctx.core.latest_offset(p.ref, p.index)
            p.log_start_offset = await ctx.core.earliest_offset(p.ref, p.index)
            if not p.log_start_offset <= p.offset <= p.high_watermark:
                raise OffsetOutOfRange(p.offset, p.log_start_offset, p.high_watermark)
            budget = min(p.max_bytes, max_bytes - total)
            if p.offset == p.high_watermark or (budget <= 0 and total > 0):
                continue
            entries = await ctx.core.read(p.ref, p.index, p.offset, max(budget, 1))
        except CoreError as exc:
            p.error = error_code(exc)
            p.high_watermark = p.log_start_offset = -1
            continue
        if total > 0:  # only the first partition with data may exceed the budget
            kept, size = [], 0
            for entry in entries:
                size += len(entry.batch)
                if size > budget:
                    break
                kept.append(entry)
            entries = kept
        p.entries = entries
        total += p.size
    return total


async def _wait_for_any(ctx: ServiceContext, wanted: list[_Partition]) -> None:
    """Return once any partition's high watermark moves past what was seen, or on stopping."""
    async with trio.open_nursery() as nursery:

        async def wait_one(ref: str, index: int, high_watermark: int) -> None:
            await ctx.core.wait_for_data(ref, index, high_watermark)
            nursery.cancel_scope.cancel()

        async def wait_stopping(event: trio.Event) -> None:
            await event.wait()
            nursery.cancel_scope.cancel()

        seen: set[tuple[str, int]] = set()
        for p in wanted:
            if p.ref is not None and (p.ref, p.index) not in seen:
                seen.add((p.ref, p.index))
                nursery.start_soon(wait_one, p.ref, p.index, p.high_watermark)
        if ctx.stopping is not None:
            nursery.start_soon(wait_stopping, ctx.stopping)


def _response(cls: Any, wanted: list[_Partition], committed: bool) -> Any:
    topic_cls = cls.FetchableTopicResponse
    part_cls = topic_cls.PartitionData
    topics: list[Any] = []
    for p in wanted:
        if not topics or topics[-1].topic != p.topic:
            topics.append(topic_cls(topic=p.topic, partitions=[]))
        topics[-1].partitions.append(part_cls(
            partition_index=p.index, error_code=int(p.error), high_watermark=p.high_watermark,
            last_stable_offset=p.high_watermark, log_start_offset=p.log_start_offset,
            aborted_transactions=[] if committed else None, preferred_read_replica=-1,
            records=p.records()))
    return cls(throttle_time_ms=0, error_code=0, session_id=0, responses=topics)
