"""Kafka services and session, in process: real requests (encoded and decoded by the codec)
against a core on ``memory://`` storage, and the trio session over in-memory streams.

The request/response helpers here (``make_request``, ``produce_body``, ``WireClient``) are also
used by ``test_kafka_e2e.py`` to talk raw Kafka to a real server.
"""

from __future__ import annotations

import struct
from collections.abc import AsyncIterator
from dataclasses import replace
from typing import Any

import pytest
import trio
import trio.testing
from fakeclock import T0, FakeClock

from core.api import Core, open_core
from core.batch import split_batches
from core.config import CoreSettings
from core.errors import (
    CorruptBatch,
    InvalidBatch,
    InvalidTopicName,
    MessageTooLarge,
    OffsetOutOfRange,
    PartitionUnavailable,
    UnknownPartition,
    UnknownTopic,
    UnsupportedBatchVersion,
)
from core.records import Message, build_batch, decode_batch
from handlers.kafka import KafkaHandler, KafkaSettings, registry
from handlers.kafka.apis import SUPPORTED_APIS, ApiKey
from handlers.kafka.codec import KafkaRequest, RequestHeader, decode_request, encode_request
from handlers.kafka.errormap import error_code
from handlers.kafka.errors import ErrorCode
from handlers.kafka.framing import frame
from handlers.kafka.handler import CLUSTER_ID_KEY, load_cluster_id
from handlers.kafka.service import NO_RESPONSE, CloseConnection, ServiceContext, dispatch
from handlers.kafka.service.context import check_topic_name
from handlers.kafka.session import KafkaSession
from storage.api import Storage
from storage.memory import open_memory_storage

# -- request and response helpers (shared with test_kafka_e2e.py) -------------------------------


def make_request(api: ApiKey, version: int, body: Any, correlation_id: int = 1,
                 client_id: str | None = "polystream-test") -> bytes:
    """A request frame's payload (no size prefix) for ``body``."""
    header_version = registry.SPECS[int(api)].request_header_version(version)
    header = RequestHeader(int(api), version, correlation_id, client_id, header_version)
    return encode_request(header, body)


def decoded(api: ApiKey, version: int, body: Any) -> KafkaRequest:
    """``body`` as the session hands it to a service: encoded, then decoded by the codec."""
    request = decode_request(make_request(api, version, body))
    assert isinstance(request, KafkaRequest)
    return request


def batch(*values: bytes, key: bytes | None = b"k", compression: int = 0) -> bytes:
    """One v2 record batch holding ``values`` (all with ``key``)."""
    return build_batch([Message(key, v, timestamp_ms=T0) for v in values], compression)


def produce_body(topic: str, partitions: dict[int, bytes | None], *, version: int = 7,
                 acks: int = -1, transactional_id: str | None = None) -> Any:
    cls = registry.request_class(ApiKey.Produce, version)
    parts = [cls.TopicProduceData.PartitionProduceData(index=i, records=records)
             for i, records in partitions.items()]
    return cls(transactional_id=transactional_id, acks=acks, timeout_ms=5000,
               topic_data=[cls.TopicProduceData(name=topic, partition_data=parts)])


def fetch_body(wanted: list[tuple[str, int, int]], *, version: int = 11, max_wait_ms: int = 0,
               min_bytes: int = 1, max_bytes: int = 1 << 20, partition_max_bytes: int = 1 << 20,
               isolation_level: int = 0, session_id: int = 0, session_epoch: int = -1) -> Any:
    cls = registry.request_class(ApiKey.Fetch, version)
    topics: list[Any] = []
    for topic, partition, offset in wanted:
        part = cls.FetchTopic.FetchPartition(partition=partition, fetch_offset=offset,
                                             partition_max_bytes=partition_max_bytes)
        if topics and topics[-1].topic == topic:
            topics[-1].partitions.append(part)
        else:
            topics.append(cls.FetchTopic(topic=topic, partitions=[part]))
    return cls(replica_id=-1, max_wait_ms=max_wait_ms, min_bytes=min_bytes, max_bytes=max_bytes,
               isolation_level=isolation_level, session_id=session_id,
               session_epoch=session_epoch, topics=topics, forgotten_topics_data=[], rack_id="")


def list_offsets_body(topic: str, queries: dict[int, int], version: int = 5) -> Any:
    cls = registry.request_class(ApiKey.ListOffsets, version)
    parts = [cls.ListOffsetsTopic.ListOffsetsPartition(partition_index=p, timestamp=ts)
             for p, ts in queries.items()]
    return cls(replica_id=-1, isolation_level=0,
               topics=[cls.ListOffsetsTopic(name=topic, partitions=parts)])


