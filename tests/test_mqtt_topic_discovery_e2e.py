"""End to end: MQTT wildcard subscribers and topics that Kafka and AMQP producers create later.

Real clients against ``polystream serve`` on loopback: paho-mqtt 2.x subscribes ``+/x`` or
``#``; then confluent-kafka (auto-creating the topic) or pika (declaring an exchange) creates a
new core topic and writes at once.  Every message must reach the subscriber -- also those
written before the broker noticed the topic -- and a persistent session that was offline while
the topic was created must get them when it comes back.  The fallback rescan is set to an hour,
so what finds the topics is the core's "topic created" notification.
"""

from __future__ import annotations

import queue
import time
from collections.abc import Iterator
from typing import Any

import confluent_kafka as ck
import paho.mqtt.client as paho
import pika
import pytest
from conftest import ServerFactory, ServerProcess
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties as PahoProperties

pytestmark = pytest.mark.slow

TIMEOUT_S = 20.0
CONFIG = """
[handlers.mqtt]
topic_scan_interval = 3600.0
"""


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    factory = ServerFactory(tmp_path_factory.mktemp("mqtt-discovery"))
    try:
        yield factory("mqtt", "kafka", "amqp", config=CONFIG, log_level="info")
    finally:
        factory.close()


class Subscriber:
    """A paho client (guest/guest) whose messages land in a queue."""

    def __init__(self, server: ServerProcess, client_id: str, protocol: int, *,
                 clean: bool = True) -> None:
        self.messages: queue.Queue[paho.MQTTMessage] = queue.Queue()
        connected: queue.Queue[tuple[Any, Any]] = queue.Queue()
        v5 = protocol == paho.MQTTv5
        self.client = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id=client_id,
                                  protocol=protocol, clean_session=None if v5 else clean)
        self.client.username_pw_set("guest", "guest")
        self.client.on_message = lambda c, u, m: self.messages.put(m)
        self.client.on_connect = lambda c, u, f, rc, p: connected.put((f, rc))
        host, port = server.address("mqtt")
        if v5:
            props = PahoProperties(PacketTypes.CONNECT)
            props.SessionExpiryInterval = 300
            self.client.connect(host, port, clean_start=clean, properties=props)
        else:
            self.client.connect(host, port)
        self.client.loop_start()
        flags, rc = connected.get(timeout=TIMEOUT_S)
        assert not rc.is_failure, rc
        self.session_present = bool(flags.session_present)

    def subscribe(self, topic_filter: str) -> None:
        done: queue.Queue[Any] = queue.Queue()
        self.client.on_subscribe = lambda c, u, mid, codes, p: done.put(codes)
        self.client.subscribe(topic_filter, 1)
        codes = done.get(timeout=TIMEOUT_S)
        assert all(not c.is_failure for c in codes), codes

    def take(self, topic: str, count: int) -> list[tuple[bytes, int]]:
        """The next ``count`` messages on MQTT topic ``topic`` as (payload, QoS); others skipped
        (the server is shared by the module's tests)."""
        out: list[tuple[bytes, int]] = []
        deadline = time.monotonic() + TIMEOUT_S
        while len(out) < count:
            msg = self.messages.get(timeout=max(0.01, deadline - time.monotonic()))
            if msg.topic == topic:
                out.append((msg.payload, msg.qos))
        return out

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def kafka_write(server: ServerProcess, topic: str, values: list[bytes]) -> None:
    """Produce to a topic that does not exist yet (auto-created), key ``x``."""
    host, port = server.address("kafka")
    producer = ck.Producer({"bootstrap.servers": f"{host}:{port}", "linger.ms": 0,
                            "enable.idempotence": False})
    errors: list[Any] = []
    for value in values:
        producer.produce(topic, value, b"x",
                         on_delivery=lambda err, msg: errors.append(err) if err else None)
    assert producer.flush(TIMEOUT_S) == 0
    assert not errors, errors


def amqp_write(server: ServerProcess, exchange: str, values: list[bytes]) -> None:
    """Declare a new exchange (a new core topic) and publish to it at once, routing key ``x``."""
    host, port = server.address("amqp")
    conn = pika.BlockingConnection(pika.ConnectionParameters(host, port))
    try:
        channel = conn.channel()
        channel.confirm_delivery()
        channel.exchange_declare(exchange, "topic", durable=True)
        for value in values:
            channel.basic_publish(exchange, "x", value,
                                  pika.BasicProperties(delivery_mode=2), mandatory=False)
    finally:
        conn.close()


VALUES = [b"m%d" % i for i in range(5)]


@pytest.mark.parametrize("topic_filter", ["+/x", "#"])
def test_kafka_producer_creates_a_topic_a_wildcard_subscriber_reads(
    server: ServerProcess, topic_filter: str
) -> None:
    topic = "kafka-new-" + ("plus" if topic_filter == "+/x" else "hash")
    sub = Subscriber(server, f"live-{topic}", paho.MQTTv5)
    try:
        sub.subscribe(topic_filter)
        kafka_write(server, topic, VALUES)
        assert sub.take(f"{topic}/x", len(VALUES)) == [(v, 1) for v in VALUES]
    finally:
        sub.close()


def test_amqp_exchange_declared_later_is_read_by_a_wildcard_subscriber(
    server: ServerProcess,
) -> None:
    sub = Subscriber(server, "live-amqp", paho.MQTTv311)
    try:
        sub.subscribe("+/x")
        amqp_write(server, "amqp-new", VALUES)
        assert sub.take("amqp-new/x", len(VALUES)) == [(v, 1) for v in VALUES]
    finally:
        sub.close()


@pytest.mark.parametrize("protocol", [paho.MQTTv5, paho.MQTTv311], ids=["5", "311"])
def test_offline_persistent_session_gets_a_topic_created_while_away(
    server: ServerProcess, protocol: int
) -> None:
    client_id = f"away-{protocol}"
    topic = f"made-while-away-{protocol}"
    sub = Subscriber(server, client_id, protocol, clean=False)
    sub.subscribe("#")
    sub.close()
    time.sleep(0.2)  # the server ends the session's connection (DISCONNECT was sent)
    kafka_write(server, topic, VALUES)
    sub = Subscriber(server, client_id, protocol, clean=False)
    try:
        assert sub.session_present
        assert sub.take(f"{topic}/x", len(VALUES)) == [(v, 1) for v in VALUES]
    finally:
        sub.close()
