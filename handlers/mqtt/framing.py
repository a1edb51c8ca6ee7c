"""Incremental, bounded packet framing in the h11 style: bytes in, packets out, no I/O.

Theory of operation: :meth:`PacketReader.receive_data` appends to a buffer;
:meth:`PacketReader.next_packet` looks at the fixed header at the front. As soon as the remaining
length is known, a packet whose total size exceeds ``max_packet_size`` is rejected
(:class:`PacketTooLarge`) before its body is buffered, and a length field longer than four bytes
is rejected as malformed. A complete packet is cut from the buffer and decoded; otherwise
``None`` asks for more data. The caller feeds one read at a time and drains ``next_packet()``
until it returns ``None`` before reading again, so the buffer never holds more than one
partial packet plus one read.

The two packets every QoS 1 message brings, PUBLISH without properties and PUBACK without a
reason code, are read straight from the buffer once the protocol level is known (no copy of
the packet, no general decoder); anything else, errors included, takes the general path, so
the errors are the decoder's.  :meth:`PacketReader.take_pubacks` reads a run of such PUBACK
packets as bare packet ids.

The protocol level decides how packets after CONNECT decode. A server-side reader starts with
none: the first packet must be CONNECT, and the level it carries is then in force; a second
CONNECT is a protocol error. A client-side reader is told the level it sent. The reader also
enforces direction: a server only accepts packets clients send and vice versa, and a PUBLISH
from a client must not carry a subscription identifier.
"""

from __future__ import annotations

from enum import Enum

from .decoder import decode_packet
from .errors import MalformedPacket, NeedMoreData, PacketTooLarge, ProtocolError
from .hot_path import new_puback, new_publish
from .packet_types import CLIENT_TO_SERVER, MQTT_5, MQTT_311, SERVER_TO_CLIENT, PacketType
from .packets import Connect, Packet, Publish
from .primitives import VARINT_MAX, decode_varint
from .properties import EMPTY_PROPERTIES

#: The largest packet the wire format can express: 1 byte type, 4 bytes length, body.
ABSOLUTE_MAX_PACKET_SIZE = 1 + 4 + VARINT_MAX
_CONNECT = int(PacketType.CONNECT)
_PUBLISH = int(PacketType.PUBLISH)
_PUBACK_FIRST = int(PacketType.PUBACK) << 4


class Role(Enum):
    """Which end of the connection a reader sits on."""

    SERVER = "server"
    CLIENT = "client"


