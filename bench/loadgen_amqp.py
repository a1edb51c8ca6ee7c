"""A lean AMQP 0-9-1 load generator on pamqp frames, one process per client.

The handshake (Connection.Start … Channel.OpenOk, Confirm.Select, Queue.Declare, Basic.Qos,
Basic.Consume) is marshalled and unmarshalled with pamqp.  On the hot path the publisher sends
a Basic.Publish method frame and content header encoded once by pamqp, followed by a body frame
whose first 8 bytes are the send time (``time.monotonic_ns()``, CLOCK_MONOTONIC, the same clock
in every process); the consumer cuts frames with one ``struct`` call each and reads only what
it needs (the delivery tag of Basic.Deliver, the timestamp of the body).  Confirms (Basic.Ack/
Nack from the broker) and consumer acks (Basic.Ack, ``multiple``) are pipelined within bounded
windows: ``window`` unconfirmed publications, ``prefetch`` unacknowledged deliveries.

:func:`run_consumer` and :func:`run_publisher` are meant to run in their own processes and put
one result on a queue.  Blocking sockets with ``select`` for pacing; no event loop.
"""

from __future__ import annotations

import select
import socket
import struct
import sys
import time
import traceback
from collections.abc import MutableSequence
from dataclasses import dataclass
from typing import Any

from loadgen_common import ReceiverResult, ResultQueue, SharedInt, cpu_seconds
from pamqp import body, commands, header
from pamqp import frame as amqp_frame
from pamqp.base import Frame

_FRAME = struct.Struct(">BHI")
_IDS = struct.Struct(">HH")
_TAG = struct.Struct(">Q")
_TS = struct.Struct(">Q")
#: a whole Basic.Ack method frame on channel 1: frame header, class/method, tag, bits, end
_ACK_FRAME = struct.Struct(">BHIHHQBB")
_FRAME_METHOD, _FRAME_HEADER, _FRAME_BODY, _FRAME_HEARTBEAT = 1, 2, 3, 8
_FRAME_END = 0xCE
_DELIVER = (60, 60)
_ACK = (60, 80)
_NACK = (60, 120)
_CHANNEL_CLOSE = (20, 40)
_CONNECTION_CLOSE = (10, 50)
_CHANNEL = 1
_RECV_SIZE = 1 << 18
_BATCH = 64
#: Latency samples kept per consumer (bounded memory).
MAX_SAMPLES = 1_000_000
DRAIN_TIMEOUT_S = 3.0
#: The most a subscriber waits after the publisher finished; what has not arrived is "missing".
MAX_DRAIN_S = 10.0
HANDSHAKE_TIMEOUT_S = 10.0
FRAME_MAX = 131072


@dataclass(frozen=True, slots=True)
class Target:
    """Broker address and PLAIN credentials (guest/guest from loopback works everywhere)."""

    host: str
    port: int
    username: str = "guest"
    password: str = "guest"
    vhost: str = "/"


@dataclass(frozen=True, slots=True)
class QueuePlan:
    """The queue under test and how messages are published to it."""

    queue: str
    size: int
    persistent: bool
    duration: float
    rate: float | None = None
    window: int = 1000
    prefetch: int = 1000
    #: Messages the publisher may be ahead of the consumer (end-to-end flow control).
    e2e_window: int = 5000
    #: Ack each delivery with its own Basic.Ack (multiple=false), as pika, aio-pika and kombu
    #: do; the acks of one read go out in one write.  False: one ``multiple`` ack per
    #: prefetch/4 deliveries.
    single_acks: bool = False


@dataclass(slots=True)
class PublisherResult:
    """What the publisher did; times are ``time.monotonic_ns()``."""

    sent: int = 0
    confirmed: int = 0
    nacked: int = 0
    t_first_ns: int = 0
    t_last_ns: int = 0
    cpu_s: float = 0.0
    wall_s: float = 0.0
    error: str = ""


