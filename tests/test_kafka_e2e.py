"""End to end: real Kafka clients against ``polystream serve`` on loopback.

Clients: Debian's kcat, confluent-kafka (librdkafka), kafka-python and aiokafka -- unmodified.
These tests cover produce/fetch/list-offsets with manual assignment and idempotence off;
idempotent producers, consumer groups, admin and SASL have their own test modules.  Raw-protocol
checks use the codec through ``WireClient`` from ``test_kafka_service``.
"""

from __future__ import annotations

import asyncio
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import confluent_kafka as ck
import pytest
import trio
from conftest import ServerFactory, ServerProcess
from test_kafka_service import (
    WireClient,
    batch,
    decode_response,
    fetch_body,
    list_offsets_body,
    make_request,
    metadata_body,
    partitions_of,
    produce_body,
    records_of,
)
from tools import require_tool

from handlers.kafka.apis import ApiKey
from handlers.kafka.errors import ErrorCode

pytestmark = pytest.mark.slow

N = 20
CLIENT_TIMEOUT_S = 20.0


@pytest.fixture(scope="module")
def shared_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """One server for the client-interoperability tests (each uses its own topics)."""
    factory = ServerFactory(tmp_path_factory.mktemp("kafka-e2e"))
    try:
        yield factory("kafka", log_level="info")
    finally:
        factory.close()


def bootstrap(server: ServerProcess) -> str:
    host, port = server.address("kafka")
    return f"{host}:{port}"


def run_kcat(*args: str, stdin: str | None = None) -> str:
    kcat = require_tool("kcat")
    done = subprocess.run([kcat, *args], input=stdin, capture_output=True, text=True,
                          timeout=CLIENT_TIMEOUT_S, check=False)
    assert done.returncode == 0, done.stderr
    return done.stdout


def confluent_produce(server: ServerProcess, topic: str, messages: list[tuple[bytes, bytes]],
                      **config: Any) -> list[int]:
    """Produce ``(key, value)`` pairs to partition 0 with acks=all; return their offsets."""
    producer = ck.Producer({"bootstrap.servers": bootstrap(server), "acks": "all",
                            "enable.idempotence": False, "linger.ms": 5, **config})
    reports: list[tuple[Any, Any]] = []
    for key, value in messages:
        producer.produce(topic, value, key=key, partition=0,
                         on_delivery=lambda err, msg: reports.append((err, msg)))
    assert producer.flush(CLIENT_TIMEOUT_S) == 0
    assert [err for err, _ in reports] == [None] * len(messages)
    return [msg.offset() for _, msg in reports]


def confluent_consume(server: ServerProcess, topic: str, count: int
                      ) -> list[tuple[int, bytes | None, bytes | None]]:
    """Read ``count`` records from partition 0 from the beginning (manual assignment)."""
    consumer = ck.Consumer({"bootstrap.servers": bootstrap(server), "group.id": "e2e",
                            "enable.auto.commit": False, "enable.auto.offset.store": False})
    try:
        consumer.assign([ck.TopicPartition(topic, 0, ck.OFFSET_BEGINNING)])
        got: list[tuple[int, bytes | None, bytes | None]] = []
        deadline = time.monotonic() + CLIENT_TIMEOUT_S
        while len(got) < count and time.monotonic() < deadline:
            msg = consumer.poll(1.0)
            if msg is None:
                continue
            assert msg.error() is None, msg.error()
            got.append((msg.offset(), msg.key(), msg.value()))
        return got
    finally:
        consumer.close()


def expected(topic: str, n: int = N) -> list[tuple[bytes, bytes]]:
    return [(f"key-{i}".encode(), f"{topic} value {i}".encode()) for i in range(n)]


# -- kcat --------------------------------------------------------------------------------------


def test_kcat_produce_consume_and_list(shared_server: ServerProcess) -> None:
    broker = bootstrap(shared_server)
    lines = [f"key-{i}:value {i}" for i in range(N)]
    run_kcat("-b", broker, "-P", "-t", "kcat-topic", "-K:", stdin="\n".join(lines) + "\n")
    out = run_kcat("-b", broker, "-C", "-t", "kcat-topic", "-e", "-o", "beginning",
                   "-f", "%o|%k|%s\n")
    assert out.splitlines() == [f"{i}|key-{i}|value {i}" for i in range(N)]
    listing = run_kcat("-b", broker, "-L")
    assert f"broker 0 at {broker}" in listing
    assert 'topic "kcat-topic" with 1 partitions' in listing


# -- confluent-kafka ---------------------------------------------------------------------------


