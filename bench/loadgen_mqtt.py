"""A lean MQTT 3.1.1 load generator on the project's sans-IO codec, one process per client.

Every packet the generator sends is produced by :func:`handlers.mqtt.encode`; the connection
handshake (CONNACK, SUBACK) is read with :class:`handlers.mqtt.PacketReader`.  The hot path
avoids one dataclass per message: PUBLISH and acknowledgement *templates* are encoded once and
only the packet identifier and the payload's 8-byte send timestamp are spliced in, and
received packets are cut by a small scanner that reads the fixed header, the packet identifier
and the timestamp at offsets checked against the codec at start-up.  ``verify=True`` also runs
every received byte through ``PacketReader`` and fails if the two disagree.

Latency: the payload starts with ``time.monotonic_ns()`` (CLOCK_MONOTONIC, shared by every
process on the machine) taken when the message is put on the wire; a subscriber subtracts it
from its own clock on receipt.

Entry points are plain functions meant to run in their own process (``multiprocessing``):
:func:`run_subscriber` and :func:`run_publisher`; each puts one result on a queue.
Blocking sockets with ``select`` for pacing: no event loop between the generator and the
kernel.
"""

from __future__ import annotations

import os
import select
import socket
import struct
import time
import traceback
from collections.abc import MutableSequence
from dataclasses import dataclass

from loadgen_common import ReceiverResult, ResultQueue, SharedInt, cpu_seconds

from handlers.mqtt import (
    MQTT_311,
    ConnAck,
    Connect,
    Disconnect,
    PacketReader,
    PubAck,
    PubComp,
    Publish,
    PubRec,
    PubRel,
    Role,
    SubAck,
    Subscribe,
    Subscription,
    encode,
)

_TS = struct.Struct(">Q")
_RECV_SIZE = 1 << 18
_BATCH = 64
#: Latency samples kept per subscriber (bounded memory; a rate run stays far below it).
MAX_SAMPLES = 1_000_000
#: How long a subscriber waits for more messages once it knows how many were sent.
DRAIN_TIMEOUT_S = 3.0
#: The most a subscriber waits after the publisher finished; what has not arrived is "missing".
MAX_DRAIN_S = 10.0
HANDSHAKE_TIMEOUT_S = 10.0
#: QoS 0 may be dropped: a subscriber that made no progress for this long is not waited for.
_QOS0_STALL_S = 0.2


@dataclass(frozen=True, slots=True)
class Target:
    """Where to connect and with which credentials (guest/guest suits every broker here)."""

    host: str
    port: int
    username: str | None = "guest"
    password: bytes | None = b"guest"


@dataclass(frozen=True, slots=True)
class PublishPlan:
    """What the publisher sends: ``rate`` msg/s, or as fast as it can when ``None``."""

    topic: str
    qos: int
    size: int
    duration: float
    rate: float | None = None
    #: QoS 1/2 publications awaiting PUBACK/PUBCOMP (≤ the broker's receive maximum).
    window: int = 100
    #: Messages the publisher may be ahead of the slowest subscriber (end-to-end flow control).
    e2e_window: int = 5000


@dataclass(slots=True)
class PublisherResult:
    """What one publisher did; times are ``time.monotonic_ns()``."""

    sent: int = 0
    completed: int = 0
    t_first_ns: int = 0
    t_last_ns: int = 0
    cpu_s: float = 0.0
    wall_s: float = 0.0
    error: str = ""


