"""Decoding MQTT control packets from bytes (both directions, protocol levels 4 and 5).

Theory of operation: :func:`decode_fixed_header` reads the first byte and the remaining length;
once the whole body is available, :func:`decode_packet` validates the fixed-header flags and
dispatches on the packet type to one function per packet. Body decoders read with the
``primitives`` functions; a field that runs past the end of a complete body is a malformed packet
(the ``NeedMoreData`` it raises is translated), and so are bytes left over after the last field.
"""

from __future__ import annotations

import struct
from collections.abc import Callable

from .errors import MalformedPacket, NeedMoreData, ProtocolError, UnsupportedProtocolVersion
from .packet_types import MQTT_5, MQTT_311, PacketType
from .packets import (
    Auth,
    ConnAck,
    Connect,
    Disconnect,
    Packet,
    PingReq,
    PingResp,
    PubAck,
    PubComp,
    Publish,
    PubRec,
    PubRel,
    SubAck,
    Subscribe,
    Subscription,
    UnsubAck,
    Unsubscribe,
    Will,
)
from .primitives import decode_binary, decode_uint8, decode_uint16, decode_utf8, decode_varint
from .properties import EMPTY_PROPERTIES, Properties, decode_properties
from .reason_codes import ALLOWED_REASON_CODES, SUBACK_RETURN_CODES_V311
from .topics import is_shared, validate_topic_filter, validate_topic_name

_U16 = struct.Struct("!H")

#: Fixed-header flags every packet type but PUBLISH must carry (spec table 2-2).
REQUIRED_FLAGS: dict[int, int] = {
    PacketType.CONNECT: 0, PacketType.CONNACK: 0, PacketType.PUBACK: 0, PacketType.PUBREC: 0,
    PacketType.PUBREL: 2, PacketType.PUBCOMP: 0, PacketType.SUBSCRIBE: 2, PacketType.SUBACK: 0,
    PacketType.UNSUBSCRIBE: 2, PacketType.UNSUBACK: 0, PacketType.PINGREQ: 0,
    PacketType.PINGRESP: 0, PacketType.DISCONNECT: 0, PacketType.AUTH: 0,
}


def decode_fixed_header(buf: memoryview, offset: int = 0) -> tuple[int, int, int]:
    """Read a fixed header at ``offset``: ``(first_byte, remaining_length, body_offset)``."""
    if offset >= len(buf):
        raise NeedMoreData
    remaining, body_offset = decode_varint(buf, offset + 1)
    return buf[offset], remaining, body_offset


def decode(data: bytes | bytearray | memoryview, version: int) -> tuple[Packet, int]:
    """Decode the first packet in ``data``: ``(packet, bytes_consumed)``.

    Raises :class:`NeedMoreData` if ``data`` holds less than one whole packet. For bounded,
    incremental input use :class:`~handlers.mqtt.framing.PacketReader` instead.
    A decoded PUBLISH payload is a view into ``data``: pass ``bytes``, or do not resize a
    ``bytearray`` while the packet is alive.
    """
    buf = memoryview(data).toreadonly()
    first, remaining, start = decode_fixed_header(buf)
    end = start + remaining
    if end > len(buf):
        raise NeedMoreData
    return decode_packet(first, buf[start:end], version), end


def decode_packet(first_byte: int, body: memoryview, version: int) -> Packet:
    """Decode one packet from its first byte and its complete body (the remaining-length bytes).

    ``version`` is the protocol level in force (4 or 5); CONNECT carries its own.
    """
    ptype = first_byte >> 4
    flags = first_byte & 0x0F
    if ptype == PacketType.PUBLISH:
        try:
            return _decode_publish(flags, body, version)
        except NeedMoreData:
            raise MalformedPacket("PUBLISH is shorter than its fields") from None
    decoder = _DECODERS.get(ptype)
    if decoder is None:
        raise MalformedPacket("reserved packet type 0")
    if flags != REQUIRED_FLAGS[ptype]:
        name = PacketType(ptype).name
        raise MalformedPacket(f"invalid fixed header flags 0x{flags:x} for {name}")
    try:
        return decoder(body, version)
    except NeedMoreData:
        raise MalformedPacket(f"{PacketType(ptype).name} is shorter than its fields") from None