def metadata_body(topics: list[str] | None, version: int = 8, allow_create: bool = True) -> Any:
    cls = registry.request_class(ApiKey.Metadata, version)
    wanted = None if topics is None else [cls.MetadataRequestTopic(name=t) for t in topics]
    return cls(topics=wanted, allow_auto_topic_creation=allow_create,
               include_cluster_authorized_operations=False,
               include_topic_authorized_operations=False)


def decode_response(api: ApiKey, version: int, payload: bytes) -> tuple[int, Any]:
    """``(correlation_id, body)`` of a response frame's payload (without its size prefix)."""
    (correlation_id,) = struct.unpack_from(">i", payload)
    spec = registry.SPECS[int(api)]
    start = 4 + (1 if spec.response_header_version(version) == 1 else 0)
    return correlation_id, spec.response.decode(payload[start:], version=version)


class WireClient:
    """A minimal Kafka client over any trio stream: send frames, read response frames."""

    def __init__(self, stream: trio.abc.Stream) -> None:
        self.stream = stream
        self._buffer = bytearray()

    async def send(self, payload: bytes) -> None:
        await self.stream.send_all(frame(payload))

    async def _fill(self, n: int) -> bool:
        while len(self._buffer) < n:
            data = await self.stream.receive_some(65536)
            if not data:
                return False
            self._buffer += data
        return True

    async def read_frame(self) -> bytes | None:
        """The next response payload, or None when the server closed the connection."""
        if not await self._fill(4):
            assert not self._buffer, "connection closed mid-frame"
            return None
        (size,) = struct.unpack_from(">i", self._buffer)
        if not await self._fill(4 + size):
            raise AssertionError("connection closed mid-frame")
        payload = bytes(self._buffer[4 : 4 + size])
        del self._buffer[: 4 + size]
        return payload

    async def call(self, api: ApiKey, version: int, body: Any, correlation_id: int = 1) -> Any:
        """Send one request and return the decoded response body."""
        await self.send(make_request(api, version, body, correlation_id))
        payload = await self.read_frame()
        assert payload is not None, "server closed the connection"
        corr, response = decode_response(api, version, payload)
        assert corr == correlation_id
        return response


# -- fixtures ----------------------------------------------------------------------------------


@pytest.fixture
async def storage() -> AsyncIterator[Storage]:
    async with open_memory_storage() as s:
        yield s


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
async def core(storage: Storage, clock: FakeClock) -> AsyncIterator[Core]:
    async with open_core(storage, CoreSettings(retention_check_interval_ms=0),
                         clock_ms=clock) as c:
        yield c


@pytest.fixture
def ctx(core: Core) -> ServiceContext:
    return ServiceContext(core=core, namespace="public/default", cluster_id="test-cluster",
                          advertised_host="127.0.0.1", advertised_port=9092,
                          stopping=trio.Event())


async def call(ctx: ServiceContext, api: ApiKey, version: int, body: Any) -> Any:
    return await dispatch(ctx, decoded(api, version, body))


def records_of(records: bytes | memoryview | None) -> list[tuple[int, bytes | None]]:
    """``(offset, value)`` of every record in a Fetch response's concatenated batches."""
    if not records:
        return []
    return [(m.offset, m.message.value) for b in split_batches(records, 1 << 30)
            for m in decode_batch(b.view)]


def partitions_of(response: Any) -> list[Any]:
    """Every partition entry of a Produce/Fetch/ListOffsets response, in order."""
    out = []
    for topic in getattr(response, "responses", None) or response.topics:
        out += getattr(topic, "partition_responses", None) or topic.partitions
    return out


# -- ApiVersions, Metadata ---------------------------------------------------------------------


async def test_api_versions_lists_the_implemented_table(ctx: ServiceContext) -> None:
    body = registry.request_class(ApiKey.ApiVersions, 3)(
        client_software_name="t", client_software_version="1")
    response = await call(ctx, ApiKey.ApiVersions, 3, body)
    assert response.error_code == 0
    served = {k.api_key: (k.min_version, k.max_version) for k in response.api_keys}
    assert served == {k: (r.min_version, r.max_version) for k, r in SUPPORTED_APIS.items()}


@pytest.mark.parametrize("version", [0, 4, 8, 11])
async def test_metadata_auto_creates_requested_topics(ctx: ServiceContext,
                                                      version: int) -> None:
    ctx = replace(ctx, num_partitions=3)
    response = await call(ctx, ApiKey.Metadata, version, metadata_body(["orders"], version))
    [broker] = response.brokers
    assert (broker.node_id, broker.host, broker.port) == (0, "127.0.0.1", 9092)
    [topic] = response.topics
    assert (topic.name, topic.error_code) == ("orders", 0)
    assert [p.partition_index for p in topic.partitions] == [0, 1, 2]
    assert all(p.leader_id == 0 and p.replica_nodes == [0] and p.isr_nodes == [0]
               for p in topic.partitions)
    if version >= 2:
        assert response.cluster_id == "test-cluster"
    if version >= 1:
        assert response.controller_id == 0
    info = await ctx.core.topic_metadata("persistent://public/default/orders")
    assert info.partitions == 3