class _Templates:
    """Packets encoded once by the codec, with the offsets of the fields that vary."""

    def __init__(self, topic: str, qos: int, size: int) -> None:
        if size < _TS.size:
            raise ValueError(f"payload size must be at least {_TS.size} bytes")
        pid = 0x0102 if qos else None
        frame = encode(Publish(topic, bytes(size), qos=qos, packet_id=pid), MQTT_311)
        # 3.1.1 PUBLISH: header, topic, [packet id], payload — payload last, id just before it
        self.payload_offset = len(frame) - size
        if qos:
            self.head = frame[: self.payload_offset - 2]
            if frame[self.payload_offset - 2 : self.payload_offset] != b"\x01\x02":
                raise AssertionError("unexpected PUBLISH layout from the codec")
        else:
            self.head = frame[: self.payload_offset]
        self.pad = bytes(size - _TS.size)
        self.qos = qos
        self.puback = _ack_prefix(PubAck(0x0102))
        self.pubrec = _ack_prefix(PubRec(0x0102))
        self.pubrel = _ack_prefix(PubRel(0x0102))
        self.pubcomp = _ack_prefix(PubComp(0x0102))
        # check the splice against the codec's own decoder once
        probe = self.publish(0x0304, 12345)
        reader = PacketReader(Role.SERVER, protocol_version=MQTT_311)
        reader.receive_data(probe)
        decoded = reader.next_packet()
        if not (isinstance(decoded, Publish) and decoded.topic == topic
                and decoded.qos == qos and decoded.packet_id == (0x0304 if qos else None)
                and bytes(decoded.payload[: _TS.size]) == _TS.pack(12345)
                and len(decoded.payload) == size):
            raise AssertionError(f"PUBLISH template does not round-trip: {decoded!r}")

    def publish(self, pid: int, ts: int) -> bytes:
        if self.qos:
            return b"".join((self.head, pid.to_bytes(2, "big"), _TS.pack(ts), self.pad))
        return b"".join((self.head, _TS.pack(ts), self.pad))


def _ack_prefix(packet: PubAck | PubRec | PubRel | PubComp) -> bytes:
    frame = encode(packet, MQTT_311)
    if len(frame) != 4 or frame[2:] != b"\x01\x02":
        raise AssertionError(f"unexpected {type(packet).__name__} layout from the codec")
    return frame[:2]


class _Conn:
    """One blocking MQTT 3.1.1 connection: handshake through the codec, raw bytes after."""

    def __init__(self, target: Target, client_id: str) -> None:
        self.sock = socket.create_connection((target.host, target.port),
                                             timeout=HANDSHAKE_TIMEOUT_S)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.reader = PacketReader(Role.CLIENT, protocol_version=MQTT_311)
        self.sock.sendall(encode(Connect(client_id, protocol_level=MQTT_311, clean_start=True,
                                         keep_alive=0, username=target.username,
                                         password=target.password), MQTT_311))
        ack = self._read_packet()
        if not isinstance(ack, ConnAck) or ack.reason_code != 0:
            raise ConnectionError(f"CONNECT refused: {ack!r}")

    def _read_packet(self) -> object:
        while True:
            packet = self.reader.next_packet()
            if packet is not None:
                return packet
            data = self.sock.recv(_RECV_SIZE)
            if not data:
                raise ConnectionError("connection closed during the handshake")
            self.reader.receive_data(data)

    def subscribe(self, topic: str, qos: int) -> None:
        self.sock.sendall(encode(Subscribe(1, (Subscription(topic, qos),)), MQTT_311))
        ack = self._read_packet()
        if not isinstance(ack, SubAck) or ack.reason_codes != (qos,):
            raise ConnectionError(f"SUBSCRIBE refused: {ack!r}")
        if self.reader.buffered:
            raise ConnectionError("unexpected bytes after SUBACK")

    def close(self) -> None:
        try:
            self.sock.settimeout(1.0)
            self.sock.sendall(encode(Disconnect(), MQTT_311))
        except Exception:  # closing is best effort: the figures are already taken
            pass
        finally:
            self.sock.close()


def _scan(buf: bytearray, start: int) -> tuple[int, int, int]:
    """Cut one packet at ``start``: (first byte, body offset, end offset); end -1 = partial."""
    n = len(buf)
    if n - start < 2:
        return 0, 0, -1
    length, shift, i = 0, 0, start + 1
    while True:
        if i >= n:
            return 0, 0, -1
        byte = buf[i]
        length |= (byte & 0x7F) << shift
        i += 1
        if byte < 0x80:
            break
        shift += 7
        if shift > 21:
            raise ConnectionError("malformed remaining length")
    end = i + length
    if end > n:
        return 0, 0, -1
    return buf[start], i, end