def _end(body: memoryview, offset: int, name: str) -> None:
    if offset != len(body):
        raise MalformedPacket(f"{len(body) - offset} unexpected bytes at the end of {name}")


def _packet_id(body: memoryview, offset: int) -> tuple[int, int]:
    packet_id, offset = decode_uint16(body, offset)
    if packet_id == 0:
        raise ProtocolError("packet identifier 0")
    return packet_id, offset


def _check_auth_properties(props: Properties) -> None:
    if props.authentication_data is not None and props.authentication_method is None:
        raise ProtocolError("authentication data without an authentication method")


def _check_reason(ptype: PacketType, code: int) -> None:
    if code not in ALLOWED_REASON_CODES[ptype]:
        raise ProtocolError(f"reason code 0x{code:02x} is not valid in {ptype.name}")


def _decode_connect(body: memoryview, version: int) -> Connect:
    name, off = decode_utf8(body, 0)
    level, off = decode_uint8(body, off)
    if name == "MQIsdp":
        raise UnsupportedProtocolVersion("MQTT 3.1 (MQIsdp) is not supported", level)
    if name != "MQTT":
        raise ProtocolError(f"unknown protocol name {name!r}")
    if level not in (MQTT_311, MQTT_5):
        raise UnsupportedProtocolVersion(f"unsupported protocol level {level}", level)
    flags, off = decode_uint8(body, off)
    if flags & 0x01:
        raise MalformedPacket("CONNECT reserved flag is set")
    has_will = bool(flags & 0x04)
    will_qos = (flags >> 3) & 0x03
    will_retain = bool(flags & 0x20)
    has_password = bool(flags & 0x40)
    has_username = bool(flags & 0x80)
    if will_qos == 3:
        raise MalformedPacket("will QoS 3")
    if not has_will and (will_qos or will_retain):
        raise MalformedPacket("will QoS or will retain set without the will flag")
    if level == MQTT_311 and has_password and not has_username:
        raise ProtocolError("password without user name (MQTT 3.1.1)")
    keep_alive, off = decode_uint16(body, off)
    properties = EMPTY_PROPERTIES
    if level == MQTT_5:
        properties, off = decode_properties(body, off, PacketType.CONNECT)
        _check_auth_properties(properties)
    client_id, off = decode_utf8(body, off)
    will = None
    if has_will:
        will_props = EMPTY_PROPERTIES
        if level == MQTT_5:
            will_props, off = decode_properties(body, off, PacketType.WILL)
        will_topic, off = decode_utf8(body, off)
        validate_topic_name(will_topic)
        will_payload, off = decode_binary(body, off)
        will = Will(will_topic, will_payload, will_qos, will_retain, will_props)
    username = password = None
    if has_username:
        username, off = decode_utf8(body, off)
    if has_password:
        password, off = decode_binary(body, off)
    _end(body, off, "CONNECT")
    return Connect(
        client_id, level, bool(flags & 0x02), keep_alive, username, password, will, properties
    )


def _decode_connack(body: memoryview, version: int) -> ConnAck:
    ack_flags, off = decode_uint8(body, 0)
    if ack_flags & 0xFE:
        raise MalformedPacket("CONNACK reserved acknowledge flags are set")
    code, off = decode_uint8(body, off)
    properties = EMPTY_PROPERTIES
    if version == MQTT_5:
        _check_reason(PacketType.CONNACK, code)
        properties, off = decode_properties(body, off, PacketType.CONNACK)
        _check_auth_properties(properties)
    elif code > 5:
        raise ProtocolError(f"unknown CONNACK return code 0x{code:02x}")
    if code and ack_flags:
        raise ProtocolError("session present set on a refused connection")
    _end(body, off, "CONNACK")
    return ConnAck(bool(ack_flags), code, properties)