class PacketReader:
    """Turn a byte stream into MQTT packets, bounded by ``max_packet_size`` (whole packet)."""

    def __init__(
        self,
        role: Role = Role.SERVER,
        *,
        max_packet_size: int = ABSOLUTE_MAX_PACKET_SIZE,
        protocol_version: int | None = None,
    ) -> None:
        if protocol_version not in (None, MQTT_311, MQTT_5):
            raise ValueError(f"unsupported protocol level {protocol_version}")
        if role is Role.CLIENT and protocol_version is None:
            raise ValueError("a client-side reader needs the protocol level it sent in CONNECT")
        if not 2 <= max_packet_size <= ABSOLUTE_MAX_PACKET_SIZE:
            raise ValueError(f"max_packet_size out of range: {max_packet_size}")
        self.role = role
        self.max_packet_size = max_packet_size
        self._version = protocol_version
        self._accepted = CLIENT_TO_SERVER if role is Role.SERVER else SERVER_TO_CLIENT
        #: received bytes (immutable: a read is kept as it came, packets are sliced from it)
        self._buffer = b""
        #: where the first unconsumed byte of ``_buffer`` is
        self._pos = 0

    @property
    def protocol_version(self) -> int | None:
        """The protocol level in force (4 or 5), or ``None`` before CONNECT on a server."""
        return self._version

    @property
    def buffered(self) -> int:
        """Number of bytes received but not yet consumed."""
        return len(self._buffer) - self._pos

    def receive_data(self, data: bytes | bytearray | memoryview) -> None:
        """Append bytes read from the peer.

        Consumed bytes are never moved: a read that finds nothing left over becomes the buffer
        as it is, and only a partial packet left over is copied, once, in front of the next
        read (deleting each packet from the front of a growing bytearray cost a copy of the
        rest every time the buffer shrank by half).
        """
        rest = len(self._buffer) - self._pos
        if rest:
            self._buffer = self._buffer[self._pos:] + data
        else:
            self._buffer = data if type(data) is bytes else bytes(data)
        self._pos = 0

    def next_packet(self) -> Packet | None:
        """Return the next complete packet, or ``None`` if more data is needed.

        Raises :class:`MQTTError` subclasses when the peer broke the protocol; the reader is then
        unusable and the connection should be closed (after a DISCONNECT/CONNACK with the error's
        reason code where the protocol allows one).
        """
        buf = self._buffer
        at = self._pos
        size = len(buf) - at
        if size < 2:
            return None
        if buf[at + 1] < 0x80:
            remaining, start = buf[at + 1], 2
        elif size > 2 and 0 < buf[at + 2] < 0x80:  # 128 B to 16 KiB: two length bytes
            remaining, start = (buf[at + 1] & 0x7F) | buf[at + 2] << 7, 3
        else:
            try:
                remaining, start = decode_varint(memoryview(buf[at:at + 5]), 1)
            except NeedMoreData:
                return None
        total = start + remaining
        if total > self.max_packet_size:
            raise PacketTooLarge(
                f"packet of {total} bytes exceeds the maximum of {self.max_packet_size}"
            )
        if size < total:
            return None
        first = buf[at]
        if self._version is not None:
            # the two packets of every QoS 1 message, in their common forms: no copies, no
            # general decoder (anything unusual, errors included, takes the path below)
            if first == _PUBACK_FIRST and remaining == 2 and (buf[at + 2] or buf[at + 3]):
                packet_id = buf[at + 2] << 8 | buf[at + 3]
                self._pos = at + 4
                return new_puback(packet_id)
            if first >> 4 == _PUBLISH:
                fast = self._plain_publish(buf, first, at + start, at + total)
                if fast is not None:
                    self._pos = at + total
                    return fast
        self._check_type(first >> 4)
        data = buf[at:at + total]
        self._pos = at + total
        version = self._version
        packet = decode_packet(
            first, memoryview(data)[start:], MQTT_311 if version is None else version
        )
        if isinstance(packet, Connect):
            self._version = packet.protocol_level
        elif (
            isinstance(packet, Publish)
            and self.role is Role.SERVER
            and packet.properties.subscription_identifiers
        ):
            raise ProtocolError("a client PUBLISH must not carry a subscription identifier")
        return packet

    def take_pubacks(self, into: list[int]) -> int:
        """Consume the success PUBACK packets (no reason code, no properties) at the front of
        the buffer, appending their packet ids to ``into``; returns how many.

        A subscriber answers every QoS 1 delivery with one: this reads a run of them without
        building packet objects.  Any other packet, a PUBACK in another form included, stops
        the run and is left for :meth:`next_packet`.
        """
        if self._version is None:
            return 0
        buf = self._buffer
        size = len(buf)
        pos = start = self._pos
        while pos + 4 <= size and buf[pos] == _PUBACK_FIRST and buf[pos + 1] == 2:
            packet_id = buf[pos + 2] << 8 | buf[pos + 3]
            if not packet_id:
                break
            into.append(packet_id)
            pos += 4
        self._pos = pos
        return (pos - start) >> 2

    def _plain_publish(
        self, buf: bytes, first: int, start: int, total: int
    ) -> Publish | None:
        """A well-formed PUBLISH without properties in ``buf``, else None.

        ``start`` is where its variable header begins and ``total`` where the packet ends."""
        qos = (first >> 1) & 0x03
        if qos == 3 or (first & 0x08 and not qos) or start + 2 > total:
            return None
        end = start + 2 + (buf[start] << 8 | buf[start + 1])
        pos = end + 2 if qos else end
        if self._version == MQTT_5:
            if pos >= total or buf[pos]:
                return None
            pos += 1
        elif pos > total:
            return None
        packet_id = None
        if qos:
            packet_id = buf[end] << 8 | buf[end + 1]
            if not packet_id:
                return None
        try:
            topic = buf[start + 2:end].decode("utf-8")
        except UnicodeDecodeError:
            return None
        if not topic or "+" in topic or "#" in topic or "\x00" in topic:
            return None
        return new_publish(topic, buf[pos:total], qos, bool(first & 0x01),
                           bool(first & 0x08), packet_id, EMPTY_PROPERTIES)

    def _check_type(self, ptype: int) -> None:
        if ptype == 0:
            raise MalformedPacket("reserved packet type 0")
        if ptype not in self._accepted:
            name = PacketType(ptype).name
            raise ProtocolError(f"{name} is not a packet a {self.role.value} receives")
        if self.role is Role.SERVER:
            is_connect = ptype == _CONNECT
            if self._version is None and not is_connect:
                raise ProtocolError("the first packet must be CONNECT")
            if self._version is not None and is_connect:
                raise ProtocolError("second CONNECT on the same connection")