async def test_metadata_all_topics(ctx: ServiceContext) -> None:
    await ctx.core.create_topic("a")
    await ctx.core.create_topic("b", partitions=2)
    response = await call(ctx, ApiKey.Metadata, 8, metadata_body(None))
    assert {(t.name, len(t.partitions)) for t in response.topics} == {("a", 1), ("b", 2)}
    # v0: an empty list means every topic
    response = await call(ctx, ApiKey.Metadata, 0, metadata_body([], 0))
    assert {t.name for t in response.topics} == {"a", "b"}
    # v1+: an empty list means no topic
    response = await call(ctx, ApiKey.Metadata, 1, metadata_body([], 1))
    assert response.topics == []


async def test_metadata_errors(ctx: ServiceContext, storage: Storage) -> None:
    response = await call(ctx, ApiKey.Metadata, 8,
                          metadata_body(["missing", "bad name", "x-partition-1"],
                                        allow_create=False))
    codes = [(t.name, t.error_code, t.partitions) for t in response.topics]
    assert codes == [("missing", ErrorCode.UNKNOWN_TOPIC_OR_PARTITION, []),
                     ("bad name", ErrorCode.INVALID_TOPIC_EXCEPTION, []),
                     ("x-partition-1", ErrorCode.INVALID_TOPIC_EXCEPTION, [])]
    async with open_core(storage, CoreSettings(retention_check_interval_ms=0,
                                               auto_create_topics=False)) as no_create:
        response = await call(replace(ctx, core=no_create), ApiKey.Metadata, 8,
                              metadata_body(["missing"], allow_create=True))
        assert response.topics[0].error_code == ErrorCode.UNKNOWN_TOPIC_OR_PARTITION
    assert await ctx.core.list_topics() == []


async def test_metadata_in_a_missing_namespace(ctx: ServiceContext) -> None:
    ctx = replace(ctx, namespace="nobody/nothing")
    assert (await call(ctx, ApiKey.Metadata, 8, metadata_body(None))).topics == []
    [topic] = (await call(ctx, ApiKey.Metadata, 8, metadata_body(["t"]))).topics
    assert topic.error_code == ErrorCode.UNKNOWN_TOPIC_OR_PARTITION


async def test_topics_live_in_the_configured_namespace(ctx: ServiceContext) -> None:
    await ctx.core.create_tenant("acme")
    await ctx.core.create_namespace("acme/kafka")
    ctx = replace(ctx, namespace="acme/kafka")
    await call(ctx, ApiKey.Produce, 7, produce_body("t", {0: batch(b"v")}))
    assert await ctx.core.latest_offset("persistent://acme/kafka/t", 0) == 1
    assert await ctx.core.list_topics() == []


# -- Produce -----------------------------------------------------------------------------------


@pytest.mark.parametrize("acks", [1, -1])
async def test_produce_appends_and_reports_base_offsets(ctx: ServiceContext, acks: int) -> None:
    await ctx.core.create_topic("t", partitions=2)
    first = await call(ctx, ApiKey.Produce, 7,
                       produce_body("t", {0: batch(b"a", b"b"), 1: batch(b"c")}, acks=acks))
    second = await call(ctx, ApiKey.Produce, 9, produce_body("t", {0: batch(b"d")}, version=9,
                                                                acks=acks))
    got = [(p.index, p.error_code, p.base_offset, p.log_append_time_ms, p.log_start_offset)
           for p in partitions_of(first) + partitions_of(second)]
    assert got == [(0, 0, 0, -1, 0), (1, 0, 0, -1, 0), (0, 0, 2, -1, 0)]
    entries = await ctx.core.read("t", 0, 0, 1 << 20)
    assert [m.message.value for e in entries for m in decode_batch(e.batch)] == [b"a", b"b", b"d"]


async def test_produce_auto_creates_the_topic(ctx: ServiceContext) -> None:
    response = await call(ctx, ApiKey.Produce, 7, produce_body("new", {0: batch(b"v")}))
    assert partitions_of(response)[0].error_code == 0
    assert await ctx.core.latest_offset("new", 0) == 1


