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

The response gives per partition the high watermark, ``last_stable_offset`` and
``log_start_offset``.  With ``isolation_level`` 1 (READ_COMMITTED) a partition is read through
:meth:`core.transactions.read_committed`: data only below the last stable offset, plus the
``aborted_transactions`` (producer id, first offset) with data in the returned range; the
batches of aborted transactions and the control batches (markers) are returned as stored, and
clients drop them with that list, as with Kafka.  READ_UNCOMMITTED reports the high watermark as
``last_stable_offset`` and a null ``aborted_transactions``.

Encoding: the answer is a :class:`FetchResponse`, not a kafka-python object.  It reads like
one (same attribute names) but encodes itself (:meth:`FetchResponse.encode_frame`, the bytes
kafka-python would write for v4-12) as a list of buffers in which every stored batch of
:data:`BY_REFERENCE_BYTES` or more is the storage's own buffer, passed by reference: the
session sends them one after the other, so a batch is never copied between the log read and
the socket (the generic codec would copy it twice, and joining a partition's batches once
more).

Fetch sessions (KIP-227) are not supported: every response has ``session_id`` 0 ("no session
created"), so clients keep sending full fetch requests; a request for an existing session gets
``FETCH_SESSION_ID_NOT_FOUND``.
"""

from __future__ import annotations

import logging
import struct
from dataclasses import dataclass, field

import trio

from core.api import ReadEntry
from core.errors import CoreError, OffsetOutOfRange
from handlers.kafka.codec import KafkaRequest
from handlers.kafka.errormap import error_code
from handlers.kafka.errors import ErrorCode
from handlers.kafka.service.context import ServiceContext

__all__ = ["BY_REFERENCE_BYTES", "FetchResponse", "FetchableTopic", "PartitionData", "handle"]

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
    last_stable_offset: int = -1
    aborted: list[tuple[int, int]] = field(default_factory=list)

    @property
    def size(self) -> int:
        return sum(len(e.batch) for e in self.entries)


async def handle(ctx: ServiceContext, request: KafkaRequest) -> FetchResponse:
    """Read the requested partitions, long-polling per ``max_wait_ms``/``min_bytes``."""
    body = request.body
    version = request.api_version
    if version >= 7 and body.session_id != 0:
        return FetchResponse(version, [], error_code=int(ErrorCode.FETCH_SESSION_ID_NOT_FOUND))
    if version >= 7 and body.session_epoch > 0:
        return FetchResponse(version, [], error_code=int(ErrorCode.INVALID_FETCH_SESSION_EPOCH))
    wanted = [_Partition(t.topic, p.partition, p.fetch_offset, p.partition_max_bytes)
              for t in body.topics for p in t.partitions]
    max_bytes = body.max_bytes
    deadline = trio.current_time() + max(body.max_wait_ms, 0) / 1000
    committed = version >= 4 and body.isolation_level == READ_COMMITTED
    total = await _collect(ctx, wanted, max_bytes, committed)
    while total < body.min_bytes and not _stopping(ctx):
        if not wanted or any(p.error != ErrorCode.NONE for p in wanted):
            break  # as in Kafka: an error is answered at once
        log.debug("fetch: long poll on %d partition(s), %d ms left", len(wanted),
                  max(0, int((deadline - trio.current_time()) * 1000)))
        with trio.move_on_at(deadline) as scope:
            await _wait_for_any(ctx, wanted)
        if scope.cancelled_caught:
            break
        total = await _collect(ctx, wanted, max_bytes, committed)
    return _answer(version, wanted, committed)


def _stopping(ctx: ServiceContext) -> bool:
    return ctx.stopping is not None and ctx.stopping.is_set()


async def _collect(ctx: ServiceContext, wanted: list[_Partition], max_bytes: int,
                   committed: bool = False) -> int:
    """One read pass over every partition (``committed``: READ_COMMITTED); return the bytes
    collected."""
    total = 0
    for p in wanted:
        p.entries = []
        p.aborted = []
        p.error = ErrorCode.NONE
        try:
            if p.ref is None:
                p.ref = await ctx.partition(p.topic, p.index)
            p.high_watermark = await ctx.core.latest_offset(p.ref, p.index)
            p.log_start_offset = await ctx.core.earliest_offset(p.ref, p.index)
            if not p.log_start_offset <= p.offset <= p.high_watermark:
                raise OffsetOutOfRange(p.offset, p.log_start_offset, p.high_watermark)
            p.last_stable_offset = p.high_watermark
            if committed:
                p.last_stable_offset = await ctx.core.transactions.last_stable_offset(
                    p.ref, p.index)
            budget = min(p.max_bytes, max_bytes - total)
            if p.offset >= p.last_stable_offset or (budget <= 0 and total > 0):
                continue
            if committed:
                entries = await _read_committed(ctx, p, p.ref, max(budget, 1))
            else:
                entries = await ctx.core.read(p.ref, p.index, p.offset, max(budget, 1))
        except CoreError as exc:
            p.error = error_code(exc)
            p.high_watermark = p.log_start_offset = p.last_stable_offset = -1
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


async def _read_committed(ctx: ServiceContext, p: _Partition, ref: str, max_bytes: int
                          ) -> list[ReadEntry]:
    """Batches below the last stable offset; sets the partition's LSO and aborted list."""
    read = await ctx.core.transactions.read_committed(ref, p.index, p.offset, max_bytes)
    p.high_watermark = max(p.high_watermark, read.high_watermark)
    p.last_stable_offset = read.last_stable_offset
    p.aborted = [(a.producer_id, a.first_offset) for a in read.aborted]
    return read.entries


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


def _answer(version: int, wanted: list[_Partition], committed: bool) -> FetchResponse:
    topics: list[FetchableTopic] = []
    for p in wanted:
        if not topics or topics[-1].topic != p.topic:
            topics.append(FetchableTopic(p.topic, []))
        topics[-1].partitions.append(PartitionData(
            p.index, int(p.error), p.high_watermark,
            p.last_stable_offset if committed else p.high_watermark, p.log_start_offset,
            p.aborted if committed else None, [e.batch for e in p.entries]))
    return FetchResponse(version, topics)


# -- the response and its encoder ------------------------------------------------------------


@dataclass(slots=True)
class PartitionData:
    """One partition of a :class:`FetchResponse` (field names as in Kafka's schema)."""

    partition_index: int
    error_code: int
    high_watermark: int
    last_stable_offset: int
    log_start_offset: int
    aborted_transactions: list[tuple[int, int]] | None
    """``(producer_id, first_offset)`` pairs, or None (a null array)."""
    batches: list[memoryview | bytes]
    """Stored record batches, sent as they are (large ones by reference, never copied)."""
    preferred_read_replica: int = -1

    @property
    def records(self) -> bytes:
        """The batches joined (a copy: for inspection, the encoder never calls it)."""
        return b"".join(self.batches)


@dataclass(slots=True)
class FetchableTopic:
    """One topic of a :class:`FetchResponse`."""

    topic: str
    partitions: list[PartitionData]


@dataclass(slots=True)
class FetchResponse:
    """A Fetch v4-12 response body that encodes itself without copying stored batches.

    Read it like kafka-python's ``FetchResponse`` (same attribute names); the session sends
    :meth:`encode_frame`'s buffers instead of calling the generic codec.
    """

    version: int
    responses: list[FetchableTopic]
    error_code: int = 0
    session_id: int = 0
    throttle_time_ms: int = 0

    def encode_frame(self, correlation_id: int) -> list[bytearray | bytes | memoryview]:
        """The whole response frame (size prefix, header, body) as buffers to send in order.

        The bytes are those kafka-python's generated encoder writes for the same response
        (no tagged fields set, records never null), but stored batches of
        :data:`BY_REFERENCE_BYTES` or more are not copied: they are buffers of their own.
        """
        return _encode(self, correlation_id)


BY_REFERENCE_BYTES = 32 * 1024
"""Batches at least this large are passed by reference; smaller ones are copied into the
surrounding buffer (a send per tiny batch would cost more than the copy)."""

_I16 = struct.Struct(">h")
_I32 = struct.Struct(">i")
_HEAD = struct.Struct(">ihi")  # throttle_time_ms, error_code, session_id (v7+)
_PART_V4 = struct.Struct(">ihqq")  # index, error code, high watermark, last stable offset
_I64 = struct.Struct(">q")
_ABORTED = struct.Struct(">qq")
_FIRST_FLEXIBLE = 12


def _encode(response: FetchResponse, correlation_id: int
            ) -> list[bytearray | bytes | memoryview]:
    version = response.version
    if not 4 <= version <= _FIRST_FLEXIBLE:
        raise ValueError(f"Fetch v{version} is not encoded here (4-12 only)")
    flexible = version >= _FIRST_FLEXIBLE
    buffers: list[bytearray | bytes | memoryview] = []
    out = bytearray(_I32.pack(0))  # the size, patched at the end
    out += _I32.pack(correlation_id)
    if flexible:
        out.append(0)  # response header v1: no tagged fields
    if version >= 7:
        out += _HEAD.pack(response.throttle_time_ms, response.error_code, response.session_id)
    else:
        out += _I32.pack(response.throttle_time_ms)
    _array_length(out, len(response.responses), flexible)
    for topic in response.responses:
        _string(out, topic.topic, flexible)
        _array_length(out, len(topic.partitions), flexible)
        for p in topic.partitions:
            out += _PART_V4.pack(p.partition_index, p.error_code, p.high_watermark,
                                 p.last_stable_offset)
            if version >= 5:
                out += _I64.pack(p.log_start_offset)
            aborted = p.aborted_transactions
            if aborted is None:
                _array_length(out, -1, flexible)
            else:
                _array_length(out, len(aborted), flexible)
                for producer_id, first_offset in aborted:
                    out += _ABORTED.pack(producer_id, first_offset)
                    if flexible:
                        out.append(0)
            if version >= 11:
                out += _I32.pack(p.preferred_read_replica)
            size = sum(len(b) for b in p.batches)
            if flexible:
                out += _uvarint(size + 1)
            else:
                out += _I32.pack(size)
            for batch in p.batches:
                if len(batch) >= BY_REFERENCE_BYTES:
                    buffers.append(out)
                    buffers.append(batch)
                    out = bytearray()
                else:
                    out += batch
            if flexible:
                out.append(0)  # partition tagged fields
        if flexible:
            out.append(0)  # topic tagged fields
    if flexible:
        out.append(0)  # body tagged fields
    buffers.append(out)
    total = sum(len(b) for b in buffers)
    first = buffers[0]
    assert isinstance(first, bytearray)
    _I32.pack_into(first, 0, total - 4)
    return [b for b in buffers if len(b)]


def _array_length(out: bytearray, n: int, flexible: bool) -> None:
    if flexible:
        out += _uvarint(n + 1)  # compact: 0 is null
    else:
        out += _I32.pack(n)


def _string(out: bytearray, text: str, flexible: bool) -> None:
    raw = text.encode("utf-8")
    if flexible:
        out += _uvarint(len(raw) + 1)
    else:
        out += _I16.pack(len(raw))
    out += raw


def _uvarint(value: int) -> bytes:
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)
