"""End to end: real MQTT clients against ``polystream serve`` on loopback.

Clients: paho-mqtt 2.x (MQTTv311 and MQTTv5), aiomqtt, Debian's ``mosquitto_pub`` /
``mosquitto_sub``, and for the cross-protocol check confluent-kafka.  Clients log in as
guest/guest (allowed from loopback).  Raw-socket checks use the project's codec.
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import socket
import subprocess
import time
from collections.abc import Iterator
from typing import Any

import confluent_kafka as ck
import paho.mqtt.client as paho
import pytest
from conftest import ServerFactory, ServerProcess
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties as PahoProperties
from paho.mqtt.subscribeoptions import SubscribeOptions
from tools import require_tool

from handlers.mqtt import MQTT_5, Connect, Disconnect, PacketReader, ReasonCode, Role, encode

pytestmark = pytest.mark.slow

TIMEOUT_S = 20.0
V311, V5 = paho.MQTTv311, paho.MQTTv5


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """One server (MQTT and Kafka) for the tests that do not restart it."""
    factory = ServerFactory(tmp_path_factory.mktemp("mqtt-e2e"))
    try:
        yield factory("mqtt", "kafka", log_level="info")
    finally:
        factory.close()


class Client:
    """A paho client whose received messages land in a queue."""

    def __init__(self, server: ServerProcess, client_id: str, protocol: int = V5, *,
                 clean: bool = True, expiry: int | None = None,
                 will: tuple[str, bytes, int, bool] | None = None, keepalive: int = 60) -> None:
        self.messages: queue.Queue[paho.MQTTMessage] = queue.Queue()
        self.connected: queue.Queue[tuple[Any, Any]] = queue.Queue()
        self.client = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id=client_id,
                                  protocol=protocol,
                                  clean_session=None if protocol == V5 else clean)
        self.client.username_pw_set("guest", "guest")
        self.client.on_message = lambda c, u, m: self.messages.put(m)
        self.client.on_connect = lambda c, u, f, rc, p: self.connected.put((f, rc))
        if will is not None:
            self.client.will_set(will[0], will[1], will[2], will[3])
        host, port = server.address("mqtt")
        props = None
        if protocol == V5:
            props = PahoProperties(PacketTypes.CONNECT)
            if expiry is not None:
                props.SessionExpiryInterval = expiry
        kwargs: dict[str, Any] = {"keepalive": keepalive}
        if protocol == V5:
            kwargs.update(clean_start=clean, properties=props)
        self.client.connect(host, port, **kwargs)
        self.client.loop_start()
        flags, rc = self.connected.get(timeout=TIMEOUT_S)
        assert not rc.is_failure, rc
        self.session_present = bool(flags.session_present)

    def subscribe(self, topic: str, qos: int = 1, **options: Any) -> None:
        done: queue.Queue[Any] = queue.Queue()
        self.client.on_subscribe = lambda c, u, mid, codes, p: done.put(codes)
        props = None
        sub_id = options.pop("sub_id", None)
        if sub_id is not None:
            props = PahoProperties(PacketTypes.SUBSCRIBE)
            props.SubscriptionIdentifier = sub_id
        if options:
            self.client.subscribe(topic, SubscribeOptions(qos=qos, **options), properties=props)
        else:
            self.client.subscribe(topic, qos, properties=props)
        codes = done.get(timeout=TIMEOUT_S)
        assert all(not c.is_failure for c in codes), codes

    def publish(self, topic: str, payload: bytes, qos: int = 1, retain: bool = False,
                properties: PahoProperties | None = None) -> None:
        info = self.client.publish(topic, payload, qos, retain, properties)
        info.wait_for_publish(TIMEOUT_S)
        assert info.is_published()

    def get(self, timeout: float = TIMEOUT_S) -> paho.MQTTMessage:
        return self.messages.get(timeout=timeout)

    def nothing(self, wait: float = 0.5) -> None:
        with pytest.raises(queue.Empty):
            self.messages.get(timeout=wait)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()

    def drop(self) -> None:
        """Go away without DISCONNECT (the socket is closed under paho)."""
        self.client.loop_stop()
        sock = self.client.socket()
        if sock is not None:
            sock.close()


# ---------------------------------------------------------------- paho


@pytest.mark.parametrize("protocol", [V311, V5], ids=["311", "5"])
@pytest.mark.parametrize("qos", [0, 1, 2])
def test_paho_every_qos(server: ServerProcess, protocol: int, qos: int) -> None:
    topic = f"paho{protocol}q{qos}"
    sub = Client(server, f"sub-{topic}", protocol)
    sub.subscribe(f"{topic}/#", qos)
    pub = Client(server, f"pub-{topic}", protocol)
    for i in range(10):
        pub.publish(f"{topic}/m", b"%d" % i, qos)
    got = [sub.get() for _ in range(10)]
    assert [m.payload for m in got] == [b"%d" % i for i in range(10)]
    assert {m.topic for m in got} == {f"{topic}/m"} and {m.qos for m in got} == {qos}
    sub.close()
    pub.close()


def test_paho_v5_properties_round_trip(server: ServerProcess) -> None:
    sub = Client(server, "props-sub")
    sub.subscribe("props/#", 1, sub_id=42)
    pub = Client(server, "props-pub")
    props = PahoProperties(PacketTypes.PUBLISH)
    props.ContentType = "application/json"
    props.ResponseTopic = "props/reply"
    props.CorrelationData = b"\x01\x02"
    props.PayloadFormatIndicator = 1
    props.MessageExpiryInterval = 3600
    props.UserProperty = [("a", "1"), ("b", "2"), ("a", "3")]
    pub.publish("props/x", b"{}", 1, properties=props)
    m = sub.get()
    p: Any = m.properties
    assert p.ContentType == "application/json" and p.ResponseTopic == "props/reply"
    assert p.CorrelationData == b"\x01\x02" and p.PayloadFormatIndicator == 1
    assert 3590 <= p.MessageExpiryInterval <= 3600
    assert p.UserProperty == [("a", "1"), ("b", "2"), ("a", "3")]
    assert p.SubscriptionIdentifier == [42]
    sub.close()
    pub.close()


def test_paho_overlapping_subscriptions_deliver_once(server: ServerProcess) -> None:
    sub = Client(server, "overlap-sub")
    sub.subscribe("ov/#", 0, sub_id=1)
    sub.subscribe("ov/+/x", 2, sub_id=2)
    pub = Client(server, "overlap-pub")
    pub.publish("ov/a/x", b"once", 2)
    m = sub.get()
    p: Any = m.properties
    assert m.qos == 2 and sorted(p.SubscriptionIdentifier) == [1, 2]
    sub.nothing()
    sub.close()
    pub.close()


@pytest.mark.parametrize("protocol", [V311, V5], ids=["311", "5"])
def test_paho_retained(server: ServerProcess, protocol: int) -> None:
    topic = f"ret{protocol}"
    pub = Client(server, f"pub-{topic}", protocol)
    pub.publish(f"{topic}/a", b"kept", 1, retain=True)
    pub.publish(f"{topic}/b", b"gone", 1, retain=True)
    pub.publish(f"{topic}/b", b"", 1, retain=True)
    sub = Client(server, f"sub-{topic}", protocol)
    sub.subscribe(f"{topic}/#", 1)
    m = sub.get()
    assert (m.topic, m.payload, m.retain) == (f"{topic}/a", b"kept", True)
    sub.nothing()
    sub.close()
    pub.close()


@pytest.mark.parametrize("protocol", [V311, V5], ids=["311", "5"])
def test_paho_will_on_abrupt_disconnect_not_on_clean(server: ServerProcess, protocol: int) -> None:
    topic = f"will{protocol}"
    watcher = Client(server, f"watch-{topic}", protocol)
    watcher.subscribe(f"{topic}/#", 1)
    clean = Client(server, f"clean-{topic}", protocol, will=(f"{topic}/clean", b"x", 1, False))
    clean.close()
    dying = Client(server, f"dying-{topic}", protocol, will=(f"{topic}/dying", b"bye", 1, False))
    dying.drop()
    m = watcher.get()
    assert (m.topic, m.payload) == (f"{topic}/dying", b"bye")
    watcher.nothing()
    watcher.close()


def test_paho_persistent_session_across_reconnect(server: ServerProcess) -> None:
    sub = Client(server, "persist-1", V5, clean=True, expiry=300)
    sub.subscribe("persist1/#", 1)
    sub.close()
    pub = Client(server, "persist-1-pub")
    for i in range(5):
        pub.publish("persist1/x", b"%d" % i, 1)
    sub = Client(server, "persist-1", V5, clean=False, expiry=300)
    assert sub.session_present
    assert [sub.get().payload for _ in range(5)] == [b"%d" % i for i in range(5)]
    sub.close()
    pub.close()


def test_paho_311_persistent_session(server: ServerProcess) -> None:
    sub = Client(server, "persist-311", V311, clean=False)
    sub.subscribe("persist311/#", 1)
    sub.close()
    pub = Client(server, "persist-311-pub", V311)
    pub.publish("persist311/x", b"while away", 1)
    sub = Client(server, "persist-311", V311, clean=False)
    assert sub.session_present
    assert sub.get().payload == b"while away"
    sub.close()
    pub.close()


def test_paho_shared_subscription(server: ServerProcess) -> None:
    a = Client(server, "share-a")
    b = Client(server, "share-b")
    a.subscribe("$share/grp/shared/#", 1)
    b.subscribe("$share/grp/shared/#", 1)
    pub = Client(server, "share-pub")
    for i in range(20):
        pub.publish("shared/x", b"%d" % i, 1)
    got: list[bytes] = []
    deadline = time.monotonic() + TIMEOUT_S
    while len(got) < 20 and time.monotonic() < deadline:
        for c in (a, b):
            with contextlib.suppress(queue.Empty):
                got.append(bytes(c.get(0.1).payload))
    assert sorted(got) == sorted(b"%d" % i for i in range(20))
    a.nothing(0.3)
    b.nothing(0.3)
    for c in (a, b, pub):
        c.close()


def test_paho_takeover(server: ServerProcess) -> None:
    first = Client(server, "taken", V5, expiry=60)
    gone: queue.Queue[Any] = queue.Queue()
    first.client.on_disconnect = lambda c, u, f, rc, p: gone.put(rc)
    first.client.reconnect_delay_set(60, 120)  # do not fight back
    second = Client(server, "taken", V5, clean=False, expiry=60)
    assert second.session_present
    rc = gone.get(timeout=TIMEOUT_S)
    assert rc.value == ReasonCode.SESSION_TAKEN_OVER
    first.client.loop_stop()
    second.close()


# ---------------------------------------------------------------- raw socket: keep alive


def test_keepalive_timeout_closes_with_0x8d(server: ServerProcess) -> None:
    host, port = server.address("mqtt")
    with socket.create_connection((host, port), timeout=TIMEOUT_S) as sock:
        sock.sendall(encode(Connect("ka", MQTT_5, keep_alive=1, username="guest",
                                    password=b"guest"), MQTT_5))
        reader = PacketReader(Role.CLIENT, protocol_version=MQTT_5)
        packets = []
        while True:
            data = sock.recv(4096)
            if not data:
                break
            reader.receive_data(data)
            while (p := reader.next_packet()) is not None:
                packets.append(p)
        assert packets[-1] == Disconnect(ReasonCode.KEEP_ALIVE_TIMEOUT)


# ---------------------------------------------------------------- mosquitto clients


def mosquitto(server: ServerProcess, tool: str, *args: str, timeout: float = TIMEOUT_S,
              ) -> subprocess.CompletedProcess[str]:
    path = require_tool(tool)
    host, port = server.address("mqtt")
    return subprocess.run([path, "-h", host, "-p", str(port), "-u", "guest", "-P", "guest",
                           *args], capture_output=True, text=True, timeout=timeout, check=False)


def start_mosquitto_sub(server: ServerProcess, *args: str) -> subprocess.Popen[str]:
    path = require_tool("mosquitto_sub")
    host, port = server.address("mqtt")
    return subprocess.Popen([path, "-h", host, "-p", str(port), "-u", "guest", "-P", "guest",
                             *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.mark.parametrize("version", ["mqttv311", "mqttv5"])
@pytest.mark.parametrize("qos", ["0", "1", "2"])
def test_mosquitto_pub_sub(server: ServerProcess, version: str, qos: str) -> None:
    topic = f"mosq-{version}-{qos}"
    sub = start_mosquitto_sub(server, "-V", version, "-t", f"{topic}/#", "-q", qos, "-C", "3",
                              "-v", "-W", "20", "-i", f"sub-{topic}")
    try:
        time.sleep(0.5)  # let the subscription be made before publishing
        for i in range(3):
            done = mosquitto(server, "mosquitto_pub", "-V", version, "-t", f"{topic}/m",
                             "-m", f"msg {i}", "-q", qos)
            assert done.returncode == 0, done.stderr
        out, err = sub.communicate(timeout=TIMEOUT_S)
    finally:
        sub.kill()
        sub.wait()
    assert out.splitlines() == [f"{topic}/m msg {i}" for i in range(3)], err


def test_mosquitto_retained(server: ServerProcess) -> None:
    done = mosquitto(server, "mosquitto_pub", "-t", "mosqret/a", "-m", "kept", "-r", "-q", "1")
    assert done.returncode == 0, done.stderr
    got = mosquitto(server, "mosquitto_sub", "-t", "mosqret/#", "-C", "1", "-v", "-W", "10")
    assert got.stdout.strip() == "mosqret/a kept", got.stderr


# ---------------------------------------------------------------- aiomqtt


def test_aiomqtt_round_trip(server: ServerProcess) -> None:
    import aiomqtt

    host, port = server.address("mqtt")

    async def run() -> list[tuple[str, bytes, int]]:
        async with aiomqtt.Client(host, port, username="guest", password="guest",
                                  identifier="aio-sub", protocol=aiomqtt.ProtocolVersion.V5
                                  ) as sub:
            await sub.subscribe("aio/#", qos=2)
            async with aiomqtt.Client(host, port, username="guest", password="guest",
                                      identifier="aio-pub") as pub:
                for qos in (0, 1, 2):
                    await pub.publish("aio/x", b"q%d" % qos, qos=qos)
            got = []
            async with asyncio.timeout(TIMEOUT_S):
                async for message in sub.messages:
                    got.append((str(message.topic), bytes(message.payload), message.qos))
                    if len(got) == 3:
                        break
            return got

    assert asyncio.run(run()) == [("aio/x", b"q0", 0), ("aio/x", b"q1", 1), ("aio/x", b"q2", 2)]


# ---------------------------------------------------------------- cross-protocol


def test_mqtt_publish_is_read_by_a_kafka_consumer(server: ServerProcess) -> None:
    pub = Client(server, "xproto-pub")
    pub.publish("orders/eu/1", b"order one", 1)
    pub.close()
    host, port = server.address("kafka")
    consumer = ck.Consumer({"bootstrap.servers": f"{host}:{port}", "group.id": "xproto",
                            "enable.auto.commit": False})
    try:
        consumer.assign([ck.TopicPartition("orders", 0, ck.OFFSET_BEGINNING)])
        deadline = time.monotonic() + TIMEOUT_S
        msg = None
        while msg is None and time.monotonic() < deadline:
            msg = consumer.poll(1.0)
        assert msg is not None and msg.error() is None
        assert (msg.key(), msg.value()) == (b"orders/eu/1", b"order one")
        headers = dict(msg.headers() or [])
        assert headers["ps.mqtt.topic"] == b"orders/eu/1" and headers["ps.mqtt.qos"] == b"1"
    finally:
        consumer.close()


# ---------------------------------------------------------------- gateway restart


def test_persistent_session_and_retained_survive_a_gateway_restart(
    polystream_server: ServerFactory,
) -> None:
    first = polystream_server("mqtt", log_level="info")
    sub = Client(first, "restart-sub", V5, expiry=3600)
    sub.subscribe("restart/#", 1)
    pub = Client(first, "restart-pub")
    pub.publish("restart/r", b"retained", 1, retain=True)
    assert sub.get().payload == b"retained"
    sub.drop()
    pub.publish("restart/x", b"before restart", 1)
    pub.close()
    first.terminate()
    second = polystream_server("mqtt", data_dir=first.data_dir, log_level="info")
    pub = Client(second, "restart-pub")
    pub.publish("restart/x", b"after restart", 1)
    sub = Client(second, "restart-sub", V5, clean=False, expiry=3600)
    assert sub.session_present
    assert [sub.get().payload for _ in range(2)] == [b"before restart", b"after restart"]
    late = Client(second, "restart-late")
    late.subscribe("restart/r", 1)
    assert late.get().payload == b"retained"
    for c in (sub, pub, late):
        c.close()


def test_gmqtt_round_trip_with_user_properties_and_topic_aliases(
    server: ServerProcess,
) -> None:
    import gmqtt

    host, port = server.address("mqtt")

    async def run() -> list[tuple[str, bytes, Any]]:
        got: list[tuple[str, bytes, Any]] = []
        arrived = asyncio.Event()
        subscribed = asyncio.Event()

        def on_message(client: Any, topic: str, payload: bytes, qos: int, props: Any) -> int:
            got.append((topic, payload, props.get("user_property")))
            if len(got) == 3:
                arrived.set()
            return 0

        # gmqtt resolves topic aliases: the server may use up to 4 towards it
        sub = gmqtt.Client("gmqtt-sub", topic_alias_maximum=4)
        sub.set_auth_credentials("guest", "guest")
        sub.on_message = on_message
        sub.on_subscribe = lambda *args: subscribed.set()
        await sub.connect(host, port)
        sub.subscribe("gm/#", qos=1)
        async with asyncio.timeout(TIMEOUT_S):
            await subscribed.wait()
        pub = gmqtt.Client("gmqtt-pub")
        pub.set_auth_credentials("guest", "guest")
        await pub.connect(host, port)
        for i in range(3):
            pub.publish("gm/x", b"hello %d" % i, qos=1, user_property=("k", "v"))
        async with asyncio.timeout(TIMEOUT_S):
            await arrived.wait()
        await pub.disconnect()
        await sub.disconnect()
        return got

    assert asyncio.run(run()) == [("gm/x", b"hello %d" % i, [("k", "v")]) for i in range(3)]
