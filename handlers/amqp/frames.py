"""AMQP 0-9-1 framing: a bounded byte buffer that yields raw frames, and frame encoders.

Wire format (spec 2.3.5): ``type:octet channel:short size:long payload:size frame-end:0xCE``.
The reader checks the frame type as soon as the 7-byte header is in, rejects a size above the
negotiated frame-max *before* buffering the payload, and checks the end octet; any violation is
a :class:`FrameError` (501), after which the stream cannot be resynchronised.

Method payloads and content headers are decoded with pamqp.  pamqp's decoders were written for
trusted peers and can raise almost anything on hostile bytes (``ValueError``, ``struct.error``,
``OverflowError`` from timestamps, ``RecursionError`` from deeply nested tables …); the decode
helpers here turn every one of them into our typed :class:`AMQPConnectionError`.

Hot path: ``basic.publish`` method payloads and content headers whose properties are all short
strings or octets are decoded here with :mod:`struct` and slicing when the bytes are well-formed
and consumed exactly; anything else (headers tables, timestamps, trailing bytes, bad UTF-8,
truncation) falls back to pamqp, so every error and every edge case keeps pamqp's answer;
``basic.ack`` (fixed layout) is read the same way.  :meth:`FrameReader.peek_publish` finds a
whole publish (method, header and body frames) in the buffer so the connection can take it in
one step.  On the way out, :func:`encode_deliver` and :class:`DeliverEncoder` (which keeps the
per-consumer parts encoded) build ``basic.deliver`` + content header + body frames into one
buffer, byte for byte what pamqp would marshal.
"""

from __future__ import annotations

import struct
from typing import NamedTuple

from pamqp import base, commands, header
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
_END = bytes([FRAME_END])
_SHORT = struct.Struct(">H")
_LONGLONG = struct.Struct(">Q")
_SIGNED_LONGLONG = struct.Struct(">q")
_PUBLISH_IDS = _METHOD_ID.pack(60, 40)
_DELIVER_IDS = _METHOD_ID.pack(60, 60)
_ACK_IDS = _METHOD_ID.pack(60, 80)
_BASIC_CLASS = 60
#: a ``basic.ack`` method frame: type, channel, size 13, class 60 method 80 | tag, bits, end
_METHOD_TYPE = bytes([FRAME_METHOD])
_ACK_HEAD_TAIL = struct.pack(">IHH", 13, 60, 80)
_ACK_HEAD_SIZE = 11
_ACK_TAIL = struct.Struct(">qBB")  # the tag signed, as pamqp reads it
_ACK_FRAME_SIZE = _ACK_HEAD_SIZE + _ACK_TAIL.size
_NO_PROPERTIES = b"\x00\x00"
# Basic properties in wire order: (attribute, flag bit, is a shortstr (else an octet)).  The
# headers table (0x2000) and timestamp (0x0040) are left to pamqp.
_PLAIN_PROPERTIES: tuple[tuple[str, int, bool], ...] = (
    ("content_type", 0x8000, True),
    ("content_encoding", 0x4000, True),
    ("delivery_mode", 0x1000, False),
    ("priority", 0x0800, False),
    ("correlation_id", 0x0400, True),
    ("reply_to", 0x0200, True),
    ("expiration", 0x0100, True),
    ("message_id", 0x0080, True),
    ("message_type", 0x0020, True),
    ("user_id", 0x0010, True),
    ("app_id", 0x0008, True),
    ("cluster_id", 0x0004, True),
)
# Flags the fast decoder leaves to pamqp: headers, timestamp, the reserved bit, continuation.
_SLOW_FLAGS = 0x2000 | 0x0040 | 0x0002 | 0x0001


class RawFrame(NamedTuple):
    """One frame as read off the wire, payload not yet decoded (a named tuple: one is made per
    frame, and a tuple costs less than a frozen dataclass)."""

    frame_type: int
    channel: int
    payload: bytes


