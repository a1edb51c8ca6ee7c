"""AMQP 0-9-1 framing: a bounded byte buffer that yields raw frames, and frame encoders.

Wire format (spec 2.3.5): ``type:octet channel:short size:long payload:size frame-end:0xCE``.
The reader checks the frame type as soon as the 7-byte header is in, rejects a size above the
negotiated frame-max *before* buffering the payload, and checks the end octet; any violation is
a :class:`FrameError` (501), after which the stream cannot be resynchronised.

Method payloads and content headers are decoded with pamqp.  pamqp's decoders were written for
trusted peers and can raise almost anything on hostile bytes (``ValueError``, ``struct.error``,
``OverflowError`` from timestamps, ``RecursionError`` from deeply nested tables …); the decode
helpers here turn every one of them into our typed :class:`AMQPConnectionError`.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from pamqp import base, body, commands, header
from pamqp import frame as pamqp_frame

from handlers.amqp.errors import AMQPConnectionError, FrameError, LocalProtocolError, ReplyCode

FRAME_METHOD = 1
FRAME_HEADER = 2
FRAME_BODY = 3
FRAME_HEARTBEAT = 8
FRAME_END = 0xCE
#: Bytes a frame adds around its payload: 7-byte header plus the end octet.
FRAME_OVERHEAD = 8
#: The smallest frame-max a peer may negotiate (spec 4.2.3).
FRAME_MIN_SIZE = 4096
#: The only protocol header we speak: AMQP 0-9-1.
PROTOCOL_HEADER = b"AMQP\x00\x00\x09\x01"

_FRAME_TYPES = frozenset({FRAME_METHOD, FRAME_HEADER, FRAME_BODY, FRAME_HEARTBEAT})
_HEADER = struct.Struct(">BHI")
_METHOD_ID = struct.Struct(">HH")
_CONTENT_HEADER = struct.Struct(">HHQ")
_HEARTBEAT = bytes([FRAME_HEARTBEAT, 0, 0, 0, 0, 0, 0, FRAME_END])


@dataclass(frozen=True, slots=True)
class RawFrame:
    """One frame as read off the wire, payload not yet decoded."""

    frame_type: int
    channel: int
    payload: bytes


class FrameReader:
    """Accumulates received bytes (bounded) and cuts them into :class:`RawFrame` objects.

    ``max_buffer`` bounds the unparsed bytes: the caller must drain frames with
    :meth:`next_frame` before feeding more once it is reached (``feed`` raises
    :class:`LocalProtocolError` otherwise).  A single incomplete frame never needs more than
    ``frame_max`` bytes, since oversized frames are rejected from their header alone.
    """

    def __init__(self, frame_max: int, max_buffer: int) -> None:
        if frame_max < FRAME_MIN_SIZE:
            raise ValueError(f"frame_max must be >= {FRAME_MIN_SIZE}")
        self._buf = bytearray()
        self.frame_max = frame_max
        self.max_buffer = max(max_buffer, frame_max)

    @property
    def buffered(self) -> int:
        """How many received bytes are not yet consumed."""
        return len(self._buf)

    def feed(self, data: bytes) -> None:
        """Append received bytes."""
        if len(self._buf) + len(data) > self.max_buffer + self.frame_max:
            raise LocalProtocolError(
                f"receive buffer would hold {len(self._buf) + len(data)} bytes: "
                "drain next_event() before feeding more data"
            )
        self._buf += data

    def discard(self) -> None:
        """Drop everything buffered (after a fatal framing error)."""
        self._buf.clear()

    def read_protocol_header(self) -> bytes | None:
        """The 8-byte protocol header, or ``None`` if more bytes are needed.

        Returns early with fewer than 8 bytes as soon as they cannot be a prefix of
        :data:`PROTOCOL_HEADER` (an HTTP request, TLS hello …), so the caller can answer at once.
        """
        head = bytes(self._buf[:8])
        if len(head) < 8 and PROTOCOL_HEADER.startswith(head):
            return None
        del self._buf[:8]
        return head

    def next_frame(self) -> RawFrame | None:
        """The next complete frame, or ``None`` if more bytes are needed.

        Raises :class:`FrameError` for an unknown frame type, an oversized frame or a bad end
        octet.
        """
        buf = self._buf
        if len(buf) < 7:
            return None
        frame_type, channel, size = _HEADER.unpack_from(buf)
        if frame_type not in _FRAME_TYPES:
            raise FrameError(f"unknown frame type {frame_type}")
        if size > self.frame_max - FRAME_OVERHEAD:
            raise FrameError(
                f"frame size {size} exceeds frame_max {self.frame_max} "
                f"(payload limit {self.frame_max - FRAME_OVERHEAD})"
            )
        end = 7 + size
        if len(buf) < end + 1:
            return None
        if buf[end] != FRAME_END:
            raise FrameError(f"bad frame end octet 0x{buf[end]:02x} (expected 0xce)")
        payload = bytes(buf[7:end])
        del buf[: end + 1]
        return RawFrame(frame_type, channel, payload)


def method_ids(payload: bytes) -> tuple[int, int]:
    """``(class_id, method_id)`` of a method frame payload; (0, 0) if it is too short."""
    if len(payload) < 4:
        return 0, 0
    class_id, method_id = _METHOD_ID.unpack_from(payload)
    return class_id, method_id


def decode_method(payload: bytes) -> base.Frame:
    """Decode a method frame payload with pamqp.

    Unknown class/method ids → 540 NOT_IMPLEMENTED; undecodable arguments → 501 FRAME_ERROR
    (RabbitMQ answers "cannot decode" with frame_error too).
    """
    if len(payload) < 4:
        raise AMQPConnectionError(ReplyCode.FRAME_ERROR, "method frame shorter than 4 bytes")
    class_id, method_id = method_ids(payload)
    method_class: type[base.Frame] | None = commands.INDEX_MAPPING.get((class_id << 16) | method_id)
    if method_class is None:
        raise AMQPConnectionError(
            ReplyCode.NOT_IMPLEMENTED,
            f"unknown method class {class_id} method {method_id}",
            class_id,
            method_id,
        )
    # Bypass __init__: it validates defaults and warns for deprecated methods; unmarshal sets
    # every attribute anyway.
    method = method_class.__new__(method_class)
    try:
        method.unmarshal(payload[4:])
    except Exception as exc:  # pamqp raises arbitrary types on hostile input; see module doc
        raise AMQPConnectionError(
            ReplyCode.FRAME_ERROR,
            f"cannot decode {method.name}: {type(exc).__name__}: {exc}",
            class_id,
            method_id,
        ) from None
    return method


def decode_content_header(payload: bytes) -> tuple[int, int, commands.Basic.Properties]:
    """Decode a content header payload: ``(class_id, body_size, properties)``."""
    if len(payload) < _CONTENT_HEADER.size + 2:
        raise AMQPConnectionError(ReplyCode.FRAME_ERROR, "content header frame too short")
    class_id, _weight, body_size = _CONTENT_HEADER.unpack_from(payload)
    content = header.ContentHeader()
    try:
        content.unmarshal(payload)
    except Exception as exc:  # pamqp raises arbitrary types on hostile input; see module doc
        raise AMQPConnectionError(
            ReplyCode.FRAME_ERROR,
            f"cannot decode content header properties: {type(exc).__name__}: {exc}",
        ) from None
    return class_id, body_size, content.properties


def encode_method(channel: int, method: base.Frame) -> bytes:
    """One method frame.  Invalid method arguments are our caller's bug: LocalProtocolError."""
    try:
        return pamqp_frame.marshal(method, channel)
    except (ValueError, TypeError, struct.error) as exc:
        raise LocalProtocolError(f"cannot encode {method.name}: {exc}") from exc


def encode_content(
    channel: int,
    method: base.Frame,
    properties: commands.Basic.Properties,
    payload: bytes,
    frame_max: int,
) -> bytes:
    """Method frame, content header and body frames split to fit ``frame_max``."""
    if frame_max < FRAME_MIN_SIZE:
        raise LocalProtocolError(f"frame_max {frame_max} below {FRAME_MIN_SIZE}")
    parts = [encode_method(channel, method)]
    content = header.ContentHeader(0, len(payload), properties)
    try:
        parts.append(pamqp_frame.marshal(content, channel))
    except (ValueError, TypeError, struct.error) as exc:
        raise LocalProtocolError(f"cannot encode content properties: {exc}") from exc
    chunk = frame_max - FRAME_OVERHEAD
    view = memoryview(payload)
    for start in range(0, len(payload), chunk):
        parts.append(
            pamqp_frame.marshal(body.ContentBody(bytes(view[start : start + chunk])), channel)
        )
    return b"".join(parts)


def encode_heartbeat() -> bytes:
    """A heartbeat frame (always on channel 0)."""
    return _HEARTBEAT