async def test_produce_errors_store_nothing(ctx: ServiceContext) -> None:
    await ctx.core.create_topic("t")
    good = batch(b"value")
    corrupt = bytearray(good)
    corrupt[-1] ^= 0xFF  # the CRC covers the records: now it does not match
    too_large = batch(b"x" * (ctx.core.settings.max_message_bytes + 10))
    cases = {
        "crc": (produce_body("t", {0: bytes(corrupt)}), ErrorCode.CORRUPT_MESSAGE),
        "truncated": (produce_body("t", {0: good[:-3]}), ErrorCode.CORRUPT_MESSAGE),
        "empty": (produce_body("t", {0: None}), ErrorCode.CORRUPT_MESSAGE),
        "large": (produce_body("t", {0: too_large}), ErrorCode.MESSAGE_TOO_LARGE),
        "partition": (produce_body("t", {5: good}), ErrorCode.UNKNOWN_TOPIC_OR_PARTITION),
        "name": (produce_body("no/slash", {0: good}), ErrorCode.INVALID_TOPIC_EXCEPTION),
        "acks": (produce_body("t", {0: good}, acks=2), ErrorCode.INVALID_REQUIRED_ACKS),
        # a transactional produce with no open transaction for its producer
        "txn": (produce_body("t", {0: good}, transactional_id="tx"),
                ErrorCode.INVALID_TXN_STATE),
    }
    for name, (body, expected) in cases.items():
        [part] = partitions_of(await call(ctx, ApiKey.Produce, 8, body))
        assert (name, part.error_code, part.base_offset) == (name, expected, -1)
    assert await ctx.core.latest_offset("t", 0) == 0
    assert [t.name.local for t in await ctx.core.list_topics()] == ["t"]


async def test_produce_one_bad_partition_does_not_fail_the_others(ctx: ServiceContext) -> None:
    await ctx.core.create_topic("t", partitions=2)
    corrupt = bytearray(batch(b"v"))
    corrupt[-1] ^= 1
    response = await call(ctx, ApiKey.Produce, 7,
                          produce_body("t", {0: bytes(corrupt), 1: batch(b"ok")}))
    assert [(p.index, p.error_code) for p in partitions_of(response)] == [
        (0, ErrorCode.CORRUPT_MESSAGE), (1, 0)]
    assert await ctx.core.latest_offset("t", 1) == 1


async def test_produce_acks_zero_has_no_response(ctx: ServiceContext) -> None:
    reply = await call(ctx, ApiKey.Produce, 7, produce_body("t", {0: batch(b"v")}, acks=0))
    assert reply is NO_RESPONSE
    assert await ctx.core.latest_offset("t", 0) == 1
    # an error with acks=0 closes the connection, as Kafka does
    corrupt = bytearray(batch(b"v"))
    corrupt[-1] ^= 1
    with pytest.raises(CloseConnection, match="CORRUPT_MESSAGE"):
        await call(ctx, ApiKey.Produce, 7, produce_body("t", {0: bytes(corrupt)}, acks=0))
    with pytest.raises(CloseConnection, match="INVALID_RECORD"):  # magic != 2
        await call(ctx, ApiKey.Produce, 7, produce_body("t", {0: b"garbage" * 10}, acks=0))
    assert await ctx.core.latest_offset("t", 0) == 1


# -- Fetch -------------------------------------------------------------------------------------


async def test_fetch_returns_stored_batches_verbatim(ctx: ServiceContext) -> None:
    await ctx.core.create_topic("t")
    await ctx.core.append("t", 0, batch(b"a", b"b"))
    await ctx.core.append("t", 0, batch(b"c", compression=1))
    stored = b"".join(bytes(e.batch) for e in await ctx.core.read("t", 0, 0, 1 << 20))
    for version in (4, 11, 12):
        response = await call(ctx, ApiKey.Fetch, version, fetch_body([("t", 0, 0)],
                                                                     version=version))
        [part] = partitions_of(response)
        assert (part.error_code, part.high_watermark, part.last_stable_offset,
                part.log_start_offset) == (0, 3, 3, 0)
        assert bytes(part.records) == stored
        if version >= 7:
            assert (response.error_code, response.session_id) == (0, 0)
    # from the middle of a batch: that whole batch (the client skips what it has)
    [part] = partitions_of(await call(ctx, ApiKey.Fetch, 11, fetch_body([("t", 0, 1)])))
    assert records_of(part.records) == [(0, b"a"), (1, b"b"), (2, b"c")]
    # at the high watermark: nothing, no error
    [part] = partitions_of(await call(ctx, ApiKey.Fetch, 11, fetch_body([("t", 0, 3)])))
    assert (part.error_code, bytes(part.records or b"")) == (0, b"")