class FrameReader:
    """Accumulates received bytes (bounded) and cuts them into :class:`RawFrame` objects.

    ``max_buffer`` bounds the unparsed bytes: the caller must drain frames with
    :meth:`next_frame` before feeding more once it is reached (``feed`` raises
    :class:`LocalProtocolError` otherwise).  A single incomplete frame never needs more than
    ``frame_max`` bytes, since oversized frames are rejected from their header alone.

    How it works: the buffer is an immutable ``bytes`` with a read position.  Frames are cut
    by slicing (one copy per payload, none for the buffer); ``feed`` takes received bytes as
    they are when everything before was consumed, and otherwise copies only the unread tail.
    """

    __slots__ = ("_buf", "_pos", "frame_max", "max_buffer")

    def __init__(self, frame_max: int, max_buffer: int) -> None:
        if frame_max < FRAME_MIN_SIZE:
            raise ValueError(f"frame_max must be >= {FRAME_MIN_SIZE}")
        self._buf = b""
        self._pos = 0
        self.frame_max = frame_max
        self.max_buffer = max(max_buffer, frame_max)

    @property
    def buffered(self) -> int:
        """How many received bytes are not yet consumed."""
        return len(self._buf) - self._pos

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        """Append received bytes."""
        held = len(self._buf) - self._pos
        if held + len(data) > self.max_buffer + self.frame_max:
            raise LocalProtocolError(
                f"receive buffer would hold {held + len(data)} bytes: "
                "drain next_event() before feeding more data"
            )
        if held:
            self._buf = self._buf[self._pos :] + data
        else:
            self._buf = data if type(data) is bytes else bytes(data)
        self._pos = 0

    def discard(self) -> None:
        """Drop everything buffered (after a fatal framing error)."""
        self._buf = b""
        self._pos = 0

    def read_protocol_header(self) -> bytes | None:
        """The 8-byte protocol header, or ``None`` if more bytes are needed.

        Returns early with fewer than 8 bytes as soon as they cannot be a prefix of
        :data:`PROTOCOL_HEADER` (an HTTP request, TLS hello …), so the caller can answer at once.
        """
        pos = self._pos
        head = self._buf[pos : pos + 8]
        if len(head) < 8 and PROTOCOL_HEADER.startswith(head):
            return None
        self._pos = pos + len(head)
        return head

    def next_frame(self) -> RawFrame | None:
        """The next complete frame, or ``None`` if more bytes are needed.

        Raises :class:`FrameError` for an unknown frame type, an oversized frame or a bad end
        octet.
        """
        buf = self._buf
        pos = self._pos
        if len(buf) - pos < 7:
            return None
        frame_type, channel, size = _HEADER.unpack_from(buf, pos)
        if frame_type not in _FRAME_TYPES:
            raise FrameError(f"unknown frame type {frame_type}")
        if size > self.frame_max - FRAME_OVERHEAD:
            raise FrameError(
                f"frame size {size} exceeds frame_max {self.frame_max} "
                f"(payload limit {self.frame_max - FRAME_OVERHEAD})"
            )
        end = pos + 7 + size
        if len(buf) <= end:
            return None
        if buf[end] != FRAME_END:
            raise FrameError(f"bad frame end octet 0x{buf[end]:02x} (expected 0xce)")
        self._pos = end + 1
        return RawFrame(frame_type, channel, buf[pos + 7 : end])


    def peek_publish(self) -> tuple[int, bytes, bytes, bytes, int] | None:
        """A whole ``basic.publish`` at the read position, without consuming it.

        When the buffer starts with a well-formed ``basic.publish`` method frame, its content
        header and (unless the body is empty) exactly one body frame holding the whole body,
        all on one channel and within frame-max: ``(channel, method payload, content header
        payload, body, end)``; pass ``end`` to :meth:`commit` to consume them.  ``None`` for
        anything else (more bytes needed, another frame, a framing error): read frame by frame
        with :meth:`next_frame` then, which judges it.
        """
        buf = self._buf
        pos = self._pos
        size = len(buf)
        limit = self.frame_max - FRAME_OVERHEAD
        if size - pos < 11:
            return None
        frame_type, channel, length = _HEADER.unpack_from(buf, pos)
        method_end = pos + 7 + length
        if (frame_type != FRAME_METHOD or length > limit or size <= method_end + 7
                or buf[method_end] != FRAME_END or buf[pos + 7 : pos + 11] != _PUBLISH_IDS):
            return None
        at = method_end + 1
        frame_type, header_channel, length = _HEADER.unpack_from(buf, at)
        header_end = at + 7 + length
        if (frame_type != FRAME_HEADER or header_channel != channel or length > limit
                or length < _CONTENT_HEADER.size + 2 or size <= header_end
                or buf[header_end] != FRAME_END):
            return None
        body_size = _LONGLONG.unpack_from(buf, at + 11)[0]
        method = buf[pos + 7 : method_end]
        content = buf[at + 7 : header_end]
        at = header_end + 1
        if not body_size:
            return channel, method, content, b"", at
        if size < at + 7:
            return None
        frame_type, body_channel, length = _HEADER.unpack_from(buf, at)
        body_end = at + 7 + length
        if (frame_type != FRAME_BODY or body_channel != channel or length != body_size
                or length > limit or size <= body_end or buf[body_end] != FRAME_END):
            return None
        return channel, method, content, buf[at + 7 : body_end], body_end + 1

    def peek_acks(self) -> tuple[int, list[int], int] | None:
        """A run of ``basic.ack`` frames (``multiple=false``) at the read position, unconsumed.

        ``(channel, delivery tags, end)`` for the longest run of whole, well-formed ack
        frames on the channel of the first; pass ``end`` to :meth:`commit` to consume them.
        ``None`` unless the first frame is one (read frame by frame then).
        """
        buf = self._buf
        pos = self._pos
        size = len(buf)
        if size - pos < _ACK_FRAME_SIZE:
            return None
        head = buf[pos : pos + _ACK_HEAD_SIZE]
        if head[:1] != _METHOD_TYPE or head[3:] != _ACK_HEAD_TAIL:
            return None
        tags: list[int] = []
        unpack = _ACK_TAIL.unpack_from
        while True:
            tag, bits, end = unpack(buf, pos + _ACK_HEAD_SIZE)
            if bits or end != FRAME_END:
                break  # multiple=true or anything odd: frame by frame
            tags.append(tag)
            pos += _ACK_FRAME_SIZE
            if size - pos < _ACK_FRAME_SIZE or buf[pos : pos + _ACK_HEAD_SIZE] != head:
                break
        if not tags:
            return None
        return _SHORT.unpack_from(head, 1)[0], tags, pos

    def commit(self, end: int) -> None:
        """Consume up to ``end`` as returned by :meth:`peek_publish` or :meth:`peek_acks`."""
        self._pos = end


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
    ids = payload[:4]
    if ids == _PUBLISH_IDS:
        publish = decode_publish_fast(payload)
        if publish is not None:
            return publish
    elif ids == _ACK_IDS and len(payload) == 13:  # basic.ack: delivery-tag, multiple bit
        ack = commands.Basic.Ack.__new__(commands.Basic.Ack)
        ack.delivery_tag = _SIGNED_LONGLONG.unpack_from(payload, 4)[0]  # as pamqp reads it
        ack.multiple = bool(payload[12] & 1)
        return ack
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