class _Conn:
    """One blocking AMQP connection with channel 1 open; pamqp for everything but the hot path."""

    def __init__(self, target: Target, name: str) -> None:
        self.sock = socket.create_connection((target.host, target.port),
                                             timeout=HANDSHAKE_TIMEOUT_S)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = bytearray()
        self.sock.sendall(header.ProtocolHeader().marshal())
        self.expect(0, commands.Connection.Start)
        self.send(0, commands.Connection.StartOk(
            client_properties={"product": "polystream-bench", "connection_name": name,
                               "capabilities": {"publisher_confirms": True,
                                                "basic.nack": True}},
            mechanism="PLAIN", response=f"\0{target.username}\0{target.password}",
            locale="en_US"))
        tune = self.expect(0, commands.Connection.Tune)
        frame_max = min(tune.frame_max or FRAME_MAX, FRAME_MAX)
        self.send(0, commands.Connection.TuneOk(channel_max=tune.channel_max or 2047,
                                                frame_max=frame_max, heartbeat=0))
        self.send(0, commands.Connection.Open(virtual_host=target.vhost))
        self.expect(0, commands.Connection.OpenOk)
        self.send(_CHANNEL, commands.Channel.Open())
        self.expect(_CHANNEL, commands.Channel.OpenOk)
        self.frame_max = frame_max

    def send(self, channel: int, method: Frame) -> None:
        self.sock.sendall(amqp_frame.marshal(method, channel))

    def expect(self, channel: int, kind: type[Any]) -> Any:
        """Read frames until a method of ``kind`` arrives on ``channel``; a close is an error."""
        while True:
            got = self._next_frame()
            if got is None:
                data = self.sock.recv(_RECV_SIZE)
                if not data:
                    raise ConnectionError(f"connection closed waiting for {kind.__name__}")
                self.buf += data
                continue
            ch, value = got
            if isinstance(value, commands.Connection.Close | commands.Channel.Close):
                raise ConnectionError(f"broker closed: {value.reply_code} {value.reply_text}")
            if ch == channel and isinstance(value, kind):
                return value

    def _next_frame(self) -> tuple[int, object] | None:
        if len(self.buf) < _FRAME.size:
            return None
        _, _, size = _FRAME.unpack_from(self.buf)
        if len(self.buf) < size + 8:
            return None
        consumed, channel, value = amqp_frame.unmarshal(bytes(self.buf[: size + 8]))
        del self.buf[:consumed]
        return channel, value

    def close(self) -> None:
        try:
            self.sock.settimeout(1.0)
            self.send(0, commands.Connection.Close(reply_code=200, reply_text="bench done",
                                                   class_id=0, method_id=0))
            deadline = time.monotonic() + 1.0
            while time.monotonic() < deadline:  # CloseOk, so the broker logs no error
                data = self.sock.recv(_RECV_SIZE)
                if not data:
                    break
        except Exception:  # closing is best effort: the figures are already taken
            pass
        finally:
            self.sock.close()


def _frames(buf: bytearray, pos: int) -> tuple[int, int, int]:
    """(frame type, payload offset, end offset) of the frame at ``pos``; end -1 = partial."""
    if len(buf) - pos < 7:
        return 0, 0, -1
    ftype, _, size = _FRAME.unpack_from(buf, pos)
    end = pos + 8 + size
    if end > len(buf):
        return 0, 0, -1
    if buf[end - 1] != _FRAME_END:
        raise ConnectionError("frame end octet missing")
    return ftype, pos + 7, end


def _method_ids(buf: bytearray, offset: int) -> tuple[int, int]:
    ids: tuple[int, int] = _IDS.unpack_from(buf, offset)
    return ids


def run_consumer(index: int, target: Target, plan: QueuePlan, expected: SharedInt,
                 progress: MutableSequence[int], results: ResultQueue, *,
                 keep_latency: bool) -> None:
    """Declare ``plan.queue``, consume it, report ``("ready", index, error)``; stop at expected.

    ``expected.value`` is -1 while the publisher runs; then the number of messages it sent.
    The queue is deleted at the end.
    """
    result = ReceiverResult(index)
    conn: _Conn | None = None
    ready = False
    try:
        conn = _Conn(target, f"bench-consumer-{index}")
        conn.send(_CHANNEL, commands.Queue.Declare(queue=plan.queue, durable=plan.persistent,
                                                   exclusive=False, auto_delete=False))
        conn.expect(_CHANNEL, commands.Queue.DeclareOk)
        conn.send(_CHANNEL, commands.Basic.Qos(prefetch_count=plan.prefetch))
        conn.expect(_CHANNEL, commands.Basic.QosOk)
        conn.send(_CHANNEL, commands.Basic.Consume(queue=plan.queue, consumer_tag="bench",
                                                   no_ack=False))
        conn.expect(_CHANNEL, commands.Basic.ConsumeOk)
        results.put(("ready", index, ""))
        ready = True
        _consume(conn, plan, expected, progress, result, keep_latency)
        _delete_queue(conn, plan.queue)
    except Exception:
        result.error = traceback.format_exc(limit=3)
        if not ready:
            results.put(("ready", index, result.error))
    finally:
        if conn is not None:
            conn.close()
        results.put(("sub", result))