async def test_fetch_errors(ctx: ServiceContext) -> None:
    await ctx.core.create_topic("t")
    await ctx.core.append("t", 0, batch(b"a"))
    response = await call(ctx, ApiKey.Fetch, 11, fetch_body(
        [("t", 0, 2), ("t", 0, -1), ("t", 3, 0), ("missing", 0, 0)], max_wait_ms=60_000))
    assert [(p.error_code, p.high_watermark) for p in partitions_of(response)] == [
        (ErrorCode.OFFSET_OUT_OF_RANGE, -1), (ErrorCode.OFFSET_OUT_OF_RANGE, -1),
        (ErrorCode.UNKNOWN_TOPIC_OR_PARTITION, -1), (ErrorCode.UNKNOWN_TOPIC_OR_PARTITION, -1)]
    # fetch never auto-creates
    assert [t.name.local for t in await ctx.core.list_topics()] == ["t"]


async def test_fetch_sessions_are_not_supported(ctx: ServiceContext) -> None:
    response = await call(ctx, ApiKey.Fetch, 11, fetch_body([], session_id=7, session_epoch=1))
    assert response.error_code == ErrorCode.FETCH_SESSION_ID_NOT_FOUND
    response = await call(ctx, ApiKey.Fetch, 11, fetch_body([], session_epoch=3))
    assert response.error_code == ErrorCode.INVALID_FETCH_SESSION_EPOCH


async def test_fetch_byte_limits(ctx: ServiceContext) -> None:
    await ctx.core.create_topic("t", partitions=2)
    big = batch(b"x" * 2000)
    for _ in range(2):
        await ctx.core.append("t", 0, big)
        await ctx.core.append("t", 1, big)
    size = len(big)
    # the first batch of the first partition with data always comes back, even if too big
    response = await call(ctx, ApiKey.Fetch, 11, fetch_body(
        [("t", 0, 0), ("t", 1, 0)], max_bytes=100, partition_max_bytes=100))
    assert [len(bytes(p.records or b"")) for p in partitions_of(response)] == [size, 0]
    # per-partition limit
    response = await call(ctx, ApiKey.Fetch, 11, fetch_body(
        [("t", 0, 0), ("t", 1, 0)], partition_max_bytes=size + 10))
    assert [len(bytes(p.records or b"")) for p in partitions_of(response)] == [size, size]
    # total limit
    response = await call(ctx, ApiKey.Fetch, 11, fetch_body(
        [("t", 0, 0), ("t", 1, 0)], max_bytes=3 * size))
    assert [len(bytes(p.records or b"")) for p in partitions_of(response)] == [2 * size, size]


async def test_fetch_long_poll_times_out_on_the_trio_clock(
        ctx: ServiceContext, autojump_clock: trio.testing.MockClock) -> None:
    await ctx.core.create_topic("t")
    start = trio.current_time()
    response = await call(ctx, ApiKey.Fetch, 11, fetch_body([("t", 0, 0)], max_wait_ms=30_000))
    assert trio.current_time() - start == pytest.approx(30.0)
    [part] = partitions_of(response)
    assert (part.error_code, part.high_watermark, bytes(part.records or b"")) == (0, 0, b"")


async def test_fetch_long_poll_wakes_on_data(
        ctx: ServiceContext, autojump_clock: trio.testing.MockClock) -> None:
    await ctx.core.create_topic("a")
    await ctx.core.create_topic("b")
    result: list[Any] = []

    async def fetch() -> None:
        result.append(await call(ctx, ApiKey.Fetch, 11, fetch_body(
            [("a", 0, 0), ("b", 0, 0)], max_wait_ms=60_000)))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(fetch)
        await trio.sleep(5)
        assert not result
        await ctx.core.append("b", 0, batch(b"late"))
    assert trio.current_time() == pytest.approx(5.0)
    parts = partitions_of(result[0])
    assert [p.high_watermark for p in parts] == [0, 1]
    assert records_of(parts[1].records) == [(0, b"late")]


async def test_fetch_min_bytes_waits_for_enough(
        ctx: ServiceContext, autojump_clock: trio.testing.MockClock) -> None:
    await ctx.core.create_topic("t")
    await ctx.core.append("t", 0, batch(b"small"))
    one = len(batch(b"small"))
    result: list[Any] = []

    async def fetch() -> None:
        result.append(await call(ctx, ApiKey.Fetch, 11, fetch_body(
            [("t", 0, 0)], max_wait_ms=60_000, min_bytes=one + 1)))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(fetch)
        await trio.sleep(1)
        assert not result
        await ctx.core.append("t", 0, batch(b"small"))
    assert trio.current_time() == pytest.approx(1.0)
    assert len(bytes(partitions_of(result[0])[0].records)) == 2 * one