def decode_publish_fast(payload: bytes) -> commands.Basic.Publish | None:
    """``basic.publish`` from a method payload (ids included) without pamqp.

    ``None`` unless the payload is exactly one well-formed ``basic.publish`` with UTF-8 names:
    the caller then asks pamqp (:func:`decode_method`), which has the final word on the rest.
    """
    size = len(payload)
    if size < 9 or payload[:4] != _PUBLISH_IDS:
        return None
    routing_at = 7 + payload[6]
    if routing_at >= size:
        return None
    bits_at = routing_at + 1 + payload[routing_at]
    if bits_at + 1 != size:
        return None
    try:
        exchange = payload[7:routing_at].decode("utf-8")
        routing_key = payload[routing_at + 1 : bits_at].decode("utf-8")
    except UnicodeDecodeError:
        return None
    bits = payload[bits_at]
    method = commands.Basic.Publish.__new__(commands.Basic.Publish)
    method.ticket = _SHORT.unpack_from(payload, 4)[0]
    method.exchange = exchange
    method.routing_key = routing_key
    method.mandatory = bool(bits & 1)
    method.immediate = bool(bits & 2)
    return method


def decode_properties_fast(payload: bytes) -> commands.Basic.Properties | None:
    """Properties of a content header payload without pamqp, or ``None`` to ask pamqp.

    Handles property lists made only of short strings and octets (no headers table, no
    timestamp) that end exactly at the end of the payload.
    """
    size = len(payload)
    if size < _CONTENT_HEADER.size + 2:
        return None
    flags = _SHORT.unpack_from(payload, _CONTENT_HEADER.size)[0]
    properties = commands.Basic.Properties()
    if not flags:
        return properties if size == _CONTENT_HEADER.size + 2 else None
    if flags & _SLOW_FLAGS:
        return None
    at = _CONTENT_HEADER.size + 2
    try:
        for attribute, flag, is_string in _PLAIN_PROPERTIES:
            if not flags & flag:
                continue
            if is_string:
                end = at + 1 + payload[at]
                if end > size:
                    return None
                setattr(properties, attribute, payload[at + 1 : end].decode("utf-8"))
                at = end
            else:
                setattr(properties, attribute, payload[at])
                at += 1
    except (IndexError, UnicodeDecodeError):
        return None
    return properties if at == size else None