def run_subscriber(
    index: int, target: Target, topic: str, qos: int, expected: SharedInt,
    progress: MutableSequence[int], results: ResultQueue, *, keep_latency: bool,
    verify: bool = False,
) -> None:
    """Subscribe to ``topic``, report ``("ready", index)``, then receive until ``expected``.

    ``expected.value`` stays -1 while the publisher runs; once it holds the number sent, the
    subscriber stops at that count or after :data:`DRAIN_TIMEOUT_S` without data.
    """
    result = ReceiverResult(index)
    try:
        conn = _Conn(target, f"bench-sub-{os.getpid()}-{index}")
    except Exception as exc:
        result.error = f"connect: {exc!r}"
        results.put(("ready", index, result.error))
        results.put(("sub", result))
        return
    try:
        conn.subscribe(topic, qos)
        results.put(("ready", index, ""))
        _receive(conn, qos, expected, progress, result, keep_latency, verify)
    except Exception:
        result.error = traceback.format_exc(limit=3)
    finally:
        conn.close()
        results.put(("sub", result))


def _receive(
    conn: _Conn, qos: int, expected: SharedInt, progress: MutableSequence[int],
    result: ReceiverResult, keep_latency: bool, verify: bool,
) -> None:
    index = result.index
    tpl = _Templates("x", 1, _TS.size)  # only the ack prefixes are used here
    puback, pubrec, pubcomp = tpl.puback, tpl.pubrec, tpl.pubcomp
    sock = conn.sock
    sock.settimeout(0.2)
    check = PacketReader(Role.CLIENT, protocol_version=MQTT_311) if verify else None
    buf = bytearray()
    lat = result.latencies_us
    received = 0
    first_ns = last_ns = 0
    cpu0, wall0 = cpu_seconds(), time.monotonic()
    idle_since = time.monotonic()
    drain_until = 0.0
    monotonic_ns = time.monotonic_ns
    unpack_ts = _TS.unpack_from
    while True:
        target_count = expected.value
        if 0 <= target_count <= received:
            break
        if target_count >= 0:
            if not drain_until:
                drain_until = time.monotonic() + MAX_DRAIN_S
            elif time.monotonic() > drain_until:
                break
        try:
            data = sock.recv(_RECV_SIZE)
        except TimeoutError:
            if target_count >= 0 and time.monotonic() - idle_since > DRAIN_TIMEOUT_S:
                break
            continue
        if not data:
            raise ConnectionError("broker closed the connection")
        now = monotonic_ns()
        idle_since = time.monotonic()
        buf += data
        if check is not None:
            check.receive_data(data)
        out: list[bytes] = []
        pos = 0
        got = 0
        while True:
            first, body, end = _scan(buf, pos)
            if end < 0:
                break
            ptype = first >> 4
            if ptype == 3:
                tlen = (buf[body] << 8) | buf[body + 1]
                p = body + 2 + tlen
                pqos = (first >> 1) & 3
                if pqos:
                    pid = buf[p : p + 2]
                    p += 2
                    out.append((puback if pqos == 1 else pubrec) + pid)
                if keep_latency and len(lat) < MAX_SAMPLES:
                    lat.append((now - unpack_ts(buf, p)[0]) // 1000)
                if not first_ns:
                    first_ns = now
                got += 1
            elif ptype == 6:  # PUBREL → PUBCOMP
                out.append(pubcomp + buf[body : body + 2])
            else:
                raise ConnectionError(f"unexpected packet type {ptype}")
            pos = end
        del buf[:pos]
        if got:
            received += got
            progress[index] = received
            last_ns = now
        if check is not None:
            publishes = 0
            while (packet := check.next_packet()) is not None:
                if isinstance(packet, Publish) and packet.qos == qos:
                    publishes += 1
            if publishes != got:
                raise AssertionError(f"scanner saw {got} PUBLISH, codec {publishes}")
        if out:
            sock.sendall(b"".join(out))
    result.received, result.t_first_ns, result.t_last_ns = received, first_ns, last_ns
    result.cpu_s, result.wall_s = cpu_seconds() - cpu0, time.monotonic() - wall0


def run_publisher(target: Target, plan: PublishPlan, expected: SharedInt,
                  progress: MutableSequence[int], results: ResultQueue) -> None:
    """Publish per ``plan``, wait for outstanding acknowledgements, set ``expected``."""
    result = PublisherResult()
    conn: _Conn | None = None
    try:
        conn = _Conn(target, f"bench-pub-{os.getpid()}")
        _publish(conn, plan, progress, result)
    except Exception:
        result.error = traceback.format_exc(limit=3)
    finally:
        expected.value = result.sent
        if conn is not None:
            conn.close()
        results.put(("pub", result))


def _publish(
    conn: _Conn, plan: PublishPlan, progress: MutableSequence[int], result: PublisherResult,
) -> None:
    tpl = _Templates(plan.topic, plan.qos, plan.size)
    qos, window = plan.qos, plan.window if plan.qos else 1 << 30
    sock = conn.sock
    sock.settimeout(HANDSHAKE_TIMEOUT_S)
    pubrel = tpl.pubrel
    buf = bytearray()
    monotonic_ns = time.monotonic_ns
    build = tpl.publish
    sent = inflight = completed = 0
    pid = 0
    cpu0, wall0 = cpu_seconds(), time.monotonic()
    t0 = monotonic_ns()
    stop_ns = t0 + int(plan.duration * 1e9)
    rate = plan.rate
    last_send = t0
    skipped = last_slowest = 0
    stalled_since = 0.0

    def read_acks(timeout: float) -> None:
        nonlocal inflight, completed
        readable, _, _ = select.select([sock], [], [], timeout)
        if not readable:
            return
        data = sock.recv(_RECV_SIZE)
        if not data:
            raise ConnectionError("broker closed the connection")
        buf.extend(data)
        pos, out = 0, []
        while True:
            first, body, end = _scan(buf, pos)
            if end < 0:
                break
            ptype = first >> 4
            if ptype == 4 or ptype == 7:  # PUBACK (QoS 1) / PUBCOMP (QoS 2)
                inflight -= 1
                completed += 1
            elif ptype == 5:  # PUBREC → PUBREL
                out.append(pubrel + buf[body : body + 2])
            else:
                raise ConnectionError(f"unexpected packet type {ptype}")
            pos = end
        del buf[:pos]
        if out:
            sock.sendall(b"".join(out))

    while True:
        now = monotonic_ns()
        if now >= stop_ns:
            break
        slowest = min(progress) + skipped
        room = min(window - inflight, plan.e2e_window - (sent - slowest))
        if rate is None:
            count = min(_BATCH, room)
        else:
            count = min(_BATCH, room, int(rate * (now - t0) / 1e9) + 1 - sent)
        if count <= 0:
            if inflight >= window:
                read_acks(HANDSHAKE_TIMEOUT_S)
            elif room <= 0:  # too far ahead of the slowest subscriber
                if slowest != last_slowest:
                    last_slowest, stalled_since = slowest, time.monotonic()
                elif qos == 0 and time.monotonic() - stalled_since > _QOS0_STALL_S:
                    skipped += sent - slowest  # the broker dropped them: stop waiting
                read_acks(0.0005)
            else:  # ahead of the rate: wait for the next slot, reading acks meanwhile
                wait = (sent / rate - (now - t0) / 1e9) if rate else 0.0
                read_acks(max(0.0, min(wait, 0.005)))
            continue
        frames = []
        for _ in range(count):
            pid = pid % 0xFFFF + 1
            frames.append(build(pid, monotonic_ns()))
        sock.sendall(b"".join(frames))
        last_send = monotonic_ns()
        sent += count
        if qos:
            inflight += count
            read_acks(0.0)
    result.sent, result.t_first_ns, result.t_last_ns = sent, t0, last_send
    deadline = time.monotonic() + HANDSHAKE_TIMEOUT_S
    while qos and inflight > 0 and time.monotonic() < deadline:
        read_acks(0.2)
    result.completed = completed if qos else sent
    result.cpu_s, result.wall_s = cpu_seconds() - cpu0, time.monotonic() - wall0