@pytest.mark.parametrize("compression", ["none", "gzip", "snappy", "lz4", "zstd"])
def test_confluent_round_trip(shared_server: ServerProcess, compression: str) -> None:
    topic = f"confluent-{compression}"
    messages = expected(topic)
    offsets = confluent_produce(shared_server, topic, messages, **{
        "compression.type": compression})
    assert sorted(offsets) == list(range(N))
    got = confluent_consume(shared_server, topic, N)
    assert [offset for offset, _, _ in got] == list(range(N))
    assert [(k, v) for _, k, v in got] == messages


def test_confluent_offsets_for_times(shared_server: ServerProcess) -> None:
    topic = "by-time"
    confluent_produce(shared_server, topic, expected(topic, 3))
    # the next batch is published at least one millisecond after ``middle``
    middle = time.time_ns() // 1_000_000 + 1
    while time.time_ns() // 1_000_000 < middle:
        pass
    confluent_produce(shared_server, topic, expected(topic, 2))
    consumer = ck.Consumer({"bootstrap.servers": bootstrap(shared_server), "group.id": "e2e"})
    try:
        def lookup(timestamp: int) -> int:
            [found] = consumer.offsets_for_times([ck.TopicPartition(topic, 0, timestamp)],
                                                 CLIENT_TIMEOUT_S)
            assert found.error is None
            return int(found.offset)

        assert lookup(0) == 0
        assert lookup(middle) == 3
        assert lookup(middle + 3_600_000) == -1  # after the last record: end of log
        assert consumer.get_watermark_offsets(ck.TopicPartition(topic, 0),
                                              CLIENT_TIMEOUT_S) == (0, 5)
    finally:
        consumer.close()


# -- kafka-python and aiokafka -----------------------------------------------------------------


def test_kafka_python_round_trip(shared_server: ServerProcess) -> None:
    import kafka

    topic = "kafka-python"
    messages = expected(topic)
    producer = kafka.KafkaProducer(bootstrap_servers=bootstrap(shared_server), acks="all",
                                   enable_idempotence=False)
    try:
        futures = [producer.send(topic, value, key=key, partition=0) for key, value in messages]
        offsets = [f.get(timeout=CLIENT_TIMEOUT_S).offset for f in futures]
    finally:
        producer.close(timeout=CLIENT_TIMEOUT_S)
    assert offsets == list(range(N))
    consumer = kafka.KafkaConsumer(bootstrap_servers=bootstrap(shared_server), group_id=None,
                                   enable_auto_commit=False)
    try:
        tp = kafka.TopicPartition(topic, 0)
        consumer.assign([tp])
        consumer.seek_to_beginning(tp)
        got: list[tuple[int, bytes, bytes]] = []
        deadline = time.monotonic() + CLIENT_TIMEOUT_S
        while len(got) < N and time.monotonic() < deadline:
            for records in consumer.poll(timeout_ms=1000).values():
                got += [(r.offset, r.key, r.value) for r in records]
    finally:
        consumer.close()
    assert got == [(i, k, v) for i, (k, v) in enumerate(messages)]


def test_aiokafka_round_trip(shared_server: ServerProcess) -> None:
    import aiokafka

    topic = "aiokafka"
    messages = expected(topic)

    async def main() -> list[tuple[int, bytes, bytes]]:
        producer = aiokafka.AIOKafkaProducer(bootstrap_servers=bootstrap(shared_server),
                                             acks="all", enable_idempotence=False)
        await producer.start()
        try:
            for key, value in messages:
                await producer.send_and_wait(topic, value, key=key, partition=0)
        finally:
            await producer.stop()
        consumer = aiokafka.AIOKafkaConsumer(bootstrap_servers=bootstrap(shared_server),
                                             group_id=None, enable_auto_commit=False)
        await consumer.start()
        got: list[tuple[int, bytes, bytes]] = []
        try:
            tp = aiokafka.TopicPartition(topic, 0)
            consumer.assign([tp])
            await consumer.seek_to_beginning(tp)
            deadline = time.monotonic() + CLIENT_TIMEOUT_S
            while len(got) < N and time.monotonic() < deadline:
                for records in (await consumer.getmany(timeout_ms=1000)).values():
                    got += [(r.offset, r.key, r.value) for r in records]
        finally:
            await consumer.stop()
        return got

    got = asyncio.run(asyncio.wait_for(main(), 3 * CLIENT_TIMEOUT_S))
    assert got == [(i, k, v) for i, (k, v) in enumerate(messages)]


# -- durability --------------------------------------------------------------------------------


