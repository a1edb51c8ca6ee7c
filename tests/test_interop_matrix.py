"""Cross-protocol interop: every producer protocol by every consumer protocol, real clients.

Producers and consumers: confluent-kafka, pika and paho-mqtt (MQTT 5).  One server runs the
three listeners for the whole module; every (producer, consumer) pair gets its own core topic
``T`` (= Kafka topic ``T`` = AMQP exchange ``T`` = MQTT topics ``T/…``), created first, then
the consumer attaches (an AMQP queue bound to exchange ``T`` with ``#``, an MQTT ``T/#``
subscription, a Kafka assignment from the beginning), then the producer sends one batch:

* a binary payload (every byte value) with headers: non-UTF-8 values, repeated names, content
  type and correlation id — each in the producer's own dialect (Kafka headers, an AMQP table
  with a nested table and array, MQTT 5 user properties, correlation data, content type);
* an empty payload; a 1 MiB payload;
* a run of small messages on two keys, to check per-key order.

AMQP consumers also get a second queue bound with exactly the ``k1`` record key (routing by
record key under the exchange's type), and every consumer must see nothing after the batch
(delivered once).  Compressed Kafka batches (gzip, snappy, lz4, zstd) are checked separately.

What each consumer must see is written out case by case from the README section
"Message mapping between Kafka, AMQP 0-9-1 and MQTT";
:func:`test_readme_documents_what_targets_cannot_express` cross-checks that the README
states the losses these expectations rely on.
"""

from __future__ import annotations

import base64
import json
import queue
import re
import time
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import confluent_kafka as ck
import paho.mqtt.client as paho
import pika
import pytest
from confluent_kafka.admin import AdminClient, NewTopic
from conftest import ROOT, ServerFactory, ServerProcess
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties as PahoProperties

from core import headers as h

pytestmark = pytest.mark.slow

