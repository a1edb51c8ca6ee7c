"""End to end: Kafka transactions (exactly-once) with real clients against ``polystream serve``.

* confluent-kafka (librdkafka): a transactional read-process-write loop -- a consumer in a group
  with ``isolation.level=read_committed`` and no auto-commit, a producer with a
  ``transactional.id`` -- that commits most chunks and aborts some (rewinding to the committed
  offsets afterwards); a read_committed consumer of the output then sees every input record
  transformed exactly once and nothing of the aborted transactions, while a read_uncommitted
  consumer does see the aborted records.
* A zombie: a second producer with the same ``transactional.id`` fences the first.
* aiokafka's transactional producer commits and aborts; a read_committed aiokafka consumer sees
  only the committed records.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import confluent_kafka as ck
import pytest
from conftest import ServerFactory, ServerProcess

pytestmark = pytest.mark.slow

N = 60
CHUNK = 7
CLIENT_TIMEOUT_S = 30.0
FAST_GROUP = {"session.timeout.ms": 6000, "heartbeat.interval.ms": 200,
              "max.poll.interval.ms": 20000, "auto.offset.reset": "earliest",
              "enable.auto.commit": False}
CONFIG = "[handlers.kafka]\nnum_partitions = 2\n"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    factory = ServerFactory(tmp_path_factory.mktemp("kafka-txn-e2e"))
    try:
        yield factory("kafka", config=CONFIG, log_level="info")
    finally:
        factory.close()


def bootstrap(server: ServerProcess) -> str:
    host, port = server.address("kafka")
    return f"{host}:{port}"


def fill(server: ServerProcess, topic: str, count: int) -> None:
    """``count`` plain records ``in-<i>`` spread over the topic's partitions."""
    producer = ck.Producer({"bootstrap.servers": bootstrap(server), "linger.ms": 5})
    for i in range(count):
        producer.produce(topic, f"in-{i}".encode(), key=f"k{i}".encode())
    assert producer.flush(CLIENT_TIMEOUT_S) == 0


def read_all(server: ServerProcess, topic: str, isolation: str, expect_at_least: int,
             settle_s: float = 1.5) -> list[str]:
    """Every value of ``topic`` as a fresh consumer with ``isolation`` sees it."""
    c = ck.Consumer({"bootstrap.servers": bootstrap(server), "group.id": f"check-{isolation}",
                     "isolation.level": isolation, **FAST_GROUP})
    c.subscribe([topic])
    values: list[str] = []
    deadline = time.monotonic() + CLIENT_TIMEOUT_S
    quiet_until = None
    try:
        while time.monotonic() < deadline:
            msg = c.poll(0.2)
            if msg is None:
                if len(values) >= expect_at_least:
                    quiet_until = quiet_until or time.monotonic() + settle_s
                    if time.monotonic() > quiet_until:
                        break
                continue
            assert msg.error() is None, msg.error()
            values.append((msg.value() or b"").decode())
            quiet_until = None
    finally:
        c.close()
    return values


def rewind(c: ck.Consumer) -> None:
    """Seek every assigned partition back to the group's committed offset."""
    for tp in c.committed(c.assignment(), timeout=CLIENT_TIMEOUT_S):
        offset = tp.offset if tp.offset >= 0 else ck.OFFSET_BEGINNING
        c.seek(ck.TopicPartition(tp.topic, tp.partition, offset))


