"""MQTT 5 properties (spec section 2.2.2): identifiers, value types, where each may appear.

:class:`Properties` holds one attribute per property; absent properties are ``None``. User
properties keep their order and repeats in ``user_properties``; subscription identifiers (which
may repeat in a server-sent PUBLISH) are a tuple too. Properties are written in ascending
identifier order, so a decoded block re-encodes to the same bytes when the sender used that order.

Decoding rules: an unknown identifier or one not allowed in the packet is a malformed packet; a
property that may appear once but repeats, or a value out of its range (a 0/1 flag with another
value, a zero Receive Maximum, ...), is a protocol error.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum, IntEnum
from typing import Any, cast

from .errors import EncodeError, MalformedPacket, NeedMoreData, ProtocolError
from .packet_types import PacketType
from .primitives import (
    VARINT_MAX,
    decode_binary,
    decode_uint8,
    decode_uint16,
    decode_uint32,
    decode_utf8,
    decode_utf8_pair,
    decode_varint,
    encode_binary,
    encode_uint16,
    encode_uint32,
    encode_utf8,
    encode_utf8_pair,
    encode_varint,
)


class PropertyId(IntEnum):
    """MQTT 5 property identifiers."""

    PAYLOAD_FORMAT_INDICATOR = 0x01
    MESSAGE_EXPIRY_INTERVAL = 0x02
    CONTENT_TYPE = 0x03
    RESPONSE_TOPIC = 0x08
    CORRELATION_DATA = 0x09
    SUBSCRIPTION_IDENTIFIER = 0x0B
    SESSION_EXPIRY_INTERVAL = 0x11
    ASSIGNED_CLIENT_IDENTIFIER = 0x12
    SERVER_KEEP_ALIVE = 0x13
    AUTHENTICATION_METHOD = 0x15
    AUTHENTICATION_DATA = 0x16
    REQUEST_PROBLEM_INFORMATION = 0x17
    WILL_DELAY_INTERVAL = 0x18
    REQUEST_RESPONSE_INFORMATION = 0x19
    RESPONSE_INFORMATION = 0x1A
    SERVER_REFERENCE = 0x1C
    REASON_STRING = 0x1F
    RECEIVE_MAXIMUM = 0x21
    TOPIC_ALIAS_MAXIMUM = 0x22
    TOPIC_ALIAS = 0x23
    MAXIMUM_QOS = 0x24
    RETAIN_AVAILABLE = 0x25
    USER_PROPERTY = 0x26
    MAXIMUM_PACKET_SIZE = 0x27
    WILDCARD_SUBSCRIPTION_AVAILABLE = 0x28
    SUBSCRIPTION_IDENTIFIER_AVAILABLE = 0x29
    SHARED_SUBSCRIPTION_AVAILABLE = 0x2A


class PropertyType(Enum):
    """Wire type of a property value."""

    BYTE = "byte"
    TWO_BYTE_INTEGER = "two byte integer"
    FOUR_BYTE_INTEGER = "four byte integer"
    VARIABLE_BYTE_INTEGER = "variable byte integer"
    UTF8_STRING = "UTF-8 string"
    BINARY_DATA = "binary data"
    UTF8_STRING_PAIR = "UTF-8 string pair"


@dataclass(frozen=True, slots=True, repr=False)
class Properties:
    """The properties of one MQTT 5 packet (or will message); ``None`` means absent."""

    payload_format_indicator: int | None = None
    message_expiry_interval: int | None = None
    content_type: str | None = None
    response_topic: str | None = None
    correlation_data: bytes | None = None
    subscription_identifiers: tuple[int, ...] = ()
    session_expiry_interval: int | None = None
    assigned_client_identifier: str | None = None
    server_keep_alive: int | None = None
    authentication_method: str | None = None
    authentication_data: bytes | None = None
    request_problem_information: int | None = None
    will_delay_interval: int | None = None
    request_response_information: int | None = None
    response_information: str | None = None
    server_reference: str | None = None
    reason_string: str | None = None
    receive_maximum: int | None = None
    topic_alias_maximum: int | None = None
    topic_alias: int | None = None
    maximum_qos: int | None = None
    retain_available: int | None = None
    user_properties: tuple[tuple[str, str], ...] = ()
    maximum_packet_size: int | None = None
    wildcard_subscription_available: int | None = None
    subscription_identifier_available: int | None = None
    shared_subscription_available: int | None = None

    def __repr__(self) -> str:
        present = (
            f"{name}={value!r}"
            for name in self.__slots__
            if (value := getattr(self, name)) is not None and value != ()
        )
        return f"Properties({', '.join(present)})"


#: The shared empty property set (decoding a zero-length block returns this very object).
EMPTY_PROPERTIES = Properties()

P = PacketType
_PUBLISH_AND_WILL = frozenset({P.PUBLISH, P.WILL})
_ALL_PACKETS_WITH_PROPERTIES = frozenset(
    {P.CONNECT, P.CONNACK, P.PUBLISH, P.WILL, P.PUBACK, P.PUBREC, P.PUBREL, P.PUBCOMP,
     P.SUBSCRIBE, P.SUBACK, P.UNSUBSCRIBE, P.UNSUBACK, P.DISCONNECT, P.AUTH}
)


@dataclass(frozen=True, slots=True)
class PropertySpec:
    """How one property is encoded, where it may appear, and its allowed value range."""

    id: PropertyId
    attribute: str
    type: PropertyType
    packets: frozenset[PacketType]
    minimum: int | None = None
    maximum: int | None = None


def _spec(
    pid: PropertyId,
    ptype: PropertyType,
    packets: frozenset[PacketType] | set[PacketType],
    minimum: int | None = None,
    maximum: int | None = None,
) -> PropertySpec:
    return PropertySpec(pid, pid.name.lower(), ptype, frozenset(packets), minimum, maximum)


T = PropertyType
I = PropertyId  # noqa: E741
#: Every property, in identifier order.
PROPERTY_SPECS: tuple[PropertySpec, ...] = (
    _spec(I.PAYLOAD_FORMAT_INDICATOR, T.BYTE, _PUBLISH_AND_WILL, 0, 1),
    _spec(I.MESSAGE_EXPIRY_INTERVAL, T.FOUR_BYTE_INTEGER, _PUBLISH_AND_WILL),
    _spec(I.CONTENT_TYPE, T.UTF8_STRING, _PUBLISH_AND_WILL),
    _spec(I.RESPONSE_TOPIC, T.UTF8_STRING, _PUBLISH_AND_WILL),
    _spec(I.CORRELATION_DATA, T.BINARY_DATA, _PUBLISH_AND_WILL),
    PropertySpec(I.SUBSCRIPTION_IDENTIFIER, "subscription_identifiers",
                 T.VARIABLE_BYTE_INTEGER, frozenset({P.PUBLISH, P.SUBSCRIBE}), 1, VARINT_MAX),
    _spec(I.SESSION_EXPIRY_INTERVAL, T.FOUR_BYTE_INTEGER, {P.CONNECT, P.CONNACK, P.DISCONNECT}),
    _spec(I.ASSIGNED_CLIENT_IDENTIFIER, T.UTF8_STRING, {P.CONNACK}),
    _spec(I.SERVER_KEEP_ALIVE, T.TWO_BYTE_INTEGER, {P.CONNACK}),
    _spec(I.AUTHENTICATION_METHOD, T.UTF8_STRING, {P.CONNECT, P.CONNACK, P.AUTH}),
    _spec(I.AUTHENTICATION_DATA, T.BINARY_DATA, {P.CONNECT, P.CONNACK, P.AUTH}),
    _spec(I.REQUEST_PROBLEM_INFORMATION, T.BYTE, {P.CONNECT}, 0, 1),
    _spec(I.WILL_DELAY_INTERVAL, T.FOUR_BYTE_INTEGER, {P.WILL}),
    _spec(I.REQUEST_RESPONSE_INFORMATION, T.BYTE, {P.CONNECT}, 0, 1),
    _spec(I.RESPONSE_INFORMATION, T.UTF8_STRING, {P.CONNACK}),
    _spec(I.SERVER_REFERENCE, T.UTF8_STRING, {P.CONNACK, P.DISCONNECT}),
    _spec(I.REASON_STRING, T.UTF8_STRING,
          {P.CONNACK, P.PUBACK, P.PUBREC, P.PUBREL, P.PUBCOMP, P.SUBACK, P.UNSUBACK,
           P.DISCONNECT, P.AUTH}),
    _spec(I.RECEIVE_MAXIMUM, T.TWO_BYTE_INTEGER, {P.CONNECT, P.CONNACK}, 1),
    _spec(I.TOPIC_ALIAS_MAXIMUM, T.TWO_BYTE_INTEGER, {P.CONNECT, P.CONNACK}),
    _spec(I.TOPIC_ALIAS, T.TWO_BYTE_INTEGER, {P.PUBLISH}, 1),
    _spec(I.MAXIMUM_QOS, T.BYTE, {P.CONNACK}, 0, 1),
    _spec(I.RETAIN_AVAILABLE, T.BYTE, {P.CONNACK}, 0, 1),
    PropertySpec(I.USER_PROPERTY, "user_properties", T.UTF8_STRING_PAIR,
                 _ALL_PACKETS_WITH_PROPERTIES),
    _spec(I.MAXIMUM_PACKET_SIZE, T.FOUR_BYTE_INTEGER, {P.CONNECT, P.CONNACK}, 1),
    _spec(I.WILDCARD_SUBSCRIPTION_AVAILABLE, T.BYTE, {P.CONNACK}, 0, 1),
    _spec(I.SUBSCRIPTION_IDENTIFIER_AVAILABLE, T.BYTE, {P.CONNACK}, 0, 1),
    _spec(I.SHARED_SUBSCRIPTION_AVAILABLE, T.BYTE, {P.CONNACK}, 0, 1),
)
del T, I

#: Property specs by identifier value.
SPECS_BY_ID: dict[int, PropertySpec] = {spec.id: spec for spec in PROPERTY_SPECS}

_Decoder = Callable[[memoryview, int], tuple[Any, int]]
_DECODERS: dict[PropertyType, _Decoder] = {
    PropertyType.BYTE: decode_uint8,
    PropertyType.TWO_BYTE_INTEGER: decode_uint16,
    PropertyType.FOUR_BYTE_INTEGER: decode_uint32,
    PropertyType.VARIABLE_BYTE_INTEGER: decode_varint,
    PropertyType.UTF8_STRING: decode_utf8,
    PropertyType.BINARY_DATA: decode_binary,
    PropertyType.UTF8_STRING_PAIR: decode_utf8_pair,
}


def _encode_byte(value: int) -> bytes:
    try:
        return struct.pack("!B", value)
    except struct.error:
        raise EncodeError(f"byte out of range: {value}") from None


_ENCODERS: dict[PropertyType, Callable[[Any], bytes]] = {
    PropertyType.BYTE: _encode_byte,
    PropertyType.TWO_BYTE_INTEGER: encode_uint16,
    PropertyType.FOUR_BYTE_INTEGER: encode_uint32,
    PropertyType.VARIABLE_BYTE_INTEGER: encode_varint,
    PropertyType.UTF8_STRING: encode_utf8,
    PropertyType.BINARY_DATA: encode_binary,
    PropertyType.UTF8_STRING_PAIR: encode_utf8_pair,
}
_REPEATABLE = ("user_properties", "subscription_identifiers")


def decode_properties(
    buf: memoryview, offset: int, packet: PacketType
) -> tuple[Properties, int]:
    """Decode a property block (length then properties) of ``packet`` starting at ``offset``."""
    length, offset = decode_varint(buf, offset)
    if length == 0:
        return EMPTY_PROPERTIES, offset
    end = offset + length
    if end > len(buf):
        raise NeedMoreData
    block = buf[:end]
    values: dict[str, Any] = {}
    users: list[tuple[str, str]] = []
    sub_ids: list[int] = []
    while offset < end:
        pid, offset = decode_varint(block, offset)
        spec = SPECS_BY_ID.get(pid)
        if spec is None:
            raise MalformedPacket(f"unknown property identifier 0x{pid:02x}")
        if packet not in spec.packets:
            raise MalformedPacket(f"property {spec.id.name} is not allowed in {packet.name}")
        value, offset = _DECODERS[spec.type](block, offset)
        if spec.id is PropertyId.USER_PROPERTY:
            users.append(value)
            continue
        if (spec.minimum is not None and value < spec.minimum) or (
            spec.maximum is not None and value > spec.maximum
        ):
            raise ProtocolError(f"property {spec.id.name} has invalid value {value}")
        if spec.id is PropertyId.SUBSCRIPTION_IDENTIFIER:
            if sub_ids and packet is not PacketType.PUBLISH:
                raise ProtocolError(f"property {spec.id.name} appears more than once")
            sub_ids.append(value)
            continue
        if spec.attribute in values:
            raise ProtocolError(f"property {spec.id.name} appears more than once")
        values[spec.attribute] = value
    if users:
        values["user_properties"] = tuple(users)
    if sub_ids:
        values["subscription_identifiers"] = tuple(sub_ids)
    return Properties(**values), end


def encode_properties(props: Properties, packet: PacketType) -> bytes:
    """Encode ``props`` as the property block (length included) of ``packet``."""
    if props is EMPTY_PROPERTIES:
        return b"\x00"
    parts: list[bytes] = []
    for spec in PROPERTY_SPECS:
        value = getattr(props, spec.attribute)
        if value is None or value == ():
            continue
        if packet not in spec.packets:
            raise EncodeError(f"property {spec.id.name} is not allowed in {packet.name}")
        encode = _ENCODERS[spec.type]
        prefix = _ID_BYTES[spec.id]
        items = cast("tuple[Any, ...]", value) if spec.attribute in _REPEATABLE else (value,)
        if spec.id is PropertyId.SUBSCRIPTION_IDENTIFIER and len(items) > 1 and (
            packet is not PacketType.PUBLISH
        ):
            raise EncodeError("only PUBLISH may carry several subscription identifiers")
        for item in items:
            if spec.attribute != "user_properties" and (
                (spec.minimum is not None and item < spec.minimum)
                or (spec.maximum is not None and item > spec.maximum)
            ):
                raise EncodeError(f"property {spec.id.name} has invalid value {item}")
            parts.append(prefix)
            parts.append(encode(item))
    body = b"".join(parts)
    return encode_varint(len(body)) + body


_ID_BYTES = {spec.id: bytes((spec.id,)) for spec in PROPERTY_SPECS}