async def test_fetch_long_poll_returns_when_stopping(
        ctx: ServiceContext, autojump_clock: trio.testing.MockClock) -> None:
    await ctx.core.create_topic("t")
    assert ctx.stopping is not None
    async with trio.open_nursery() as nursery:
        nursery.start_soon(call, ctx, ApiKey.Fetch, 11,
                           fetch_body([("t", 0, 0)], max_wait_ms=60_000))
        await trio.sleep(2)
        ctx.stopping.set()
    assert trio.current_time() == pytest.approx(2.0)


async def test_fetch_read_committed_is_accepted(ctx: ServiceContext) -> None:
    await ctx.core.create_topic("t")
    await ctx.core.append("t", 0, batch(b"v"))
    response = await call(ctx, ApiKey.Fetch, 11, fetch_body([("t", 0, 0)], isolation_level=1))
    [part] = partitions_of(response)
    assert (part.error_code, part.last_stable_offset, part.aborted_transactions) == (0, 1, [])
    assert records_of(part.records) == [(0, b"v")]


# -- ListOffsets -------------------------------------------------------------------------------


async def test_list_offsets(ctx: ServiceContext, clock: FakeClock) -> None:
    await ctx.core.create_topic("t")
    await ctx.core.append("t", 0, batch(b"a", b"b"))
    clock.now += 100
    await ctx.core.append("t", 0, batch(b"c"))
    queries = [(-2, 0, -1), (-1, 3, -1), (0, 0, T0), (T0, 0, T0), (T0 + 1, 2, T0 + 100),
               (T0 + 100, 2, T0 + 100), (T0 + 101, -1, -1)]
    for version in (1, 5, 7):
        for query, offset, timestamp in queries:
            response = await call(ctx, ApiKey.ListOffsets, version,
                                  list_offsets_body("t", {0: query}, version))
            [part] = partitions_of(response)
            assert (query, part.error_code, part.offset, part.timestamp) == (
                query, 0, offset, timestamp)


async def test_list_offsets_errors(ctx: ServiceContext) -> None:
    await ctx.core.create_topic("t")
    response = await call(ctx, ApiKey.ListOffsets, 7, list_offsets_body("t", {0: -3, 4: -1}))
    assert [(p.error_code, p.offset) for p in partitions_of(response)] == [
        (ErrorCode.UNSUPPORTED_VERSION, -1), (ErrorCode.UNKNOWN_TOPIC_OR_PARTITION, -1)]
    response = await call(ctx, ApiKey.ListOffsets, 7, list_offsets_body("nope", {0: -1}))
    assert partitions_of(response)[0].error_code == ErrorCode.UNKNOWN_TOPIC_OR_PARTITION
    assert [t.name.local for t in await ctx.core.list_topics()] == ["t"]


# -- names, errors, settings, cluster id -------------------------------------------------------


@pytest.mark.parametrize("name", ["", ".", "..", "a/b", "a b", "ü", "x" * 250, "t-partition-0",
                                  "persistent://public/default/t", "a=b"])
def test_illegal_topic_names(name: str) -> None:
    with pytest.raises(InvalidTopicName):
        check_topic_name(name)


def test_legal_topic_names() -> None:
    for name in ["t", "a.b_c-d", "x" * 249, "-partition-", "t-partition-x"]:
        assert check_topic_name(name) == name


def test_error_map() -> None:
    assert error_code(CorruptBatch("x")) == ErrorCode.CORRUPT_MESSAGE
    assert error_code(UnsupportedBatchVersion("x")) == ErrorCode.INVALID_RECORD
    assert error_code(InvalidBatch("x")) == ErrorCode.INVALID_RECORD
    assert error_code(MessageTooLarge("x")) == ErrorCode.MESSAGE_TOO_LARGE
    assert error_code(UnknownPartition("x")) == ErrorCode.UNKNOWN_TOPIC_OR_PARTITION
    assert error_code(UnknownTopic("x")) == ErrorCode.UNKNOWN_TOPIC_OR_PARTITION
    assert error_code(InvalidTopicName("x")) == ErrorCode.INVALID_TOPIC_EXCEPTION
    assert error_code(OffsetOutOfRange(5, 0, 3)) == ErrorCode.OFFSET_OUT_OF_RANGE
    assert error_code(PartitionUnavailable("x")) == ErrorCode.KAFKA_STORAGE_ERROR
    assert error_code(RuntimeError("x")) == ErrorCode.UNKNOWN_SERVER_ERROR