TIMEOUT_S = 20.0
MIB = 1024 * 1024
BIG = bytes(range(251)) * (MIB // 251) + bytes(MIB % 251)
BINARY = bytes(range(256))
NOT_UTF8 = b"\xff\x00\xfe"
KAFKA_TS = 1_600_000_000_123
ORDER_KEYS = ("k1", "k2")
ORDER_N = 8
CONFIG = """
[core]
max_message_bytes = 4194304

[handlers.mqtt]
topic_scan_interval = 0.2
"""

PROTOCOLS = ("kafka", "amqp", "mqtt")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """One server with all three listeners for the whole matrix."""
    factory = ServerFactory(tmp_path_factory.mktemp("interop"))
    try:
        yield factory("kafka", "amqp", "mqtt", config=CONFIG, log_level="info")
    finally:
        factory.close()


def bootstrap(server: ServerProcess) -> str:
    host, port = server.address("kafka")
    return f"{host}:{port}"


def b64(value: bytes) -> str:
    return base64.b64encode(value).decode("ascii")


def grouped(pairs: list[tuple[str, Any]]) -> dict[str, list[Any]]:
    """Values by name, in order: what survives a hop through an (unordered) AMQP table."""
    out: dict[str, list[Any]] = defaultdict(list)
    for name, value in pairs:
        out[name].append(value)
    return dict(out)


# --- what the consumers see -----------------------------------------------------------------


@dataclass
class Seen:
    """One delivery, as the consuming client reported it (protocol-specific fields optional)."""

    key: bytes | None
    value: bytes
    headers: list[tuple[str, Any]] = field(default_factory=list)
    timestamp_ms: int | None = None
    props: dict[str, Any] = field(default_factory=dict)


class KafkaReader:
    """Reads partition 0 of ``topic`` from the beginning."""

    def __init__(self, server: ServerProcess, topic: str) -> None:
        self.consumer = ck.Consumer({
            "bootstrap.servers": bootstrap(server), "group.id": f"ix-{topic}",
            "enable.auto.commit": False, "fetch.max.bytes": 8 * MIB,
            "max.partition.fetch.bytes": 8 * MIB, "receive.message.max.bytes": 16 * MIB,
        })
        self.consumer.assign([ck.TopicPartition(topic, 0, ck.OFFSET_BEGINNING)])

    def read(self, count: int, timeout: float = TIMEOUT_S) -> list[Seen]:
        seen: list[Seen] = []
        deadline = time.monotonic() + timeout
        while len(seen) < count and time.monotonic() < deadline:
            msg = self.consumer.poll(0.5)
            if msg is None:
                continue
            assert msg.error() is None, msg.error()
            ts_type, ts = msg.timestamp()
            assert ts_type == ck.TIMESTAMP_CREATE_TIME
            raw = msg.headers() or []
            pairs = list(raw.items()) if isinstance(raw, dict) else list(raw)
            seen.append(Seen(msg.key(), msg.value() or b"", pairs, ts))
        return seen

    def close(self) -> None:
        self.consumer.close()


class AmqpReader:
    """A queue bound to exchange ``topic`` (type topic) with ``#``, read with basic.get.

    A second queue, :attr:`filtered`, is bound with exactly the record key ``key``: routing by
    the record key under the exchange's type.
    """

    def __init__(self, server: ServerProcess, topic: str, key: bytes) -> None:
        host, port = server.address("amqp")
        self.conn = pika.BlockingConnection(pika.ConnectionParameters(host, port))
        self.channel = self.conn.channel()
        self.channel.exchange_declare(topic, "topic", durable=True)
        self.queue = f"ix-q-{topic}"
        self.channel.queue_declare(self.queue, exclusive=True)
        self.channel.queue_bind(self.queue, topic, "#")
        self.filtered = f"ix-q-{topic}-key"
        self.channel.queue_declare(self.filtered, exclusive=True)
        self.channel.queue_bind(self.filtered, topic, key.decode())

    def read(self, count: int, timeout: float = TIMEOUT_S, queue: str | None = None
             ) -> list[Seen]:
        seen: list[Seen] = []
        deadline = time.monotonic() + timeout
        while len(seen) < count and time.monotonic() < deadline:
            method, props, body = self.channel.basic_get(queue or self.queue, auto_ack=True)
            if method is None:
                self.conn.sleep(0.05)
                continue
            table = props.headers
            seen.append(Seen(
                method.routing_key.encode(), body,
                sorted((table or {}).items()), None,
                {"content_type": props.content_type, "correlation_id": props.correlation_id,
                 "reply_to": props.reply_to, "timestamp": props.timestamp,
                 "table": table},
            ))
        return seen

    def close(self) -> None:
        self.conn.close()


class MqttClient:
    """A paho MQTT 5 client; received messages land in a bounded queue."""

    def __init__(self, server: ServerProcess, client_id: str) -> None:
        self.messages: queue.Queue[paho.MQTTMessage] = queue.Queue(maxsize=1000)
        connected: queue.Queue[Any] = queue.Queue(maxsize=1)
        self.client = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id=client_id,
                                  protocol=paho.MQTTv5)
        self.client.username_pw_set("guest", "guest")
        self.client.on_message = lambda c, u, m: self.messages.put(m)
        self.client.on_connect = lambda c, u, f, rc, p: connected.put(rc)
        host, port = server.address("mqtt")
        self.client.connect(host, port)
        self.client.loop_start()
        rc = connected.get(timeout=TIMEOUT_S)
        assert not rc.is_failure, rc

    def subscribe(self, topic_filter: str) -> None:
        done: queue.Queue[Any] = queue.Queue(maxsize=1)
        self.client.on_subscribe = lambda c, u, mid, codes, p: done.put(codes)
        self.client.subscribe(topic_filter, 1)
        codes = done.get(timeout=TIMEOUT_S)
        assert all(not c.is_failure for c in codes), codes

    def publish(self, topic: str, payload: bytes, props: PahoProperties | None = None) -> None:
        info = self.client.publish(topic, payload, 1, False, props)
        info.wait_for_publish(TIMEOUT_S)
        assert info.is_published()

    def read(self, count: int, timeout: float = TIMEOUT_S) -> list[Seen]:
        seen: list[Seen] = []
        deadline = time.monotonic() + timeout
        while len(seen) < count and (left := deadline - time.monotonic()) > 0:
            try:
                m = self.messages.get(timeout=left)
            except queue.Empty:
                break
            p = m.properties
            seen.append(Seen(
                m.topic.encode(), bytes(m.payload), list(getattr(p, "UserProperty", [])), None,
                {"content_type": getattr(p, "ContentType", None),
                 "correlation_data": getattr(p, "CorrelationData", None),
                 "response_topic": getattr(p, "ResponseTopic", None), "qos": m.qos,
                 "retain": m.retain},
            ))
        return seen

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