#: A content header payload's fixed start: class id, weight, body size.
CONTENT_HEADER = _CONTENT_HEADER
#: Bytes of a content header payload before its property flags (class, weight, body size).
CONTENT_HEADER_SIZE = _CONTENT_HEADER.size


def decode_content_header(payload: bytes) -> tuple[int, int, commands.Basic.Properties]:
    """Decode a content header payload: ``(class_id, body_size, properties)``."""
    if len(payload) < _CONTENT_HEADER.size + 2:
        raise AMQPConnectionError(ReplyCode.FRAME_ERROR, "content header frame too short")
    class_id, _weight, body_size = _CONTENT_HEADER.unpack_from(payload)
    properties = decode_properties_fast(payload)
    if properties is not None:
        return class_id, body_size, properties
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
    try:
        method_payload = _METHOD_ID.pack(method.index >> 16, method.index & 0xFFFF)
        method_payload += method.marshal()
    except (ValueError, TypeError, struct.error) as exc:
        raise LocalProtocolError(f"cannot encode {method.name}: {exc}") from exc
    return encode_content_frames(
        channel, method_payload, encode_properties(properties), payload, frame_max
    )


def _shortstr(value: str, what: str) -> bytes:
    raw = value.encode("utf-8")
    if len(raw) > 255:
        raise LocalProtocolError(f"{what} is longer than 255 bytes")
    return bytes((len(raw),)) + raw


def _all_none(p: commands.Basic.Properties) -> bool:
    # One expression instead of a getattr loop: most deliveries carry no properties at all.
    return (
        p.content_type is None
        and p.headers is None
        and p.delivery_mode is None
        and p.priority is None
        and p.correlation_id is None
        and p.reply_to is None
        and p.expiration is None
        and p.message_id is None
        and p.timestamp is None
        and p.message_type is None
        and p.content_encoding is None
        and p.user_id is None
        and p.app_id is None
        and p.cluster_id is None
    )


def encode_properties(properties: commands.Basic.Properties | None) -> bytes:
    """Property flags and list of a content header, as pamqp writes them.

    ``None`` means no properties.  Properties with a headers table or a timestamp are written
    by pamqp; the short strings and octets are written here.
    """
    if properties is None or _all_none(properties):
        return _NO_PROPERTIES
    if properties.headers is not None or properties.timestamp is not None:
        try:
            return properties.marshal()
        except (ValueError, TypeError, struct.error) as exc:
            raise LocalProtocolError(f"cannot encode content properties: {exc}") from exc
    flags = 0
    parts: list[bytes] = [b""]
    for attribute, flag, is_string in _PLAIN_PROPERTIES:
        value = getattr(properties, attribute)
        if value is None or value == "":
            continue
        flags |= flag
        try:
            parts.append(_shortstr(value, attribute) if is_string else bytes((value,)))
        except (ValueError, TypeError, AttributeError) as exc:
            raise LocalProtocolError(f"cannot encode content property {attribute}: {exc}") from exc
    if not flags:
        return _NO_PROPERTIES
    parts[0] = _SHORT.pack(flags)
    return b"".join(parts)


def encode_content_frames(
    channel: int, method_payload: bytes, properties: bytes, payload: bytes, frame_max: int
) -> bytes:
    """Method frame (``method_payload`` includes its ids), content header and body frames.

    ``properties`` is what :func:`encode_properties` returns; the body is split to fit
    ``frame_max``.  Everything lands in one buffer.
    """
    if frame_max < FRAME_MIN_SIZE:
        raise LocalProtocolError(f"frame_max {frame_max} below {FRAME_MIN_SIZE}")
    size = len(payload)
    parts: list[bytes | memoryview] = [
        _HEADER.pack(FRAME_METHOD, channel, len(method_payload)),
        method_payload,
        _END,
        _HEADER.pack(FRAME_HEADER, channel, _CONTENT_HEADER.size + len(properties)),
        _CONTENT_HEADER.pack(_BASIC_CLASS, 0, size),
        properties,
        _END,
    ]
    chunk = frame_max - FRAME_OVERHEAD
    if size <= chunk:
        if size:
            parts += (_HEADER.pack(FRAME_BODY, channel, size), payload, _END)
    else:
        view = memoryview(payload)
        for start in range(0, size, chunk):
            piece = view[start : start + chunk]
            parts += (_HEADER.pack(FRAME_BODY, channel, len(piece)), piece, _END)
    return b"".join(parts)


