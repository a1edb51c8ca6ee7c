"""Kafka transactions seen from AMQP and MQTT: aborted records never arrive, committed ones once.

A confluent-kafka transactional producer writes to core topic ``T`` in three transactions —
aborted, committed, aborted — followed by a committed end marker.  An AMQP queue bound to
exchange ``T``, an MQTT 5 ``T/#`` subscriber and (as the reference) a ``read_committed``
Kafka consumer must each receive exactly the committed records and the marker, in order, once.
"""

from __future__ import annotations

import queue
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import confluent_kafka as ck
import paho.mqtt.client as paho
import pika
import pytest
from confluent_kafka.admin import AdminClient, NewTopic
from conftest import ServerFactory, ServerProcess

pytestmark = pytest.mark.slow

TIMEOUT_S = 20.0
TOPIC = "ix-txn"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    factory = ServerFactory(tmp_path_factory.mktemp("interop-txn"))
    try:
        yield factory("kafka", "amqp", "mqtt", log_level="info")
    finally:
        factory.close()


def bootstrap(server: ServerProcess) -> str:
    host, port = server.address("kafka")
    return f"{host}:{port}"


def transactional_run(server: ServerProcess) -> list[bytes]:
    """Abort, commit, abort, commit a marker; return the values that were committed."""
    producer = ck.Producer({"bootstrap.servers": bootstrap(server),
                            "transactional.id": "ix-txn-producer",
                            "transaction.timeout.ms": 60000})
    producer.init_transactions(TIMEOUT_S)
    committed: list[bytes] = []
    for name, commit in (("a1", False), ("c1", True), ("a2", False), ("end", True)):
        producer.begin_transaction()
        values = [f"{name}-{i}".encode() for i in range(1 if name == "end" else 3)]
        for value in values:
            producer.produce(TOPIC, value, b"k", partition=0)
        producer.flush(TIMEOUT_S)  # the records are in the log before the outcome is decided
        if commit:
            producer.commit_transaction(TIMEOUT_S)
            committed += values
        else:
            producer.abort_transaction(TIMEOUT_S)
    return committed


class MqttSubscriber:
    def __init__(self, server: ServerProcess) -> None:
        self.messages: queue.Queue[paho.MQTTMessage] = queue.Queue(maxsize=100)
        ready: queue.Queue[Any] = queue.Queue(maxsize=2)
        self.client = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id="ix-txn-sub",
                                  protocol=paho.MQTTv5)
        self.client.username_pw_set("guest", "guest")
        self.client.on_message = lambda c, u, m: self.messages.put(m)
        self.client.on_connect = lambda c, u, f, rc, p: ready.put(rc)
        self.client.on_subscribe = lambda c, u, mid, codes, p: ready.put(codes[0])
        host, port = server.address("mqtt")
        self.client.connect(host, port)
        self.client.loop_start()
        assert not ready.get(timeout=TIMEOUT_S).is_failure
        self.client.subscribe(f"{TOPIC}/#", 1)
        assert not ready.get(timeout=TIMEOUT_S).is_failure

    def read(self, count: int, timeout: float = TIMEOUT_S) -> list[bytes]:
        out: list[bytes] = []
        deadline = time.monotonic() + timeout
        while len(out) < count and (left := deadline - time.monotonic()) > 0:
            try:
                out.append(bytes(self.messages.get(timeout=left).payload))
            except queue.Empty:
                break
        return out

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


class AmqpQueue:
    def __init__(self, server: ServerProcess) -> None:
        host, port = server.address("amqp")
        self.conn = pika.BlockingConnection(pika.ConnectionParameters(host, port))
        self.channel = self.conn.channel()
        self.channel.exchange_declare(TOPIC, "topic", durable=True)
        self.channel.queue_declare("ix-txn-q", exclusive=True)
        self.channel.queue_bind("ix-txn-q", TOPIC, "#")

    def read(self, count: int, timeout: float = TIMEOUT_S) -> list[bytes]:
        out: list[bytes] = []
        deadline = time.monotonic() + timeout
        while len(out) < count and time.monotonic() < deadline:
            method, _, body = self.channel.basic_get("ix-txn-q", auto_ack=True)
            if method is None:
                self.conn.sleep(0.05)
            else:
                out.append(body)
        return out

    def close(self) -> None:
        self.conn.close()


def read_committed(server: ServerProcess, count: int) -> list[bytes]:
    consumer = ck.Consumer({"bootstrap.servers": bootstrap(server), "group.id": "ix-txn",
                            "isolation.level": "read_committed", "enable.auto.commit": False})
    consumer.assign([ck.TopicPartition(TOPIC, 0, ck.OFFSET_BEGINNING)])
    out: list[bytes] = []
    try:
        deadline = time.monotonic() + TIMEOUT_S
        while len(out) < count and time.monotonic() < deadline:
            msg = consumer.poll(0.5)
            if msg is not None:
                assert msg.error() is None, msg.error()
                out.append(msg.value() or b"")
    finally:
        consumer.close()
    return out


@dataclass
class Run:
    """The transactional run, with the AMQP queue and MQTT subscriber that watched it."""

    committed: list[bytes]
    amqp: AmqpQueue
    mqtt: MqttSubscriber


@pytest.fixture(scope="module")
def run(server: ServerProcess) -> Iterator[Run]:
    admin = AdminClient({"bootstrap.servers": bootstrap(server)})
    for future in admin.create_topics([NewTopic(TOPIC, 1)]).values():
        future.result(TIMEOUT_S)
    amqp = AmqpQueue(server)
    mqtt = MqttSubscriber(server)
    try:
        yield Run(transactional_run(server), amqp, mqtt)
    finally:
        amqp.close()
        mqtt.close()


COMMITTED = [b"c1-0", b"c1-1", b"c1-2", b"end-0"]


def test_committed_values(run: Run) -> None:
    assert run.committed == COMMITTED


def test_amqp_queue_gets_committed_records_once(run: Run) -> None:
    assert run.amqp.read(len(COMMITTED)) == COMMITTED
    assert run.amqp.read(1, timeout=0.5) == []  # no aborted record, no duplicate


def test_mqtt_subscriber_gets_committed_records_once(run: Run) -> None:
    assert run.mqtt.read(len(COMMITTED)) == COMMITTED
    assert run.mqtt.read(1, timeout=0.5) == []  # no aborted record, no duplicate


def test_kafka_read_committed_reference(server: ServerProcess, run: Run) -> None:
    assert read_committed(server, len(COMMITTED)) == COMMITTED