def test_settings_validation() -> None:
    assert KafkaSettings.parse({}) == KafkaSettings()
    parsed = KafkaSettings.parse({"advertised_host": "h", "advertised_port": 1,
                                  "namespace": "a/b", "num_partitions": 4})
    assert (parsed.advertised_host, parsed.advertised_port, parsed.num_partitions) == ("h", 1, 4)
    for bad in [{"nope": 1}, {"advertised_port": 0}, {"advertised_port": True},
                {"max_request_bytes": "1"}, {"namespace": "x"}, {"num_partitions": 0},
                {"advertised_host": 5}, {"max_in_flight": 0}]:
        with pytest.raises(ValueError):
            KafkaSettings.parse(bad)


async def test_cluster_id_is_created_once(storage: Storage) -> None:
    first = await load_cluster_id(storage.metadata)
    assert len(first) == 22
    assert await load_cluster_id(storage.metadata) == first
    stored = await storage.metadata.get(CLUSTER_ID_KEY)
    assert stored is not None and stored.value.decode() == first


# -- the session, over in-memory streams -------------------------------------------------------


async def start_session(nursery: trio.Nursery, ctx: ServiceContext, **kwargs: Any
                        ) -> tuple[WireClient, KafkaSession]:
    client_stream, server_stream = trio.testing.memory_stream_pair()
    session = KafkaSession(server_stream, ctx, peer="test", **kwargs)

    async def run() -> None:
        await session.run()
        await server_stream.aclose()

    nursery.start_soon(run)
    return WireClient(client_stream), session


async def test_session_answers_pipelined_requests_in_order(ctx: ServiceContext) -> None:
    async with trio.open_nursery() as nursery:
        client, _ = await start_session(nursery, ctx, max_in_flight=2)
        frames = [
            make_request(ApiKey.Produce, 7, produce_body("t", {0: batch(b"0")}), 1),
            make_request(ApiKey.Metadata, 8, metadata_body(["t"]), 2),
            make_request(ApiKey.Produce, 7, produce_body("t", {0: batch(b"1")}, acks=0), 3),
            make_request(ApiKey.Produce, 7, produce_body("t", {0: batch(b"2")}), 4),
            make_request(ApiKey.Fetch, 11, fetch_body([("t", 0, 0)]), 5),
        ]
        await client.stream.send_all(b"".join(frame(f) for f in frames))
        answers = []
        for api, version in [(ApiKey.Produce, 7), (ApiKey.Metadata, 8), (ApiKey.Produce, 7),
                             (ApiKey.Fetch, 11)]:
            payload = await client.read_frame()
            assert payload is not None
            answers.append(decode_response(api, version, payload))
        assert [corr for corr, _ in answers] == [1, 2, 4, 5]  # acks=0: no response
        assert [p.base_offset for p in partitions_of(answers[2][1])] == [2]
        records = partitions_of(answers[3][1])[0].records
        assert records_of(records) == [(0, b"0"), (1, b"1"), (2, b"2")]
        await client.stream.aclose()


async def test_session_pipelined_produces_keep_their_order(ctx: ServiceContext) -> None:
    await ctx.core.create_topic("t", partitions=2)
    count = 40
    async with trio.open_nursery() as nursery:
        client, session = await start_session(nursery, ctx, max_in_flight=8)
        frames = [make_request(ApiKey.Produce, 7, produce_body(
            "t", {0: batch(b"%d" % i), 1: batch(b"%d" % i, b"x")}), i) for i in range(count)]
        async with trio.open_nursery() as sender:  # send while reading: the window is 8
            sender.start_soon(client.stream.send_all, b"".join(frame(f) for f in frames))
            answers = []
            for _ in range(count):
                payload = await client.read_frame()
                assert payload is not None
                answers.append(decode_response(ApiKey.Produce, 7, payload))
        assert [corr for corr, _ in answers] == list(range(count))
        offsets = [[p.base_offset for p in partitions_of(r)] for _, r in answers]
        assert offsets == [[i, 2 * i] for i in range(count)]
        stored = await ctx.core.read("public/default/t", 0, 0, 1 << 20)
        assert [m.message.value for e in stored for m in decode_batch(e.batch)] == [
            b"%d" % i for i in range(count)]
        assert session.served == count
        await client.stream.aclose()


async def test_session_long_poll_does_not_block_the_requests_behind_it(
        ctx: ServiceContext, autojump_clock: trio.testing.MockClock) -> None:
    await ctx.core.create_topic("t")
    async with trio.open_nursery() as nursery:
        client, _ = await start_session(nursery, ctx)
        await client.stream.send_all(
            frame(make_request(ApiKey.Fetch, 11, fetch_body([("t", 0, 0)], max_wait_ms=60_000),
                               1))
            + frame(make_request(ApiKey.Produce, 7, produce_body("t", {0: batch(b"v")}), 2)))
        payload = await client.read_frame()
        assert payload is not None
        corr, fetched = decode_response(ApiKey.Fetch, 11, payload)
        assert corr == 1 and records_of(partitions_of(fetched)[0].records) == [(0, b"v")]
        payload = await client.read_frame()
        assert payload is not None and decode_response(ApiKey.Produce, 7, payload)[0] == 2
        await client.stream.aclose()
    assert trio.current_time() < 1  # the produce woke the fetch: no 60 s wait