class MqttReader(MqttClient):
    def __init__(self, server: ServerProcess, topic: str) -> None:
        super().__init__(server, f"ix-sub-{topic}")
        self.subscribe(f"{topic}/#")


Reader = KafkaReader | AmqpReader | MqttReader


def make_reader(consumer: str, producer: str, server: ServerProcess, topic: str) -> Reader:
    if consumer == "kafka":
        return KafkaReader(server, topic)
    if consumer == "amqp":
        return AmqpReader(server, topic, mqtt_key(producer, topic, "k1"))
    return MqttReader(server, topic)


# --- producers ------------------------------------------------------------------------------

AMQP_NESTED = {"n": 7, "neg": -70000, "flag": True, "list": [1, "two", False],
               "inner": {"deep": "x", "big": 2**40}}
AMQP_NESTED_JSON = json.dumps(AMQP_NESTED, separators=(",", ":")).encode()
MQTT_CORRELATION = b"\x00\xffcorr"  # binary: no AMQP correlation-id can hold it


def order_run() -> list[tuple[str, bytes]]:
    return [(ORDER_KEYS[i % 2], f"seq-{i}".encode()) for i in range(ORDER_N)]


def produce_kafka(server: ServerProcess, topic: str) -> None:
    producer = ck.Producer({"bootstrap.servers": bootstrap(server), "acks": "all",
                            "enable.idempotence": False, "message.max.bytes": 4 * MIB,
                            "linger.ms": 0})
    errors: list[Any] = []

    def send(key: str, value: bytes, headers: list[tuple[str, str | bytes | None]],
             ts: int) -> None:
        producer.produce(topic, value, key.encode(), partition=0, headers=headers,
                         timestamp=ts, on_delivery=lambda err, m: errors.append(err))
        # one in flight at a time: order is then what the broker got, whatever the client does
        assert producer.flush(TIMEOUT_S) == 0

    send("k1", BINARY, [("bin", NOT_UTF8), ("rep", b"a"), ("rep", b"b"),
                        (h.CONTENT_TYPE, b"application/x-test"),
                        (h.CORRELATION_ID, b"corr-1")], KAFKA_TS)
    send("k2", b"", [], KAFKA_TS + 1)
    send("k1", BIG, [("size", b"big")], KAFKA_TS + 2)
    for i, (key, value) in enumerate(order_run()):
        send(key, value, [], KAFKA_TS + 3 + i)
    assert errors == [None] * (3 + ORDER_N)


def produce_amqp(server: ServerProcess, topic: str) -> None:
    host, port = server.address("amqp")
    conn = pika.BlockingConnection(pika.ConnectionParameters(host, port))
    try:
        ch = conn.channel()
        ch.confirm_delivery()
        ch.exchange_declare(topic, "topic", durable=True)
        table = {"s": "text", "bin": NOT_UTF8, "nested": AMQP_NESTED,
                 "rep": ["a", "b"], h.AMQP_REPEATED: ["rep"]}
        ch.basic_publish(topic, "k1", BINARY, pika.BasicProperties(
            content_type="application/x-test", correlation_id="corr-1", reply_to="replies",
            headers=table))
        ch.basic_publish(topic, "k2", b"", pika.BasicProperties())
        ch.basic_publish(topic, "k1", BIG, pika.BasicProperties(headers={"size": "big"}))
        for key, value in order_run():
            ch.basic_publish(topic, key, value, pika.BasicProperties())
    finally:
        conn.close()


