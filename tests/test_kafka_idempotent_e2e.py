"""InitProducerId and idempotent produce: the service in process, then real idempotent clients.

Clients: confluent-kafka (librdkafka) with ``enable.idempotence=True``, kafka-python and aiokafka
with idempotence on -- unmodified.  That idempotence really took effect is checked on the
stored bytes: every batch carries the producer id from InitProducerId and consecutive sequences.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import confluent_kafka as ck
import pytest
import trio
from conftest import ServerFactory, ServerProcess
from test_kafka_service import (
    WireClient,
    decode_response,
    decoded,
    fetch_body,
    make_request,
    partitions_of,
    produce_body,
    start_session,
)

from core.api import Core, open_core
from core.batch import BatchInfo, split_batches
from core.config import CoreSettings
from core.records import Message, build_batch, decode_batch
from handlers.kafka import registry
from handlers.kafka.apis import SUPPORTED_APIS, ApiKey
from handlers.kafka.errors import ErrorCode
from handlers.kafka.framing import frame
from handlers.kafka.service import ServiceContext, dispatch
from storage.memory import open_memory_storage

N = 20
CLIENT_TIMEOUT_S = 20.0
T0 = 1_700_000_000_000


def init_body(version: int, transactional_id: str | None = None) -> Any:
    cls = registry.request_class(ApiKey.InitProducerId, version)
    return cls(transactional_id=transactional_id, transaction_timeout_ms=60000,
               producer_id=-1, producer_epoch=-1)


# -- the service, in process -----------------------------------------------------------------


@pytest.fixture
async def ctx() -> AsyncIterator[ServiceContext]:
    async with open_memory_storage() as storage, open_core(
            storage, CoreSettings(retention_check_interval_ms=0)) as core:
        yield ServiceContext(core=core, namespace="public/default", cluster_id="test",
                             advertised_host="127.0.0.1", advertised_port=9092)


async def test_init_producer_id_is_advertised_and_served() -> None:
    served = SUPPORTED_APIS[int(ApiKey.InitProducerId)]
    assert (served.min_version, served.max_version) == (0, 5)


@pytest.mark.parametrize("version", range(6))
async def test_init_producer_id_allocates_fresh_ids_at_epoch_zero(
        ctx: ServiceContext, version: int) -> None:
    ids = []
    for _ in range(3):
        response = await dispatch(ctx, decoded(ApiKey.InitProducerId, version,
                                               init_body(version)))
        assert (response.error_code, response.producer_epoch) == (ErrorCode.NONE, 0)
        ids.append(response.producer_id)
    assert len(set(ids)) == 3
    assert min(ids) >= 0


async def test_transactional_ids_get_a_producer_and_bump_the_epoch(
        ctx: ServiceContext) -> None:
    first = await dispatch(ctx, decoded(ApiKey.InitProducerId, 4, init_body(4, "txn-1")))
    assert (first.error_code, first.producer_epoch) == (ErrorCode.NONE, 0)
    again = await dispatch(ctx, decoded(ApiKey.InitProducerId, 4, init_body(4, "txn-1")))
    assert (again.error_code, again.producer_id) == (ErrorCode.NONE, first.producer_id)
    assert again.producer_epoch == 1  # the previous session is fenced


def pbatch(pid: int, seq: int, *values: bytes) -> bytes:
    return build_batch([Message(b"k", v, timestamp_ms=T0) for v in values],
                       producer_id=pid, producer_epoch=0, base_sequence=seq)


async def test_produce_answers_a_retry_with_the_first_offset(ctx: ServiceContext) -> None:
    init = await dispatch(ctx, decoded(ApiKey.InitProducerId, 4, init_body(4)))
    pid = init.producer_id
    answers = []
    for records in (pbatch(pid, 0, b"a", b"b"), pbatch(pid, 0, b"a", b"b"),
                    pbatch(pid, 5, b"gap"), pbatch(pid, 2, b"c")):
        response = await dispatch(ctx, decoded(ApiKey.Produce, 7, produce_body(
            "idem", {0: records})))
        (part,) = partitions_of(response)
        answers.append((ErrorCode(part.error_code), part.base_offset))
    assert answers == [(ErrorCode.NONE, 0), (ErrorCode.NONE, 0),
                       (ErrorCode.OUT_OF_ORDER_SEQUENCE_NUMBER, -1), (ErrorCode.NONE, 2)]
    core: Core = ctx.core
    entries = await core.read("public/default/idem", 0, 0, 1 << 20)
    assert [m.message.value for e in entries for m in decode_batch(e.batch)] == [
        b"a", b"b", b"c"]


async def test_pipelined_idempotent_produces_are_checked_in_arrival_order(
        ctx: ServiceContext) -> None:
    """Five requests in flight from one producer, plus a retry of the first, behind them."""
    init = await dispatch(ctx, decoded(ApiKey.InitProducerId, 4, init_body(4)))
    pid = init.producer_id
    def request(seq: int, correlation_id: int) -> bytes:
        body = produce_body("pipe", {0: pbatch(pid, seq, b"%d" % seq, b"x")})
        return make_request(ApiKey.Produce, 7, body, correlation_id)

    payloads = [request(2 * i, i) for i in range(5)] + [request(0, 5)]
    async with trio.open_nursery() as nursery:
        client, _ = await start_session(nursery, ctx, max_in_flight=8)
        await client.stream.send_all(b"".join(frame(p) for p in payloads))
        offsets = []
        for _ in payloads:
            payload = await client.read_frame()
            assert payload is not None
            (part,) = partitions_of(decode_response(ApiKey.Produce, 7, payload)[1])
            assert part.error_code == ErrorCode.NONE
            offsets.append(part.base_offset)
        await client.stream.aclose()
    assert offsets == [0, 2, 4, 6, 8, 0]
    assert await ctx.core.latest_offset("public/default/pipe", 0) == 10


# -- real clients ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    factory = ServerFactory(tmp_path_factory.mktemp("kafka-idempotent"))
    try:
        yield factory("kafka", log_level="info")
    finally:
        factory.close()


def bootstrap(server: ServerProcess) -> str:
    host, port = server.address("kafka")
    return f"{host}:{port}"


def expected(topic: str) -> list[tuple[bytes, bytes]]:
    return [(f"key-{i}".encode(), f"{topic} value {i}".encode()) for i in range(N)]


def stored_batches(server: ServerProcess, topic: str
                   ) -> tuple[list[BatchInfo], list[bytes | None]]:
    """Every stored batch of partition 0 (raw Fetch) and the values of its records."""

    async def fetch() -> Any:
        with trio.fail_after(CLIENT_TIMEOUT_S):
            client = WireClient(await trio.open_tcp_stream(*server.address("kafka")))
            await client.send(make_request(ApiKey.Fetch, 11, fetch_body([(topic, 0, 0)]), 1))
            payload = await client.read_frame()
            await client.stream.aclose()
        assert payload is not None
        return partitions_of(decode_response(ApiKey.Fetch, 11, payload)[1])[0].records

    records = trio.run(fetch)
    batches = split_batches(records, 1 << 30)
    values = [m.message.value for b in batches for m in decode_batch(b.view)]
    return batches, values


def assert_idempotent(batches: list[BatchInfo]) -> int:
    """One producer id >= 0, epoch 0, sequences following on from 0; return the id."""
    assert batches
    pids = {b.producer_id for b in batches}
    assert len(pids) == 1 and min(pids) >= 0, pids
    assert {b.producer_epoch for b in batches} == {0}
    seq = 0
    for b in batches:
        assert b.base_sequence == seq
        seq += b.record_count
    return pids.pop()


def confluent_idempotent(server: ServerProcess, topic: str,
                         messages: list[tuple[bytes, bytes]]) -> list[int]:
    """Produce with librdkafka's idempotent producer (acks=all implied); return offsets."""
    producer = ck.Producer({"bootstrap.servers": bootstrap(server), "enable.idempotence": True,
                            "linger.ms": 5, "max.in.flight.requests.per.connection": 5})
    reports: list[tuple[Any, Any]] = []
    for key, value in messages:
        producer.produce(topic, value, key=key, partition=0,
                         on_delivery=lambda err, msg: reports.append((err, msg)))
    assert producer.flush(CLIENT_TIMEOUT_S) == 0
    assert [err for err, _ in reports] == [None] * len(messages)
    return [msg.offset() for _, msg in reports]