def _decode_publish(flags: int, body: memoryview, version: int) -> Publish:
    qos = (flags >> 1) & 0x03
    if qos == 3:
        raise MalformedPacket("PUBLISH with QoS 3")
    if flags & 0x08 and not qos:
        raise MalformedPacket("PUBLISH with DUP set on QoS 0")
    size = len(body)
    if size < 2:
        raise NeedMoreData
    end = 2 + _U16.unpack_from(body, 0)[0]
    if end > size:
        raise NeedMoreData
    try:
        topic = bytes(body[2:end]).decode("utf-8")
    except UnicodeDecodeError:
        raise MalformedPacket("ill-formed UTF-8 topic name") from None
    packet_id = None
    if qos:
        if end + 2 > size:
            raise NeedMoreData
        packet_id = _U16.unpack_from(body, end)[0]
        if not packet_id:
            raise ProtocolError("packet identifier 0")
        end += 2
    properties = EMPTY_PROPERTIES
    if version == MQTT_5:
        if end < size and body[end] == 0:
            end += 1
        else:
            properties, end = decode_properties(body, end, PacketType.PUBLISH)
    if not topic or "+" in topic or "#" in topic or "\x00" in topic:
        if topic or version != MQTT_5:
            validate_topic_name(topic)
            raise MalformedPacket("topic name contains U+0000")
        if properties.topic_alias is None:
            raise ProtocolError("empty topic name without a topic alias")
    return Publish(
        topic, body[end:], qos, bool(flags & 0x01), bool(flags & 0x08), packet_id, properties
    )


def _pub_response_fields(
    ptype: PacketType, body: memoryview, version: int
) -> tuple[int, int, Properties]:
    packet_id, off = _packet_id(body, 0)
    code = 0
    properties = EMPTY_PROPERTIES
    if version == MQTT_5 and len(body) > 2:
        code, off = decode_uint8(body, off)
        _check_reason(ptype, code)
        if len(body) > 3:
            properties, off = decode_properties(body, off, ptype)
    if off != len(body):  # (the enum's name only on the error path: this runs per PUBACK)
        _end(body, off, ptype.name)
    return packet_id, code, properties


def _decode_puback(body: memoryview, version: int) -> PubAck:
    pid, code, props = _pub_response_fields(PacketType.PUBACK, body, version)
    return PubAck(pid, code, props)


def _decode_pubrec(body: memoryview, version: int) -> PubRec:
    pid, code, props = _pub_response_fields(PacketType.PUBREC, body, version)
    return PubRec(pid, code, props)


def _decode_pubrel(body: memoryview, version: int) -> PubRel:
    pid, code, props = _pub_response_fields(PacketType.PUBREL, body, version)
    return PubRel(pid, code, props)


def _decode_pubcomp(body: memoryview, version: int) -> PubComp:
    pid, code, props = _pub_response_fields(PacketType.PUBCOMP, body, version)
    return PubComp(pid, code, props)


def _decode_subscribe(body: memoryview, version: int) -> Subscribe:
    packet_id, off = _packet_id(body, 0)
    properties = EMPTY_PROPERTIES
    v5 = version == MQTT_5
    if v5:
        properties, off = decode_properties(body, off, PacketType.SUBSCRIBE)
    subs: list[Subscription] = []
    size = len(body)
    while off < size:
        topic_filter, off = decode_utf8(body, off)
        options, off = decode_uint8(body, off)
        qos = options & 0x03
        if qos == 3:
            raise MalformedPacket("subscription with QoS 3")
        if options & (0xC0 if v5 else 0xFC):
            raise MalformedPacket("subscription options reserved bits are set")
        validate_topic_filter(topic_filter, shared_allowed=v5)
        no_local = bool(options & 0x04)
        retain_handling = (options >> 4) & 0x03
        if retain_handling == 3:
            raise ProtocolError("retain handling 3")
        if no_local and v5 and is_shared(topic_filter):
            raise ProtocolError("no local set on a shared subscription")
        subs.append(
            Subscription(topic_filter, qos, no_local, bool(options & 0x08), retain_handling)
        )
    if not subs:
        raise ProtocolError("SUBSCRIBE without topic filters")
    return Subscribe(packet_id, tuple(subs), properties)