def produce_mqtt(server: ServerProcess, topic: str) -> None:
    client = MqttClient(server, f"ix-pub-{topic}")
    try:
        props = PahoProperties(PacketTypes.PUBLISH)
        props.ContentType = "application/x-test"
        props.CorrelationData = MQTT_CORRELATION
        props.ResponseTopic = f"{topic}/replies"
        props.UserProperty = [("rep", "a"), ("rep", "b"), ("u", "v"),
                              ("ps.b64:bin", b64(NOT_UTF8))]
        client.publish(f"{topic}/k1", BINARY, props)
        client.publish(f"{topic}/k2", b"")
        big = PahoProperties(PacketTypes.PUBLISH)
        big.UserProperty = [("size", "big")]
        client.publish(f"{topic}/k1", BIG, big)
        for key, value in order_run():
            client.publish(f"{topic}/{key}", value)
    finally:
        client.close()


PRODUCE = {"kafka": produce_kafka, "amqp": produce_amqp, "mqtt": produce_mqtt}


# --- expectations, from the README mapping ----------------------------------------------------


def mqtt_key(producer: str, topic: str, key: str) -> bytes:
    """The record key: MQTT publishes keep the full topic name."""
    return f"{topic}/{key}".encode() if producer == "mqtt" else key.encode()


def check_kafka(producer: str, topic: str, seen: list[Seen], t0: int, t1: int) -> None:
    first, empty, big = seen[:3]
    if producer == "kafka":  # Kafka clients see the record exactly as produced
        assert first.headers == [("bin", NOT_UTF8), ("rep", b"a"), ("rep", b"b"),
                                 (h.CONTENT_TYPE, b"application/x-test"),
                                 (h.CORRELATION_ID, b"corr-1")]
        assert [s.timestamp_ms for s in seen] == [KAFKA_TS + i for i in range(3 + ORDER_N)]
        assert empty.headers == []
    else:  # AMQP and MQTT publishes: stamped with the broker's receive time
        for s in seen:
            assert s.timestamp_ms is not None and t0 - 5 <= s.timestamp_ms <= t1 + 5
    if producer == "amqp":
        got = grouped(first.headers)
        typed = got.pop(h.AMQP_TYPED_HEADERS)
        assert len(typed) == 1 and typed[0]  # the exact copy of the non-string entries
        assert got == {
            h.CONTENT_TYPE: [b"application/x-test"], h.CORRELATION_ID: [b"corr-1"],
            h.REPLY_TO: [b"replies"], "s": [b"text"], "bin": [NOT_UTF8],
            "nested": [AMQP_NESTED_JSON], "rep": [b"a", b"b"],
        }
        assert empty.headers == []
        assert big.headers == [("size", b"big")]
    if producer == "mqtt":
        assert first.headers == [
            (h.MQTT_TOPIC, f"{topic}/k1".encode()), (h.MQTT_QOS, b"1"),
            (h.CONTENT_TYPE, b"application/x-test"), (h.CORRELATION_ID, MQTT_CORRELATION),
            (h.REPLY_TO, f"{topic}/replies".encode()),
            ("rep", b"a"), ("rep", b"b"), ("u", b"v"), ("bin", NOT_UTF8),
        ]
        assert empty.headers == [(h.MQTT_TOPIC, f"{topic}/k2".encode()), (h.MQTT_QOS, b"1")]
        assert big.headers[-1] == ("size", b"big")
    assert [s.key for s in seen[:3]] == [mqtt_key(producer, topic, k) for k in ("k1", "k2", "k1")]


def check_amqp(producer: str, topic: str, seen: list[Seen]) -> None:
    first, empty, big = seen[:3]
    assert [s.key for s in seen[:3]] == [mqtt_key(producer, topic, k) for k in ("k1", "k2", "k1")]
    for s in seen:
        assert s.props["timestamp"] is None  # only ps.amqp.timestamp gives one back
    p = first.props
    assert p["content_type"] == "application/x-test"
    table = dict(first.headers)
    if producer == "kafka":
        assert p["correlation_id"] == "corr-1"
        assert table == {"bin": NOT_UTF8, "rep": ["a", "b"], h.AMQP_REPEATED: ["rep"]}
    elif producer == "amqp":  # AMQP → AMQP restores the table exactly, nested values included
        assert (p["correlation_id"], p["reply_to"]) == ("corr-1", "replies")
        assert table == {"s": "text", "bin": NOT_UTF8, "nested": AMQP_NESTED,
                         "rep": ["a", "b"], h.AMQP_REPEATED: ["rep"]}
    else:
        # binary correlation data does not fit the shortstr: it stays a table entry
        assert p["correlation_id"] is None
        assert p["reply_to"] == f"{topic}/replies"
        assert table == {
            h.MQTT_TOPIC: f"{topic}/k1", h.MQTT_QOS: "1", h.CORRELATION_ID: MQTT_CORRELATION,
            "rep": ["a", "b"], h.AMQP_REPEATED: ["rep"], "u": "v", "bin": NOT_UTF8,
        }
    if producer == "mqtt":
        assert dict(empty.headers) == {h.MQTT_TOPIC: f"{topic}/k2", h.MQTT_QOS: "1"}
    else:
        assert empty.props["table"] is None  # no headers: no table at all
    assert dict(big.headers)["size"] == "big"