@pytest.mark.slow
def test_confluent_idempotent_producer(server: ServerProcess) -> None:
    topic = "confluent-idempotent"
    messages = expected(topic)
    # two producers one after the other: two producer ids
    offsets = [confluent_idempotent(server, topic, half)
               for half in (messages[: N // 2], messages[N // 2 :])]
    assert offsets == [list(range(N // 2)), list(range(N // 2, N))]
    batches, values = stored_batches(server, topic)
    assert values == [v for _, v in messages]
    first = [b for b in batches if b.producer_id == batches[0].producer_id]
    second = [b for b in batches if b.producer_id != batches[0].producer_id]
    assert assert_idempotent(first) != assert_idempotent(second)


@pytest.mark.slow
def test_kafka_python_idempotent_producer(server: ServerProcess) -> None:
    import kafka

    topic = "kafka-python-idempotent"
    messages = expected(topic)
    producer = kafka.KafkaProducer(bootstrap_servers=bootstrap(server), acks="all",
                                   enable_idempotence=True)
    try:
        futures = [producer.send(topic, value, key=key, partition=0) for key, value in messages]
        offsets = [f.get(timeout=CLIENT_TIMEOUT_S).offset for f in futures]
    finally:
        producer.close(timeout=CLIENT_TIMEOUT_S)
    assert offsets == list(range(N))
    batches, values = stored_batches(server, topic)
    assert values == [v for _, v in messages]
    assert_idempotent(batches)


@pytest.mark.slow
def test_aiokafka_idempotent_producer(server: ServerProcess) -> None:
    import aiokafka  # type: ignore[import-untyped]

    topic = "aiokafka-idempotent"
    messages = expected(topic)

    async def main() -> list[int]:
        producer = aiokafka.AIOKafkaProducer(bootstrap_servers=bootstrap(server), acks="all",
                                             enable_idempotence=True)
        await producer.start()
        try:
            return [(await producer.send_and_wait(topic, value, key=key, partition=0)).offset
                    for key, value in messages]
        finally:
            await producer.stop()

    deadline = time.monotonic() + 3 * CLIENT_TIMEOUT_S
    offsets = asyncio.run(asyncio.wait_for(main(), deadline - time.monotonic()))
    assert offsets == list(range(N))
    batches, values = stored_batches(server, topic)
    assert values == [v for _, v in messages]
    assert_idempotent(batches)