def test_confluent_read_process_write_is_exactly_once(server: ServerProcess) -> None:
    src, dst, group = "eos-in", "eos-out", "eos-app"
    fill(server, src, N)
    consumer = ck.Consumer({"bootstrap.servers": bootstrap(server), "group.id": group,
                            "isolation.level": "read_committed", **FAST_GROUP})
    producer = ck.Producer({"bootstrap.servers": bootstrap(server),
                            "transactional.id": "eos-transformer", "linger.ms": 5})
    producer.init_transactions(CLIENT_TIMEOUT_S)
    consumer.subscribe([src])
    done: set[str] = set()
    aborted: set[str] = set()
    iteration = 0
    deadline = time.monotonic() + 3 * CLIENT_TIMEOUT_S
    try:
        while len(done) < N and time.monotonic() < deadline:
            msgs = consumer.consume(num_messages=CHUNK, timeout=0.5)
            if not msgs:
                continue
            for msg in msgs:
                assert msg.error() is None, msg.error()
            iteration += 1
            producer.begin_transaction()
            values = [(msg.value() or b"").decode() for msg in msgs]
            for value in values:
                producer.produce(dst, f"{value}-out".encode())
            producer.send_offsets_to_transaction(
                consumer.position(consumer.assignment()), consumer.consumer_group_metadata(),
                CLIENT_TIMEOUT_S)
            if iteration % 3 == 2:
                assert producer.flush(CLIENT_TIMEOUT_S) == 0  # the aborted records are stored
                producer.abort_transaction(CLIENT_TIMEOUT_S)
                aborted.update(values)
                rewind(consumer)
            else:
                producer.commit_transaction(CLIENT_TIMEOUT_S)
                assert not done & set(values), "a committed record was processed twice"
                done.update(values)
    finally:
        consumer.close()
    assert done == {f"in-{i}" for i in range(N)}
    assert aborted, "no transaction was aborted"

    committed = read_all(server, dst, "read_committed", N)
    assert sorted(committed) == sorted(f"in-{i}-out" for i in range(N))  # exactly once
    uncommitted = read_all(server, dst, "read_uncommitted", N + len(aborted))
    assert len(uncommitted) == N + len(aborted)
    assert {v.removesuffix("-out") for v in uncommitted} == done
    # the group's committed offsets are at the end of the input
    check = ck.Consumer({"bootstrap.servers": bootstrap(server), "group.id": group,
                         **FAST_GROUP})
    try:
        parts = [ck.TopicPartition(src, p) for p in range(2)]
        offsets = check.committed(parts, timeout=CLIENT_TIMEOUT_S)
        highs = [check.get_watermark_offsets(tp, timeout=CLIENT_TIMEOUT_S)[1] for tp in parts]
    finally:
        check.close()
    assert [tp.offset for tp in offsets] == highs and sum(highs) == N


def test_confluent_zombie_is_fenced(server: ServerProcess) -> None:
    topic = "zombie-out"
    config = {"bootstrap.servers": bootstrap(server), "transactional.id": "zombie-app"}
    zombie = ck.Producer(config)
    zombie.init_transactions(CLIENT_TIMEOUT_S)
    zombie.begin_transaction()
    zombie.produce(topic, b"from-zombie")
    zombie.flush(CLIENT_TIMEOUT_S)
    successor = ck.Producer(config)
    successor.init_transactions(CLIENT_TIMEOUT_S)  # aborts the zombie's transaction
    with pytest.raises(ck.KafkaException) as caught:
        zombie.produce(topic, b"late")
        zombie.commit_transaction(CLIENT_TIMEOUT_S)
    error: ck.KafkaError = caught.value.args[0]
    assert error.fatal() or error.code() in (ck.KafkaError.PRODUCER_FENCED,
                                             ck.KafkaError.INVALID_PRODUCER_EPOCH), error
    successor.begin_transaction()
    successor.produce(topic, b"from-successor")
    successor.commit_transaction(CLIENT_TIMEOUT_S)
    assert read_all(server, topic, "read_committed", 1) == ["from-successor"]


def test_aiokafka_transactional_producer(server: ServerProcess) -> None:
    import aiokafka  # type: ignore[import-untyped]

    topic = "aiokafka-txn"

    async def main() -> list[bytes]:
        producer = aiokafka.AIOKafkaProducer(bootstrap_servers=bootstrap(server),
                                             transactional_id="aio-app")
        await producer.start()
        try:
            async with producer.transaction():
                for i in range(3):
                    await producer.send(topic, f"kept-{i}".encode(), partition=0)
            await producer.begin_transaction()
            await producer.send_and_wait(topic, b"dropped", partition=0)
            await producer.abort_transaction()
            await producer.begin_transaction()
            await producer.send_and_wait(topic, b"kept-3", partition=0)
            await producer.commit_transaction()
        finally:
            await producer.stop()
        consumer = aiokafka.AIOKafkaConsumer(
            bootstrap_servers=bootstrap(server), isolation_level="read_committed",
            auto_offset_reset="earliest", enable_auto_commit=False)
        await consumer.start()
        try:
            tp = aiokafka.TopicPartition(topic, 0)
            consumer.assign([tp])
            end = (await consumer.end_offsets([tp]))[tp]
            values: list[bytes] = []
            while await consumer.position(tp) < end:
                batch = await consumer.getmany(tp, timeout_ms=500)
                values += [m.value for m in batch.get(tp, [])]
            return values
        finally:
            await consumer.stop()

    values = asyncio.run(asyncio.wait_for(main(), 3 * CLIENT_TIMEOUT_S))
    assert values == [b"kept-0", b"kept-1", b"kept-2", b"kept-3"]