def mqtt_props(seen: Seen) -> list[tuple[str, bytes]]:
    """User properties with the README's ``ps.b64:`` escape undone (independent decoder)."""
    out = []
    for name, value in seen.headers:
        if name.startswith("ps.b64:"):
            out.append((name[len("ps.b64:"):], base64.b64decode(value, validate=True)))
        else:
            out.append((name, value.encode()))
    return out


def check_mqtt(producer: str, topic: str, seen: list[Seen]) -> None:
    first, empty, big = seen[:3]
    # delivery topic: ps.mqtt.topic for MQTT publishes, else <core topic>/<key>
    assert [s.key for s in seen[:3]] == [f"{topic}/{k}".encode() for k in ("k1", "k2", "k1")]
    for s in seen:
        assert s.props["qos"] == 1 and not s.props["retain"]
    p = first.props
    assert p["content_type"] == "application/x-test"
    props = mqtt_props(first)
    if producer == "kafka":
        assert p["correlation_data"] == b"corr-1"
        assert props == [("bin", NOT_UTF8), ("rep", b"a"), ("rep", b"b")]
        assert first.headers[0] == ("ps.b64:bin", b64(NOT_UTF8))
    elif producer == "amqp":
        assert (p["correlation_data"], p["response_topic"]) == (b"corr-1", "replies")
        got = grouped(props)
        typed = got.pop(h.AMQP_TYPED_HEADERS)  # carried along (base64) for a later AMQP hop
        assert len(typed) == 1
        assert got == {"s": [b"text"], "bin": [NOT_UTF8], "nested": [AMQP_NESTED_JSON],
                       "rep": [b"a", b"b"]}
    else:  # MQTT → MQTT: properties come back as sent, user properties in order
        assert (p["correlation_data"], p["response_topic"]) == (MQTT_CORRELATION,
                                                                f"{topic}/replies")
        assert first.headers == [("rep", "a"), ("rep", "b"), ("u", "v"),
                                 ("ps.b64:bin", b64(NOT_UTF8))]
    assert empty.headers == [] and empty.props["content_type"] is None
    assert ("size", b"big") in mqtt_props(big)


def check_common(seen: list[Seen], count: int) -> None:
    assert len(seen) == count, f"got {len(seen)} of {count} messages"
    assert [s.value for s in seen[:3]] == [BINARY, b"", BIG]
    by_key: dict[bytes | None, list[bytes]] = defaultdict(list)
    for s in seen[3:]:
        by_key[s.key].append(s.value)
    assert len(by_key) == 2
    for values in by_key.values():  # per-key order holds
        assert values == sorted(values, key=lambda v: int(v.split(b"-")[1]))
        assert len(values) == ORDER_N // 2


