"""Capture raw MQTT packets from real clients into ``tests/fixtures/mqtt/*.hex``.

Run by hand (not a test)::

    .venv/bin/python tests/mqtt_capture.py            # rewrite the fixtures
    .venv/bin/python tests/mqtt_capture.py --dry-run  # only print what was captured

Two capture modes run one after the other:

* ``fake``: a throw-away TCP server on 127.0.0.1 answers CONNACK/SUBACK/PUBACK/... minimally
  (and pushes one QoS 1 and one QoS 2 PUBLISH to subscribers so the clients' PUBACK, PUBREC and
  PUBCOMP are captured too). Only the client->server bytes are recorded.
* ``mosquittobroker``: a recording proxy sits in front of a Debian ``mosquitto`` broker started on a
  loopback port; both directions are recorded, so server packets (CONNACK, SUBACK, PUBLISH with
  subscription identifiers, ...) come from a real broker too.

Clients: paho-mqtt 2.x (MQTT 3.1.1 and 5 with properties; peer name ``paho``) and
``mosquitto_pub``/``mosquitto_sub`` (peer name ``mosquittocli``).
The packets are cut from the stream with a tiny frame splitter written here (independent of the
codec under test) and named ``<packet>_v<level>_<peer>_<nnn>.hex`` (level 4 = MQTT 3.1.1).
Identical bytes are kept once per name stem. Client ids are fixed below and neither timestamps nor
ports appear in the bytes, so a re-run produces the same packets.
"""

from __future__ import annotations

import argparse
import contextlib
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "mqtt"
NAMES = {
    1: "connect", 2: "connack", 3: "publish", 4: "puback", 5: "pubrec", 6: "pubrel",
    7: "pubcomp", 8: "subscribe", 9: "suback", 10: "unsubscribe", 11: "unsuback",
    12: "pingreq", 13: "pingresp", 14: "disconnect", 15: "auth",
}


def split_frames(buffer: bytearray) -> list[bytes]:
    """Cut every complete packet off the front of ``buffer``."""
    frames: list[bytes] = []
    while len(buffer) >= 2:
        length, mult, pos = 0, 1, 1
        while True:
            if pos >= len(buffer):
                return frames
            byte = buffer[pos]
            length += (byte & 0x7F) * mult
            mult *= 128
            pos += 1
            if byte < 0x80:
                break
        if len(buffer) < pos + length:
            return frames
        frames.append(bytes(buffer[: pos + length]))
        del buffer[: pos + length]
    return frames


def connect_level(frame: bytes) -> int:
    """Protocol level byte of a CONNECT frame."""
    pos = 1
    while frame[pos] & 0x80:
        pos += 1
    pos += 1
    name_len = int.from_bytes(frame[pos : pos + 2], "big")
    return frame[pos + 2 + name_len]