def encode_deliver_method(
    consumer_tag: str, delivery_tag: int, redelivered: bool, exchange: str, routing_key: str
) -> bytes:
    """The payload (ids included) of a ``basic.deliver`` method frame."""
    if not 0 <= delivery_tag <= 0xFFFFFFFFFFFFFFFF:
        raise LocalProtocolError(f"delivery tag {delivery_tag} out of range")
    return b"".join(
        (
            _DELIVER_IDS,
            _shortstr(consumer_tag, "consumer tag"),
            _LONGLONG.pack(delivery_tag),
            b"\x01" if redelivered else b"\x00",
            _shortstr(exchange, "exchange"),
            _shortstr(routing_key, "routing key"),
        )
    )


def encode_deliver(
    channel: int,
    consumer_tag: str,
    delivery_tag: int,
    redelivered: bool,
    exchange: str,
    routing_key: str,
    properties: commands.Basic.Properties | None,
    payload: bytes,
    frame_max: int,
) -> bytes:
    """``basic.deliver`` + content header + body frames, the bytes pamqp would marshal."""
    return encode_content_frames(
        channel,
        encode_deliver_method(consumer_tag, delivery_tag, redelivered, exchange, routing_key),
        encode_properties(properties),
        payload,
        frame_max,
    )


def encode_heartbeat() -> bytes:
    """A heartbeat frame (always on channel 0)."""
    return _HEARTBEAT


_DELIVER_TAIL = struct.Struct(">QB")
_CONTENT_HEADER_FRAME = struct.Struct(">BHIHHQ")
#: (exchange, routing key) prefixes a :class:`DeliverEncoder` keeps before starting over
DELIVER_PREFIX_CACHE = 256


class DeliverEncoder:
    """``basic.deliver`` frames for one consumer tag on one channel, the bytes of
    :func:`encode_deliver`.

    The parts that do not change between deliveries (frame header, ids and consumer tag; the
    exchange and routing key) are encoded once per (exchange, routing key) and kept in a
    bounded cache, so a delivery costs two packs and one join.
    """

    __slots__ = ("_channel", "_prefixes", "_tag")

    def __init__(self, channel: int, consumer_tag: str) -> None:
        if not 0 < channel <= 0xFFFF:
            raise LocalProtocolError(f"content cannot be sent on channel {channel}")
        self._channel = channel
        self._tag = _shortstr(consumer_tag, "consumer tag")
        self._prefixes: dict[tuple[str, str], tuple[bytes, bytes]] = {}

    def _prefix(self, exchange: str, routing_key: str) -> tuple[bytes, bytes]:
        names = _shortstr(exchange, "exchange") + _shortstr(routing_key, "routing key")
        size = len(_DELIVER_IDS) + len(self._tag) + _DELIVER_TAIL.size + len(names)
        parts = (
            _HEADER.pack(FRAME_METHOD, self._channel, size) + _DELIVER_IDS + self._tag,
            names + _END,
        )
        if len(self._prefixes) >= DELIVER_PREFIX_CACHE:
            self._prefixes.clear()
        self._prefixes[(exchange, routing_key)] = parts
        return parts

    def encode(
        self,
        delivery_tag: int,
        redelivered: bool,
        exchange: str,
        routing_key: str,
        properties: bytes,
        payload: bytes,
        frame_max: int,
    ) -> bytes:
        """The frames of one delivery; ``properties`` as :func:`encode_properties` writes them."""
        head, names = self._prefixes.get((exchange, routing_key)) or self._prefix(
            exchange, routing_key
        )
        if not 0 <= delivery_tag <= 0xFFFFFFFFFFFFFFFF:
            raise LocalProtocolError(f"delivery tag {delivery_tag} out of range")
        size = len(payload)
        channel = self._channel
        if size > frame_max - FRAME_OVERHEAD or frame_max < FRAME_MIN_SIZE:
            return encode_content_frames(
                channel,
                head[7:] + _DELIVER_TAIL.pack(delivery_tag, redelivered) + names[:-1],
                properties,
                payload,
                frame_max,
            )
        content = _CONTENT_HEADER_FRAME.pack(
            FRAME_HEADER, channel, _CONTENT_HEADER.size + len(properties), _BASIC_CLASS, 0, size
        )
        if not size:
            return b"".join(
                (head, _DELIVER_TAIL.pack(delivery_tag, redelivered), names, content,
                 properties, _END)
            )
        return b"".join(
            (
                head,
                _DELIVER_TAIL.pack(delivery_tag, redelivered),
                names,
                content,
                properties,
                _END,
                _HEADER.pack(FRAME_BODY, channel, size),
                payload,
                _END,
            )
        )