async def test_session_answers_unsupported_api_versions(ctx: ServiceContext) -> None:
    async with trio.open_nursery() as nursery:
        client, _ = await start_session(nursery, ctx)
        header = RequestHeader(int(ApiKey.ApiVersions), 99, 42, "future", 1)
        await client.send(header.encode() + b"\x00\x00")
        payload = await client.read_frame()
        assert payload is not None
        corr, body = decode_response(ApiKey.ApiVersions, 0, payload)
        assert (corr, body.error_code) == (42, ErrorCode.UNSUPPORTED_VERSION)
        # the connection stays usable
        response = await client.call(ApiKey.ApiVersions, 3, registry.request_class(
            ApiKey.ApiVersions, 3)(client_software_name="t", client_software_version="1"), 43)
        assert response.error_code == 0
        await client.stream.aclose()


@pytest.mark.parametrize("bad", [
    struct.pack(">i", 1 << 30) + b"x" * 100,           # size over the limit
    struct.pack(">i", -5),                             # negative size
    frame(b"\xde\xad\xbe\xef" * 8),                    # garbage body: unknown api key
    frame(struct.pack(">hhi", 0, 1, 9) + b"\x00\x00"), # Produce v1: not served
    frame(struct.pack(">hhi", 3, 8, 9) + b"\x00"),     # Metadata v8, truncated
])
async def test_session_closes_on_bad_frames(ctx: ServiceContext, bad: bytes,
                                            caplog: pytest.LogCaptureFixture) -> None:
    async with trio.open_nursery() as nursery:
        client, _ = await start_session(nursery, ctx, max_request_bytes=1 << 20)
        good = make_request(ApiKey.Metadata, 8, metadata_body(None), 1)
        await client.stream.send_all(frame(good) + bad)
        payload = await client.read_frame()  # the request before the bad frame is answered
        assert payload is not None and decode_response(ApiKey.Metadata, 8, payload)[0] == 1
        assert await client.read_frame() is None
    assert "closing connection" in caplog.text


async def test_session_finishes_the_request_in_flight_when_stopping(
        ctx: ServiceContext, autojump_clock: trio.testing.MockClock) -> None:
    await ctx.core.create_topic("t")
    assert ctx.stopping is not None
    async with trio.open_nursery() as nursery:
        client, session = await start_session(nursery, ctx)
        await client.send(make_request(ApiKey.Fetch, 11,
                                       fetch_body([("t", 0, 0)], max_wait_ms=60_000), 7))
        await trio.sleep(1)
        ctx.stopping.set()
        payload = await client.read_frame()
        assert payload is not None and decode_response(ApiKey.Fetch, 11, payload)[0] == 7
        assert await client.read_frame() is None
    assert trio.current_time() == pytest.approx(1.0)
    assert session.served == 1


async def test_session_closes_when_idle_and_stopping(ctx: ServiceContext) -> None:
    assert ctx.stopping is not None
    async with trio.open_nursery() as nursery:
        client, _ = await start_session(nursery, ctx)
        assert (await client.call(ApiKey.Metadata, 8, metadata_body(None))).topics == []
        ctx.stopping.set()
        assert await client.read_frame() is None


async def test_handler_advertises_bound_address(core: Core) -> None:
    from core.handler import HandlerContext, ListenerAddress

    async with trio.open_nursery() as nursery:
        for settings, bound, expected in [
            ({}, ListenerAddress("kafka", "0.0.0.0", 9999), ("127.0.0.1", 9999)),
            ({}, ListenerAddress("kafka", "10.1.2.3", 9092), ("10.1.2.3", 9092)),
            ({"advertised_host": "kafka.example", "advertised_port": 19092},
             ListenerAddress("kafka", "0.0.0.0", 9999), ("kafka.example", 19092)),
        ]:
            handler = KafkaHandler()
            await handler.start(HandlerContext(core=core, settings=settings, nursery=nursery,
                                               listeners=[bound]))
            ctx = handler._by_listener["kafka"]
            assert (ctx.advertised_host, ctx.advertised_port) == expected
            assert ctx.cluster_id == await load_cluster_id(core.storage.metadata)
        nursery.cancel_scope.cancel()  # the handlers' background tasks (group coordinator)