@pytest.mark.parametrize("consumer", PROTOCOLS)
@pytest.mark.parametrize("producer", PROTOCOLS)
def test_matrix(server: ServerProcess, producer: str, consumer: str) -> None:
    topic = f"ix-{producer}-to-{consumer}"
    admin = AdminClient({"bootstrap.servers": bootstrap(server)})
    for future in admin.create_topics([NewTopic(topic, 1)]).values():
        future.result(TIMEOUT_S)
    reader = make_reader(consumer, producer, server, topic)
    try:
        t0 = int(time.time() * 1000)
        PRODUCE[producer](server, topic)
        t1 = int(time.time() * 1000)
        count = 3 + ORDER_N
        seen = reader.read(count)
        check_common(seen, count)
        if consumer == "kafka":
            check_kafka(producer, topic, seen, t0, t1)
        elif consumer == "amqp":
            assert isinstance(reader, AmqpReader)
            check_amqp(producer, topic, seen)
            k1 = mqtt_key(producer, topic, "k1")
            routed = reader.read(2 + ORDER_N // 2, queue=reader.filtered)
            assert [s.key for s in routed] == [k1] * (2 + ORDER_N // 2)
            assert reader.read(1, timeout=0.3, queue=reader.filtered) == []
            assert [s.value for s in routed] == [s.value for s in seen if s.key == k1]
        else:
            check_mqtt(producer, topic, seen)
        assert reader.read(1, timeout=0.3) == []  # delivered once: nothing more comes
    finally:
        reader.close()


# --- the README states what a target cannot express ----------------------------------------


def readme_mapping_section() -> str:
    text = (ROOT / "README.md").read_text()
    start = text.index("### Message mapping between Kafka, AMQP 0-9-1 and MQTT")
    end = text.index("\n## ", start)
    return text[start:end]


def property_rows(section: str) -> dict[str, list[str]]:
    """Rows of the *Properties* table by record column (``ps.…`` name or meaning)."""
    rows: dict[str, list[str]] = {}
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) != 5 or cells[1] in ("record", "---"):
            continue
        name = re.sub(r"`([^`]*)`.*", r"\1", cells[1]) or cells[0]
        rows[name] = cells
    return rows


def test_readme_documents_what_targets_cannot_express() -> None:
    section = readme_mapping_section()
    flat = " ".join(section.split())
    rows = property_rows(section)
    gateway = {v for k, v in vars(h).items() if k.isupper() and isinstance(v, str)
               and v.startswith("ps.") and v != h.PREFIX}
    # internal names: never record headers (ps.key, ps.amqp.repeated) or core-only
    internal = {h.KEY, h.AMQP_REPEATED, h.DELIVER_AT_MS}
    assert gateway - internal <= set(rows), gateway - internal - set(rows)
    for name in gateway - internal:
        if name.startswith("ps.amqp."):
            assert "user property" in rows[name][3], name  # MQTT 5 has no such property
        assert rows[name][4] in ("dropped", "topic name", "same", "same as MQTT 5"), name
    # the losses the matrix above relies on are written down
    assert "the order between different header names" in flat
    assert "an empty `headers` table (delivered as no table)" in flat
    assert "if the value fits that property" in flat  # binary correlation data → entry
    assert "`ps.b64:<name>`" in flat  # non-UTF-8 user property values
    assert "It is never the AMQP `timestamp` property" in flat
    assert "broker receive time" in rows["timestamp"][2]
    assert "broker receive time" in rows["timestamp"][3]


@pytest.mark.parametrize("codec", ["gzip", "snappy", "lz4", "zstd"])
def test_compressed_kafka_batches_reach_amqp_and_mqtt(server: ServerProcess, codec: str) -> None:
    """A compressed Kafka batch is stored as received; AMQP and MQTT get every record of it."""
    topic = f"ix-compressed-{codec}"
    admin = AdminClient({"bootstrap.servers": bootstrap(server)})
    for future in admin.create_topics([NewTopic(topic, 1)]).values():
        future.result(TIMEOUT_S)
    amqp, mqtt = AmqpReader(server, topic, b"k1"), MqttReader(server, topic)
    try:
        producer = ck.Producer({"bootstrap.servers": bootstrap(server), "linger.ms": 50,
                                "compression.type": codec, "enable.idempotence": False})
        sent = [(ORDER_KEYS[i % 2], f"{codec}-{i}-".encode() * 40) for i in range(10)]
        for key, value in sent:
            producer.produce(topic, value, key.encode(), partition=0, headers=[("h", b"v")])
        assert producer.flush(TIMEOUT_S) == 0
        for reader in (amqp, mqtt):
            seen = reader.read(len(sent))
            assert [s.value for s in seen] == [v for _, v in sent]
            assert all(("h", "v") in s.headers for s in seen)
    finally:
        amqp.close()
        mqtt.close()