def _delete_queue(conn: _Conn, name: str) -> None:
    """Best-effort clean-up: a broker that cannot delete the queue does not void the figures."""
    try:
        conn.send(_CHANNEL, commands.Queue.Delete(queue=name))
        conn.sock.settimeout(HANDSHAKE_TIMEOUT_S)
        conn.expect(_CHANNEL, commands.Queue.DeleteOk)
    except Exception as exc:
        print(f"bench: queue.delete {name} failed: {exc!r}", file=sys.stderr)


def _consume(conn: _Conn, plan: QueuePlan, expected: SharedInt,
             progress: MutableSequence[int], result: ReceiverResult, keep_latency: bool) -> None:
    index = result.index
    sock = conn.sock
    sock.settimeout(0.2)
    buf = conn.buf
    lat = result.latencies_us
    ack_every = max(1, plan.prefetch // 4)
    received = unacked = last_tag = 0
    first_ns = last_ns = 0
    cpu0, wall0 = cpu_seconds(), time.monotonic()
    idle_since = time.monotonic()
    drain_until = 0.0
    monotonic_ns = time.monotonic_ns
    unpack_ts = _TS.unpack_from

    single_acks = plan.single_acks
    tags: list[int] = []
    pack_ack = _ACK_FRAME.pack

    def ack() -> None:
        nonlocal unacked
        if single_acks:
            sock.sendall(b"".join([pack_ack(_FRAME_METHOD, _CHANNEL, 13, 60, 80, t, 0, _FRAME_END)
                                   for t in tags]))
            tags.clear()
        else:
            conn.send(_CHANNEL, commands.Basic.Ack(delivery_tag=last_tag, multiple=True))
        unacked = 0

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
            if unacked:
                ack()
            if target_count >= 0 and time.monotonic() - idle_since > DRAIN_TIMEOUT_S:
                break
            continue
        if not data:
            raise ConnectionError("broker closed the connection")
        now = monotonic_ns()
        idle_since = time.monotonic()
        buf += data
        pos = got = 0
        while True:
            ftype, payload, end = _frames(buf, pos)
            if end < 0:
                break
            if ftype == _FRAME_BODY:
                got += 1
                if keep_latency and len(lat) < MAX_SAMPLES:
                    lat.append((now - unpack_ts(buf, payload)[0]) // 1000)
            elif ftype == _FRAME_METHOD:
                ids = _method_ids(buf, payload)
                if ids == _DELIVER:
                    tag_at = payload + 5 + buf[payload + 4]  # after the consumer-tag shortstr
                    last_tag = _TAG.unpack_from(buf, tag_at)[0]
                    unacked += 1
                    if single_acks:
                        tags.append(last_tag)
                elif ids in (_CHANNEL_CLOSE, _CONNECTION_CLOSE):
                    raise ConnectionError(f"broker closed the channel: {bytes(buf[pos:end])!r}")
            pos = end
        del buf[:pos]
        if got:
            if not first_ns:
                first_ns = now
            received += got
            progress[index] = received
            last_ns = now
        if unacked >= ack_every or (single_acks and unacked):
            ack()
    if unacked:
        ack()
    result.received, result.t_first_ns, result.t_last_ns = received, first_ns, last_ns
    result.cpu_s, result.wall_s = cpu_seconds() - cpu0, time.monotonic() - wall0


def run_publisher(target: Target, plan: QueuePlan, expected: SharedInt,
                  progress: MutableSequence[int], results: ResultQueue) -> None:
    """Publish per ``plan`` with confirms, wait for the outstanding ones, set ``expected``."""
    result = PublisherResult()
    conn: _Conn | None = None
    try:
        conn = _Conn(target, "bench-publisher")
        conn.send(_CHANNEL, commands.Confirm.Select())
        conn.expect(_CHANNEL, commands.Confirm.SelectOk)
        _publish(conn, plan, progress, result)
    except Exception:
        result.error = traceback.format_exc(limit=3)
    finally:
        expected.value = result.sent
        if conn is not None:
            conn.close()
        results.put(("pub", result))


class _Confirms:
    """Confirmed publications counted from Basic.Ack/Nack, ``multiple`` or single."""

    def __init__(self) -> None:
        self.upto = 0
        self.singles: set[int] = set()
        self.nacked = 0

    def confirm(self, tag: int, multiple: bool, nack: bool) -> None:
        if nack:
            self.nacked += (tag - self.upto - self._singles_upto(tag)) if multiple else 1
        if multiple:
            if tag > self.upto:
                self.singles = {t for t in self.singles if t > tag}
                self.upto = tag
        elif tag > self.upto:
            self.singles.add(tag)

    def _singles_upto(self, tag: int) -> int:
        return sum(1 for t in self.singles if t <= tag)

    @property
    def count(self) -> int:
        return self.upto + len(self.singles)


def _templates(plan: QueuePlan, frame_max: int) -> tuple[bytes, bytes]:
    """(method + content header + body frame header, frame end), encoded once with pamqp."""
    if not 8 <= plan.size <= frame_max - 8:
        raise ValueError(f"payload size must be 8..{frame_max - 8} bytes (one body frame)")
    props = commands.Basic.Properties(delivery_mode=2 if plan.persistent else 1)
    method = amqp_frame.marshal(commands.Basic.Publish(exchange="", routing_key=plan.queue),
                                _CHANNEL)
    content = amqp_frame.marshal(header.ContentHeader(0, plan.size, props), _CHANNEL)
    sample = amqp_frame.marshal(body.ContentBody(bytes(plan.size)), _CHANNEL)
    body_head, end = sample[:7], sample[-1:]
    if body_head != _FRAME.pack(_FRAME_BODY, _CHANNEL, plan.size) or end[0] != _FRAME_END:
        raise AssertionError("unexpected body frame layout from pamqp")
    return method + content + body_head, end


def _publish(
    conn: _Conn, plan: QueuePlan, progress: MutableSequence[int], result: PublisherResult,
) -> None:
    head, end = _templates(plan, conn.frame_max)
    pad = bytes(plan.size - _TS.size) + end
    sock = conn.sock
    buf = conn.buf
    confirms = _Confirms()
    monotonic_ns = time.monotonic_ns
    pack_ts = _TS.pack
    sent = 0
    cpu0, wall0 = cpu_seconds(), time.monotonic()
    t0 = monotonic_ns()
    stop_ns = t0 + int(plan.duration * 1e9)
    rate = plan.rate
    last_send = t0

    def read_confirms(timeout: float) -> None:
        readable, _, _ = select.select([sock], [], [], timeout)
        if not readable:
            return
        data = sock.recv(_RECV_SIZE)
        if not data:
            raise ConnectionError("broker closed the connection")
        buf.extend(data)
        pos = 0
        while True:
            ftype, payload, fend = _frames(buf, pos)
            if fend < 0:
                break
            if ftype == _FRAME_METHOD:
                ids = _method_ids(buf, payload)
                if ids in (_ACK, _NACK):
                    tag = _TAG.unpack_from(buf, payload + 4)[0]
                    confirms.confirm(tag, bool(buf[payload + 12] & 1), ids == _NACK)
                elif ids in (_CHANNEL_CLOSE, _CONNECTION_CLOSE):
                    raise ConnectionError(f"broker closed the channel: {bytes(buf[pos:fend])!r}")
            pos = fend
        del buf[:pos]

    while True:
        now = monotonic_ns()
        if now >= stop_ns:
            break
        unconfirmed = sent - confirms.count
        room = min(plan.window - unconfirmed, plan.e2e_window - (sent - min(progress)))
        if rate is None:
            count = min(_BATCH, room)
        else:
            count = min(_BATCH, room, int(rate * (now - t0) / 1e9) + 1 - sent)
        if count <= 0:
            if unconfirmed >= plan.window:
                read_confirms(HANDSHAKE_TIMEOUT_S)
            elif room <= 0:  # too far ahead of the consumer
                read_confirms(0.0005)
            else:
                wait = (sent / rate - (now - t0) / 1e9) if rate else 0.0
                read_confirms(max(0.0, min(wait, 0.005)))
            continue
        sock.sendall(b"".join([head + pack_ts(monotonic_ns()) + pad for _ in range(count)]))
        last_send = monotonic_ns()
        sent += count
        read_confirms(0.0)
    result.sent, result.t_first_ns, result.t_last_ns = sent, t0, last_send
    deadline = time.monotonic() + HANDSHAKE_TIMEOUT_S
    while confirms.count < sent and time.monotonic() < deadline:
        read_confirms(0.2)
    result.confirmed, result.nacked = confirms.count, confirms.nacked
    result.cpu_s, result.wall_s = cpu_seconds() - cpu0, time.monotonic() - wall0