class Recorder:
    """Collects frames as (peer, level, bytes), thread-safe."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.frames: list[tuple[str, int, bytes]] = []

    def add(self, peer: str, level: int, frame: bytes) -> None:
        with self.lock:
            self.frames.append((peer, level, frame))


# ---------------------------------------------------------------------------------------------
# fake server


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _frame(first: int, body: bytes) -> bytes:
    return bytes((first,)) + _varint(len(body)) + body


def _body(frame: bytes) -> bytes:
    pos = 1
    while frame[pos] & 0x80:
        pos += 1
    return frame[pos + 1 :]


def _skip_props(body: bytes, pos: int) -> int:
    length, mult = 0, 1
    while True:
        byte = body[pos]
        pos += 1
        length += (byte & 0x7F) * mult
        mult *= 128
        if byte < 0x80:
            return pos + length


def _filters(body: bytes, pos: int, with_options: bool) -> list[int]:
    """Requested QoS per filter (0 for UNSUBSCRIBE)."""
    out = []
    while pos < len(body):
        n = int.from_bytes(body[pos : pos + 2], "big")
        pos += 2 + n
        if with_options:
            out.append(body[pos] & 0x03)
            pos += 1
        else:
            out.append(0)
    return out


def fake_replies(frame: bytes, level: int, state: dict[str, Any]) -> list[bytes]:
    """Minimal server answers to one client frame."""
    ptype = frame[0] >> 4
    body = _body(frame)
    v5 = level == 5
    if ptype == 1:
        return [b"\x20\x03\x00\x00\x00" if v5 else b"\x20\x02\x00\x00"]
    if ptype == 3:
        qos = (frame[0] >> 1) & 3
        if qos:
            n = int.from_bytes(body[:2], "big")
            pid = body[2 + n : 4 + n]
            return [bytes((0x40 if qos == 1 else 0x50, 2)) + pid]
        return []
    if ptype == 6:
        return [b"\x70\x02" + body[:2]]
    if ptype == 8:
        pos = _skip_props(body, 2) if v5 else 2
        codes = bytes(_filters(body, pos, True))
        props = b"\x00" if v5 else b""
        replies = [_frame(0x90, body[:2] + props + codes)]
        if state.get("push") and not state.get("pushed"):
            state["pushed"] = True
            topic = b"\x00\x08push/one"
            replies.append(_frame(0x32, topic + b"\x12\x34" + props + b"qos1"))
            replies.append(_frame(0x34, topic + b"\x12\x35" + props + b"qos2"))
        return replies
    if ptype == 5:
        return [b"\x62\x02" + body[:2]]
    if ptype == 10:
        if not v5:
            return [b"\xb0\x02" + body[:2]]
        pos = _skip_props(body, 2)
        codes = bytes(len(_filters(body, pos, False)))
        return [_frame(0xB0, body[:2] + b"\x00" + codes)]
    if ptype == 12:
        return [b"\xd0\x00"]
    return []


class FakeServer:
    """Accepts connections on 127.0.0.1, records client frames, answers minimally."""

    def __init__(self, recorder: Recorder, push: bool = True) -> None:
        self.recorder = recorder
        self.push = push
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.peer = "unknown"
        self.threads: list[threading.Thread] = []
        self.accepting = threading.Thread(target=self._accept, daemon=True)
        self.accepting.start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            thread = threading.Thread(target=self._serve, args=(conn, self.peer), daemon=True)
            thread.start()
            self.threads.append(thread)

    def _serve(self, conn: socket.socket, peer: str) -> None:
        buffer = bytearray()
        level = 4
        state: dict[str, Any] = {"push": self.push}
        with conn:
            conn.settimeout(10)
            while True:
                try:
                    data = conn.recv(65536)
                except OSError:
                    return
                if not data:
                    return
                buffer += data
                for frame in split_frames(buffer):
                    if frame[0] >> 4 == 1:
                        level = connect_level(frame)
                    self.recorder.add(peer, level, frame)
                    for reply in fake_replies(frame, level, state):
                        conn.sendall(reply)
                    if frame[0] >> 4 == 14:
                        return

    def close(self) -> None:
        self.sock.close()
        for thread in self.threads:
            thread.join(5)


# ---------------------------------------------------------------------------------------------
# recording proxy in front of a real mosquitto broker


class Proxy:
    """Forwards connections to ``upstream_port``, recording frames in both directions."""

    def __init__(self, recorder: Recorder, upstream_port: int) -> None:
        self.recorder = recorder
        self.upstream_port = upstream_port
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.peer = "unknown"
        self.threads: list[threading.Thread] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.sock.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.upstream_port))
            level = [4]
            pairs = ((client, upstream, self.peer), (upstream, client, "mosquittobroker"))
            for src, dst, peer in pairs:
                thread = threading.Thread(
                    target=self._pump, args=(src, dst, peer, level), daemon=True
                )
                thread.start()
                self.threads.append(thread)

    def _pump(self, src: socket.socket, dst: socket.socket, peer: str, level: list[int]) -> None:
        buffer = bytearray()
        src.settimeout(10)
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                buffer += data
                for frame in split_frames(buffer):
                    if frame[0] >> 4 == 1:
                        level[0] = connect_level(frame)
                    self.recorder.add(peer, level[0], frame)
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (src, dst):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        self.sock.close()
        for thread in self.threads:
            thread.join(5)


# ---------------------------------------------------------------------------------------------
# client scenarios


def paho_session(port: int, v5: bool, keepalive_ping: bool) -> None:
    """Connect with will (+properties), subscribe, publish QoS 0/1/2, unsubscribe, disconnect."""
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion
    from paho.mqtt.packettypes import PacketTypes
    from paho.mqtt.properties import Properties
    from paho.mqtt.reasoncodes import ReasonCode
    from paho.mqtt.subscribeoptions import SubscribeOptions

    protocol = mqtt.MQTTv5 if v5 else mqtt.MQTTv311
    client = mqtt.Client(
        CallbackAPIVersion.VERSION2,
        client_id="paho-v5" if v5 else "paho-v311",
        clean_session=None if v5 else True,
        protocol=protocol,
    )
    client.username_pw_set("alice", "secret")
    connected = threading.Event()
    acked: dict[int, threading.Event] = {}
    received = threading.Semaphore(0)

    def on_connect(*_: Any) -> None:
        connected.set()

    def on_sub_or_unsub(_c: Any, _u: Any, mid: int, *_: Any) -> None:
        acked.setdefault(mid, threading.Event()).set()

    def on_message(*_: Any) -> None:
        received.release()

    client.on_connect = on_connect
    client.on_subscribe = on_sub_or_unsub
    client.on_unsubscribe = on_sub_or_unsub
    client.on_message = on_message

    connect_props = None
    will_props = None
    if v5:
        connect_props = Properties(PacketTypes.CONNECT)
        connect_props.SessionExpiryInterval = 3600
        connect_props.ReceiveMaximum = 20
        connect_props.TopicAliasMaximum = 10
        connect_props.UserProperty = [("region", "eu"), ("region", "us")]
        will_props = Properties(PacketTypes.WILLMESSAGE)
        will_props.WillDelayInterval = 5
        will_props.MessageExpiryInterval = 120
        will_props.ContentType = "text/plain"
        will_props.UserProperty = [("why", "gone")]
    client.will_set("clients/paho/state", b"offline", qos=1, retain=True, properties=will_props)
    if v5:
        client.connect("127.0.0.1", port, keepalive=1 if keepalive_ping else 30,
                       clean_start=True, properties=connect_props)
    else:
        client.connect("127.0.0.1", port, keepalive=1 if keepalive_ping else 30)
    client.loop_start()
    try:
        if not connected.wait(5):
            raise RuntimeError("paho did not connect")

        def wait_mid(mid: int | None) -> None:
            assert mid is not None
            if not acked.setdefault(mid, threading.Event()).wait(5):
                raise RuntimeError("no SUBACK/UNSUBACK")

        if v5:
            sub_props = Properties(PacketTypes.SUBSCRIBE)
            sub_props.SubscriptionIdentifier = 42
            sub_props.UserProperty = [("k", "v")]
            _, mid = client.subscribe(
                [
                    ("push/one", SubscribeOptions(qos=2)),
                    ("sensors/+/temp", SubscribeOptions(qos=1, noLocal=True,
                                                        retainAsPublished=True,
                                                        retainHandling=1)),
                    ("logs/#", SubscribeOptions(qos=0, retainHandling=2)),
                ],
                properties=sub_props,
            )
        else:
            _, mid = client.subscribe([("push/one", 2), ("sensors/+/temp", 1), ("logs/#", 0)])
        wait_mid(mid)

        pub_props = None
        if v5:
            pub_props = Properties(PacketTypes.PUBLISH)
            pub_props.PayloadFormatIndicator = 1
            pub_props.MessageExpiryInterval = 60
            pub_props.ContentType = "application/json"
            pub_props.ResponseTopic = "replies/paho"
            pub_props.CorrelationData = b"\x01\x02corr"
            pub_props.UserProperty = [("trace", "abc"), ("trace", "def")]
        client.publish("sensors/kitchen/temp", b"21.5", qos=0).wait_for_publish(5)
        client.publish("sensors/kitchen/temp", b'{"t": 21.5}', qos=1,
                       properties=pub_props).wait_for_publish(5)
        client.publish("sensors/hall/temp", b"\x00\xff binary", qos=2,
                       retain=True).wait_for_publish(5)
        client.publish("empty/payload", b"", qos=1).wait_for_publish(5)
        if v5:
            alias_props = Properties(PacketTypes.PUBLISH)
            alias_props.TopicAlias = 3
            client.publish("aliased/topic", b"first", qos=0,
                           properties=alias_props).wait_for_publish(5)
        client.publish("big/payload", bytes(range(256)) * 4, qos=1).wait_for_publish(5)
        client.publish("push/one", b"to myself", qos=2).wait_for_publish(5)
        client.publish("logs/app", b"log line", qos=1).wait_for_publish(5)
        time.sleep(0.3)

        if keepalive_ping:
            time.sleep(2.2)
        if v5:
            unsub_props = Properties(PacketTypes.UNSUBSCRIBE)
            unsub_props.UserProperty = [("bye", "now")]
            _, mid = client.unsubscribe(["sensors/+/temp", "logs/#"], properties=unsub_props)
        else:
            _, mid = client.unsubscribe(["sensors/+/temp", "logs/#"])
        wait_mid(mid)
        time.sleep(0.3)
        if v5:
            disc_props = Properties(PacketTypes.DISCONNECT)
            disc_props.SessionExpiryInterval = 0
            disc_props.ReasonString = "done"
            client.disconnect(ReasonCode(PacketTypes.DISCONNECT, "Disconnect with will message"),
                              properties=disc_props)
        else:
            client.disconnect()
    finally:
        time.sleep(0.2)
        client.loop_stop()


def mosquitto_clients(port: int) -> None:
    """mosquitto_pub / mosquitto_sub in both protocol versions."""
    base = ["-h", "127.0.0.1", "-p", str(port)]
    runs = [
        ["mosquitto_pub", *base, "-V", "mqttv311", "-i", "mpub-v311", "-t", "a/b", "-m", "hello",
         "-q", "0"],
        ["mosquitto_pub", *base, "-V", "mqttv311", "-i", "mpub-v311", "-t", "a/b", "-m", "hello",
         "-q", "1", "-r", "-u", "bob", "-P", "pw"],
        ["mosquitto_pub", *base, "-V", "mqttv311", "-i", "mpub-v311", "-t", "a/b", "-m", "q2",
         "-q", "2", "-c", "--will-topic", "w/t", "--will-payload", "bye", "--will-qos", "2"],
        ["mosquitto_pub", *base, "-V", "mqttv5", "-i", "mpub-v5", "-t", "a/b", "-m", "hello",
         "-q", "0"],
        ["mosquitto_pub", *base, "-V", "mqttv5", "-i", "mpub-v5", "-t", "a/b", "-m", "hello",
         "-q", "1", "-x", "600",
         "-D", "connect", "receive-maximum", "10",
         "-D", "connect", "user-property", "src", "cli",
         "-D", "publish", "content-type", "text/plain",
         "-D", "publish", "user-property", "k1", "v1",
         "-D", "publish", "user-property", "k1", "v2",
         "-D", "publish", "message-expiry-interval", "30"],
        ["mosquitto_pub", *base, "-V", "mqttv5", "-i", "mpub-v5", "-t", "a/b", "-m", "q2",
         "-q", "2", "--will-topic", "w/t", "--will-payload", "bye", "--will-retain",
         "-D", "will", "will-delay-interval", "10",
         "-D", "will", "content-type", "text/plain"],
        ["mosquitto_sub", *base, "-V", "mqttv311", "-i", "msub-v311", "-t", "x/#", "-t", "y/+/z",
         "-q", "1", "-E"],
        ["mosquitto_sub", *base, "-V", "mqttv5", "-i", "msub-v5", "-t", "x/#", "-t", "y/+/z",
         "-q", "2", "-E", "-D", "subscribe", "subscription-identifier", "7",
         "-D", "subscribe", "user-property", "who", "me"],
    ]
    for argv in runs:
        subprocess.run(argv, check=True, timeout=20, capture_output=True)


def run_clients(server: FakeServer | Proxy) -> None:
    scenarios: list[tuple[str, Callable[[], None]]] = [
        ("paho", lambda: paho_session(server.port, v5=False, keepalive_ping=True)),
        ("paho", lambda: paho_session(server.port, v5=True, keepalive_ping=True)),
        ("mosquittocli", lambda: mosquitto_clients(server.port)),
    ]
    for peer, scenario in scenarios:
        server.peer = peer
        scenario()
        time.sleep(0.3)


def start_mosquitto(tmp: Path) -> tuple[subprocess.Popen[bytes], int]:
    probe = socket.create_server(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()
    conf = tmp / "mosquitto.conf"
    conf.write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n")
    proc = subprocess.Popen(["mosquitto", "-c", str(conf)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    for _ in range(50):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return proc, port
        except OSError:
            time.sleep(0.1)
    proc.kill()
    raise RuntimeError("mosquitto did not start")


def capture() -> list[tuple[str, int, bytes]]:
    recorder = Recorder()
    fake = FakeServer(recorder)
    try:
        run_clients(fake)
    finally:
        fake.close()
    if shutil.which("mosquitto"):
        with tempfile.TemporaryDirectory() as tmp:
            proc, port = start_mosquitto(Path(tmp))
            try:
                proxy = Proxy(recorder, port)
                try:
                    run_clients(proxy)
                finally:
                    proxy.close()
            finally:
                proc.terminate()
                proc.wait(10)
    return recorder.frames


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dry-run", action="store_true")
    args = parser.parse_args()
    frames = capture()
    seen: set[tuple[str, bytes]] = set()
    counters: dict[str, int] = {}
    out: dict[str, bytes] = {}
    for peer, level, frame in frames:
        stem = f"{NAMES.get(frame[0] >> 4, 'reserved')}_v{level}_{peer}"
        if (stem, frame) in seen:
            continue
        seen.add((stem, frame))
        counters[stem] = counters.get(stem, 0) + 1
        out[f"{stem}_{counters[stem]:03d}"] = frame
    for name, frame in sorted(out.items()):
        print(f"{name}: {frame[:40].hex()}{'...' if len(frame) > 40 else ''}")
    if args.dry_run:
        return
    for old in FIXTURES.glob("*.hex"):
        old.unlink()
    FIXTURES.mkdir(parents=True, exist_ok=True)
    for name, frame in out.items():
        (FIXTURES / f"{name}.hex").write_text(frame.hex() + "\n")
    print(f"wrote {len(out)} fixtures to {FIXTURES}", file=sys.stderr)


if __name__ == "__main__":
    main()
