"""Encoding MQTT control packets to bytes (both directions, protocol levels 4 and 5).

:func:`encode` checks that the packet can be expressed in the protocol version (no properties or
non-zero reason codes in 3.1.1, valid QoS/packet-id combinations, topic syntax) and raises
:class:`EncodeError` otherwise. Acknowledgements, DISCONNECT and AUTH use the shortest form the
MQTT 5 spec allows (reason code and property length omitted when they are 0 / empty; AUTH
omits both or neither).
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from typing import Any

from .errors import EncodeError, MQTTError
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
    UnsubAck,
    Unsubscribe,
)
from .primitives import encode_binary, encode_uint16, encode_utf8, encode_varint
from .properties import EMPTY_PROPERTIES, Properties, encode_properties
from .reason_codes import ALLOWED_REASON_CODES, SUBACK_RETURN_CODES_V311
from .topics import is_shared, validate_topic_filter

_U16 = struct.Struct("!H")
_PINGREQ = b"\xc0\x00"
_PINGRESP = b"\xd0\x00"
_DISCONNECT_V311 = b"\xe0\x00"
_PROTOCOL_NAME = encode_utf8("MQTT")

# First byte of PUBLISH indexed by (qos << 3) | (dup << 2) | retain: no bit fiddling per call.
_PUBLISH_FIRST = {
    (qos << 3) | (dup << 2) | retain: bytes((0x30 | dup << 3 | qos << 1 | retain,))
    for qos in range(3)
    for dup in range(2)
    for retain in range(2)
}


def encode(packet: Packet, version: int) -> bytes:
    """Encode ``packet`` for protocol level ``version`` (4 or 5)."""
    if version not in (MQTT_311, MQTT_5):
        raise EncodeError(f"unsupported protocol level {version}")
    encoder = _ENCODERS[type(packet)]
    try:
        return encoder(packet, version)
    except MQTTError as exc:  # a topic/filter check written for decoded input
        raise EncodeError(str(exc)) from None


def _frame(first: int, body: bytes) -> bytes:
    return bytes((first,)) + encode_varint(len(body)) + body


def _props(props: Properties, ptype: PacketType, version: int) -> bytes:
    if version == MQTT_5:
        return encode_properties(props, ptype)
    if props is not EMPTY_PROPERTIES and props != EMPTY_PROPERTIES:
        raise EncodeError(f"{ptype.name} properties cannot be sent in MQTT 3.1.1")
    return b""


def _check_packet_id(packet_id: int | None) -> bytes:
    if packet_id is None or not 0 < packet_id <= 0xFFFF:
        raise EncodeError(f"invalid packet identifier {packet_id}")
    return _U16.pack(packet_id)


def _encode_publish(p: Publish, version: int) -> bytes:
    qos = p.qos
    key = (qos << 3) | (p.dup << 2) | p.retain
    first = _PUBLISH_FIRST.get(key)
    if first is None:
        raise EncodeError(f"invalid QoS {qos}")
    topic = p.topic
    if "+" in topic or "#" in topic or "\x00" in topic:
        raise EncodeError(f"invalid topic name {topic!r}")
    raw = topic.encode("utf-8")
    if len(raw) > 0xFFFF:
        raise EncodeError("topic name longer than 65535 bytes")
    head = _U16.pack(len(raw)) + raw
    if qos:
        head += _check_packet_id(p.packet_id)
    elif p.dup or p.packet_id is not None:
        raise EncodeError("a QoS 0 PUBLISH has no packet identifier and no DUP flag")
    props = p.properties
    if not raw and (version != MQTT_5 or props.topic_alias is None):
        raise EncodeError("empty topic name without a topic alias")
    if version == MQTT_5:
        if props is EMPTY_PROPERTIES:
            head += b"\x00"
        else:
            head += encode_properties(props, PacketType.PUBLISH)
    else:
        _props(props, PacketType.PUBLISH, version)
    payload = p.payload
    return b"".join((first, encode_varint(len(head) + len(payload)), head, payload))


def _encode_connect(p: Connect, version: int) -> bytes:
    level = p.protocol_level
    if level != version:
        raise EncodeError(f"CONNECT for protocol level {level} encoded as level {version}")
    flags = 0x02 if p.clean_start else 0
    will = p.will
    if will is not None:
        if will.qos not in (0, 1, 2):
            raise EncodeError(f"invalid will QoS {will.qos}")
        flags |= 0x04 | will.qos << 3 | (0x20 if will.retain else 0)
    if p.username is not None:
        flags |= 0x80
    if p.password is not None:
        if level == MQTT_311 and p.username is None:
            raise EncodeError("MQTT 3.1.1 does not allow a password without a user name")
        flags |= 0x40
    parts = [_PROTOCOL_NAME, bytes((level, flags)), encode_uint16(p.keep_alive)]
    parts.append(_props(p.properties, PacketType.CONNECT, level))
    parts.append(encode_utf8(p.client_id))
    if will is not None:
        parts.append(_props(will.properties, PacketType.WILL, level))
        if not will.topic or "+" in will.topic or "#" in will.topic:
            raise EncodeError(f"invalid will topic {will.topic!r}")
        parts.append(encode_utf8(will.topic))
        parts.append(encode_binary(will.payload))
    if p.username is not None:
        parts.append(encode_utf8(p.username))
    if p.password is not None:
        parts.append(encode_binary(p.password))
    return _frame(0x10, b"".join(parts))


def _encode_connack(p: ConnAck, version: int) -> bytes:
    code = p.reason_code
    if version == MQTT_5:
        if code not in ALLOWED_REASON_CODES[PacketType.CONNACK]:
            raise EncodeError(f"reason code 0x{code:02x} is not valid in CONNACK")
    elif not 0 <= code <= 5:
        raise EncodeError(f"invalid MQTT 3.1.1 CONNACK return code {code}")
    if code and p.session_present:
        raise EncodeError("session present on a refused connection")
    body = bytes((1 if p.session_present else 0, code))
    return _frame(0x20, body + _props(p.properties, PacketType.CONNACK, version))


def _pub_response(first: int, ptype: PacketType, p: Any, version: int) -> bytes:
    pid = _check_packet_id(p.packet_id)
    code: int = p.reason_code
    props: Properties = p.properties
    if version == MQTT_5:
        if code not in ALLOWED_REASON_CODES[ptype]:
            raise EncodeError(f"reason code 0x{code:02x} is not valid in {ptype.name}")
        if props is not EMPTY_PROPERTIES and props != EMPTY_PROPERTIES:
            return _frame(first, pid + bytes((code,)) + encode_properties(props, ptype))
        if code:
            return bytes((first, 3)) + pid + bytes((code,))
    elif code:
        raise EncodeError(f"{ptype.name} reason codes cannot be sent in MQTT 3.1.1")
    else:
        _props(props, ptype, version)
    return bytes((first, 2)) + pid


def _encode_puback(p: PubAck, version: int) -> bytes:
    return _pub_response(0x40, PacketType.PUBACK, p, version)


def _encode_pubrec(p: PubRec, version: int) -> bytes:
    return _pub_response(0x50, PacketType.PUBREC, p, version)


def _encode_pubrel(p: PubRel, version: int) -> bytes:
    return _pub_response(0x62, PacketType.PUBREL, p, version)


def _encode_pubcomp(p: PubComp, version: int) -> bytes:
    return _pub_response(0x70, PacketType.PUBCOMP, p, version)


def _encode_subscribe(p: Subscribe, version: int) -> bytes:
    if not p.subscriptions:
        raise EncodeError("SUBSCRIBE needs at least one topic filter")
    v5 = version == MQTT_5
    parts = [_check_packet_id(p.packet_id), _props(p.properties, PacketType.SUBSCRIBE, version)]
    for sub in p.subscriptions:
        validate_topic_filter(sub.topic_filter, shared_allowed=v5)
        if sub.qos not in (0, 1, 2) or sub.retain_handling not in (0, 1, 2):
            raise EncodeError(f"invalid subscription options {sub}")
        options = sub.qos
        if v5:
            if sub.no_local and is_shared(sub.topic_filter):
                raise EncodeError("no local cannot be set on a shared subscription")
            options |= (
                (0x04 if sub.no_local else 0)
                | (0x08 if sub.retain_as_published else 0)
                | sub.retain_handling << 4
            )
        elif sub.no_local or sub.retain_as_published or sub.retain_handling:
            raise EncodeError("subscription options other than QoS need MQTT 5")
        parts.append(encode_utf8(sub.topic_filter))
        parts.append(bytes((options,)))
    return _frame(0x82, b"".join(parts))


def _encode_suback(p: SubAck, version: int) -> bytes:
    allowed = (
        ALLOWED_REASON_CODES[PacketType.SUBACK] if version == MQTT_5 else SUBACK_RETURN_CODES_V311
    )
    if not p.reason_codes:
        raise EncodeError("SUBACK needs at least one reason code")
    for code in p.reason_codes:
        if code not in allowed:
            raise EncodeError(f"reason code 0x{code:02x} is not valid in SUBACK")
    return _frame(
        0x90,
        _check_packet_id(p.packet_id)
        + _props(p.properties, PacketType.SUBACK, version)
        + bytes(p.reason_codes),
    )


def _encode_unsubscribe(p: Unsubscribe, version: int) -> bytes:
    if not p.topic_filters:
        raise EncodeError("UNSUBSCRIBE needs at least one topic filter")
    parts = [_check_packet_id(p.packet_id), _props(p.properties, PacketType.UNSUBSCRIBE, version)]
    for topic_filter in p.topic_filters:
        validate_topic_filter(topic_filter, shared_allowed=version == MQTT_5)
        parts.append(encode_utf8(topic_filter))
    return _frame(0xA2, b"".join(parts))


def _encode_unsuback(p: UnsubAck, version: int) -> bytes:
    pid = _check_packet_id(p.packet_id)
    if version != MQTT_5:
        if p.reason_codes:
            raise EncodeError("UNSUBACK reason codes cannot be sent in MQTT 3.1.1")
        _props(p.properties, PacketType.UNSUBACK, version)
        return b"\xb0\x02" + pid
    if not p.reason_codes:
        raise EncodeError("UNSUBACK needs at least one reason code")
    for code in p.reason_codes:
        if code not in ALLOWED_REASON_CODES[PacketType.UNSUBACK]:
            raise EncodeError(f"reason code 0x{code:02x} is not valid in UNSUBACK")
    props = encode_properties(p.properties, PacketType.UNSUBACK)
    return _frame(0xB0, pid + props + bytes(p.reason_codes))


def _encode_pingreq(p: PingReq, version: int) -> bytes:
    return _PINGREQ


def _encode_pingresp(p: PingResp, version: int) -> bytes:
    return _PINGRESP


def _reason_and_props(first: int, ptype: PacketType, code: int, props: Properties) -> bytes:
    if code not in ALLOWED_REASON_CODES[ptype]:
        raise EncodeError(f"reason code 0x{code:02x} is not valid in {ptype.name}")
    if props is not EMPTY_PROPERTIES and props != EMPTY_PROPERTIES:
        return _frame(first, bytes((code,)) + encode_properties(props, ptype))
    if not code:
        return bytes((first, 0))
    if ptype is PacketType.AUTH:  # only DISCONNECT may omit the property length alone
        return bytes((first, 2, code, 0))
    return bytes((first, 1, code))


def _encode_disconnect(p: Disconnect, version: int) -> bytes:
    if version != MQTT_5:
        if p.reason_code:
            raise EncodeError("DISCONNECT reason codes cannot be sent in MQTT 3.1.1")
        _props(p.properties, PacketType.DISCONNECT, version)
        return _DISCONNECT_V311
    return _reason_and_props(0xE0, PacketType.DISCONNECT, p.reason_code, p.properties)


def _encode_auth(p: Auth, version: int) -> bytes:
    if version != MQTT_5:
        raise EncodeError("AUTH does not exist in MQTT 3.1.1")
    return _reason_and_props(0xF0, PacketType.AUTH, p.reason_code, p.properties)


_ENCODERS: dict[type, Callable[[Any, int], bytes]] = {
    Connect: _encode_connect,
    ConnAck: _encode_connack,
    Publish: _encode_publish,
    PubAck: _encode_puback,
    PubRec: _encode_pubrec,
    PubRel: _encode_pubrel,
    PubComp: _encode_pubcomp,
    Subscribe: _encode_subscribe,
    SubAck: _encode_suback,
    Unsubscribe: _encode_unsubscribe,
    UnsubAck: _encode_unsuback,
    PingReq: _encode_pingreq,
    PingResp: _encode_pingresp,
    Disconnect: _encode_disconnect,
    Auth: _encode_auth,
}