def _decode_suback(body: memoryview, version: int) -> SubAck:
    packet_id, off = _packet_id(body, 0)
    properties = EMPTY_PROPERTIES
    if version == MQTT_5:
        properties, off = decode_properties(body, off, PacketType.SUBACK)
        allowed = ALLOWED_REASON_CODES[PacketType.SUBACK]
    else:
        allowed = SUBACK_RETURN_CODES_V311
    codes = tuple(body[off:])
    if not codes:
        raise ProtocolError("SUBACK without reason codes")
    for code in codes:
        if code not in allowed:
            raise ProtocolError(f"reason code 0x{code:02x} is not valid in SUBACK")
    return SubAck(packet_id, codes, properties)


def _decode_unsubscribe(body: memoryview, version: int) -> Unsubscribe:
    packet_id, off = _packet_id(body, 0)
    properties = EMPTY_PROPERTIES
    v5 = version == MQTT_5
    if v5:
        properties, off = decode_properties(body, off, PacketType.UNSUBSCRIBE)
    filters: list[str] = []
    size = len(body)
    while off < size:
        topic_filter, off = decode_utf8(body, off)
        validate_topic_filter(topic_filter, shared_allowed=v5)
        filters.append(topic_filter)
    if not filters:
        raise ProtocolError("UNSUBSCRIBE without topic filters")
    return Unsubscribe(packet_id, tuple(filters), properties)


def _decode_unsuback(body: memoryview, version: int) -> UnsubAck:
    packet_id, off = _packet_id(body, 0)
    if version != MQTT_5:
        _end(body, off, "UNSUBACK")
        return UnsubAck(packet_id)
    properties, off = decode_properties(body, off, PacketType.UNSUBACK)
    codes = tuple(body[off:])
    if not codes:
        raise ProtocolError("UNSUBACK without reason codes")
    for code in codes:
        _check_reason(PacketType.UNSUBACK, code)
    return UnsubAck(packet_id, codes, properties)


def _decode_pingreq(body: memoryview, version: int) -> PingReq:
    _end(body, 0, "PINGREQ")
    return PingReq()


def _decode_pingresp(body: memoryview, version: int) -> PingResp:
    _end(body, 0, "PINGRESP")
    return PingResp()


def _reason_and_properties(ptype: PacketType, body: memoryview) -> tuple[int, Properties]:
    code = 0
    properties = EMPTY_PROPERTIES
    off = 0
    if body:
        code, off = decode_uint8(body, 0)
        _check_reason(ptype, code)
        if len(body) > 1 or ptype is PacketType.AUTH:
            properties, off = decode_properties(body, off, ptype)
    _end(body, off, ptype.name)
    return code, properties


def _decode_disconnect(body: memoryview, version: int) -> Disconnect:
    if version != MQTT_5:
        _end(body, 0, "DISCONNECT")
        return Disconnect()
    code, properties = _reason_and_properties(PacketType.DISCONNECT, body)
    return Disconnect(code, properties)


def _decode_auth(body: memoryview, version: int) -> Auth:
    if version != MQTT_5:
        raise MalformedPacket("AUTH is reserved in MQTT 3.1.1")
    code, properties = _reason_and_properties(PacketType.AUTH, body)
    _check_auth_properties(properties)
    return Auth(code, properties)


_DECODERS: dict[int, Callable[[memoryview, int], Packet]] = {
    PacketType.CONNECT: _decode_connect,
    PacketType.CONNACK: _decode_connack,
    PacketType.PUBACK: _decode_puback,
    PacketType.PUBREC: _decode_pubrec,
    PacketType.PUBREL: _decode_pubrel,
    PacketType.PUBCOMP: _decode_pubcomp,
    PacketType.SUBSCRIBE: _decode_subscribe,
    PacketType.SUBACK: _decode_suback,
    PacketType.UNSUBSCRIBE: _decode_unsubscribe,
    PacketType.UNSUBACK: _decode_unsuback,
    PacketType.PINGREQ: _decode_pingreq,
    PacketType.PINGRESP: _decode_pingresp,
    PacketType.DISCONNECT: _decode_disconnect,
    PacketType.AUTH: _decode_auth,
}