def test_acknowledged_records_survive_sigkill(polystream_server: ServerFactory,
                                              tmp_path: Path) -> None:
    data_dir = tmp_path / "kafka-data"
    server = polystream_server("kafka", data_dir=data_dir, log_level="info")
    messages = expected("durable")
    offsets = confluent_produce(server, "durable", messages[:10])
    offsets += confluent_produce(server, "durable", messages[10:], **{"compression.type": "lz4"})
    server.kill()  # SIGKILL: no shutdown, no flush
    restarted = polystream_server("kafka", data_dir=data_dir, log_level="info")
    got = confluent_consume(restarted, "durable", N)
    assert {offset: (k, v) for offset, k, v in got} == dict(zip(offsets, messages, strict=True))
    # and the log continues after the recovered offsets
    assert confluent_produce(restarted, "durable", [(b"k", b"after restart")]) == [N]


# -- bad input ---------------------------------------------------------------------------------


async def open_client(server: ServerProcess) -> WireClient:
    host, port = server.address("kafka")
    return WireClient(await trio.open_tcp_stream(host, port))


async def test_bad_frames_close_only_their_connection(polystream_server: ServerFactory) -> None:
    server = await polystream_server.start_async(
        "kafka", config="[handlers.kafka]\nmax_request_bytes = 65536\n")
    with trio.fail_after(CLIENT_TIMEOUT_S):
        good = await open_client(server)
        created = await good.call(ApiKey.Metadata, 8, metadata_body(["safe"]))
        assert created.topics[0].error_code == 0
        for bad in [
            (100_000).to_bytes(4, "big") + b"\xff" * 64,  # size prefix over the limit
            (64).to_bytes(4, "big") + b"\x7f\x7f" + bytes(range(62)),  # a garbage body
        ]:
            client = await open_client(server)
            await client.stream.send_all(bad)
            assert await client.read_frame() is None  # closed by the server
            await client.stream.aclose()
        produced = await good.call(ApiKey.Produce, 7, produce_body("safe", {0: batch(b"ok")}), 2)
        assert [(p.error_code, p.base_offset) for p in partitions_of(produced)] == [(0, 0)]
        fetched = await good.call(ApiKey.Fetch, 11, fetch_body([("safe", 0, 0)]), 3)
        assert records_of(partitions_of(fetched)[0].records) == [(0, b"ok")]
        await good.stream.aclose()
    log = server.log_text()
    assert "invalid request frame size 100000" in log
    assert "unsupported api key 32639" in log
    assert log.count("closing connection") == 2


async def test_corrupt_batch_is_refused_and_not_stored(polystream_server: ServerFactory) -> None:
    server = await polystream_server.start_async("kafka")
    corrupt = bytearray(batch(b"one", b"two"))
    corrupt[-2] ^= 0x55  # inside the CRC-covered records
    with trio.fail_after(CLIENT_TIMEOUT_S):
        client = await open_client(server)
        response = await client.call(ApiKey.Produce, 7, produce_body("crc", {0: bytes(corrupt)}))
        assert [p.error_code for p in partitions_of(response)] == [ErrorCode.CORRUPT_MESSAGE]
        latest = await client.call(ApiKey.ListOffsets, 5, list_offsets_body("crc", {0: -1}), 2)
        assert [p.offset for p in partitions_of(latest)] == [0]
        # the connection is still good, and the next batch gets offset 0
        response = await client.call(ApiKey.Produce, 7, produce_body("crc", {0: batch(b"ok")}),
                                     3)
        assert [(p.error_code, p.base_offset) for p in partitions_of(response)] == [(0, 0)]
        await client.stream.aclose()


async def test_sigterm_answers_the_request_in_flight(polystream_server: ServerFactory) -> None:
    server = await polystream_server.start_async("kafka")
    with trio.fail_after(CLIENT_TIMEOUT_S):
        client = await open_client(server)
        await client.call(ApiKey.Metadata, 8, metadata_body(["idle"]))
        await client.send(make_request(ApiKey.Fetch, 11, fetch_body(
            [("idle", 0, 0)], max_wait_ms=600_000), correlation_id=9))
        await trio.to_thread.run_sync(server.wait_for_log, "fetch: long poll on 1 partition")
        server.signal(signal.SIGTERM)
        payload = await client.read_frame()  # the long poll ends early, with its answer
        assert payload is not None
        corr, fetched = decode_response(ApiKey.Fetch, 11, payload)
        assert (corr, partitions_of(fetched)[0].error_code) == (9, 0)
        assert await client.read_frame() is None
        assert await trio.to_thread.run_sync(server.wait) == 0
