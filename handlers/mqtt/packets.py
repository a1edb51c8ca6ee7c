"""MQTT control packets as frozen dataclasses, one per packet type, shared by 3.1.1 and 5.0.

Fields that only exist in MQTT 5 (reason codes on acknowledgements, properties) keep their
defaults for 3.1.1; the encoder refuses to send a 3.1.1 packet that would lose them. In a 3.1.1
CONNACK ``reason_code`` holds the 3.1.1 return code (see ``ConnackReturnCodeV311``); in a 3.1.1
SUBACK ``reason_codes`` holds the return codes (0, 1, 2 or 0x80).

``Publish.payload`` is whatever the decoder sliced from the received packet (a read-only
``memoryview`` into it, no copy) or whatever the caller gave the encoder.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, TypeAlias

from .packet_types import MQTT_5, PacketType
from .properties import EMPTY_PROPERTIES, Properties

#: Bytes-like payloads accepted and produced by the codec.
Payload: TypeAlias = bytes | bytearray | memoryview


@dataclass(frozen=True, slots=True)
class Will:
    """The will message carried in CONNECT."""

    topic: str
    payload: bytes = b""
    qos: int = 0
    retain: bool = False
    properties: Properties = EMPTY_PROPERTIES


@dataclass(frozen=True, slots=True)
class Connect:
    """CONNECT: ``protocol_level`` is 4 (3.1.1) or 5; ``clean_start`` is 3.1.1's clean session."""

    packet_type: ClassVar[PacketType] = PacketType.CONNECT
    client_id: str
    protocol_level: int = MQTT_5
    clean_start: bool = True
    keep_alive: int = 0
    username: str | None = None
    password: bytes | None = None
    will: Will | None = None
    properties: Properties = EMPTY_PROPERTIES


@dataclass(frozen=True, slots=True)
class ConnAck:
    """CONNACK."""

    packet_type: ClassVar[PacketType] = PacketType.CONNACK
    session_present: bool = False
    reason_code: int = 0
    properties: Properties = EMPTY_PROPERTIES


@dataclass(frozen=True, slots=True)
class Publish:
    """PUBLISH; ``packet_id`` is ``None`` exactly when ``qos`` is 0."""

    packet_type: ClassVar[PacketType] = PacketType.PUBLISH
    topic: str
    payload: Payload = b""
    qos: int = 0
    retain: bool = False
    dup: bool = False
    packet_id: int | None = None
    properties: Properties = EMPTY_PROPERTIES


@dataclass(frozen=True, slots=True)
class PubAck:
    """PUBACK (QoS 1 acknowledgement)."""

    packet_type: ClassVar[PacketType] = PacketType.PUBACK
    packet_id: int
    reason_code: int = 0
    properties: Properties = EMPTY_PROPERTIES


@dataclass(frozen=True, slots=True)
class PubRec:
    """PUBREC (QoS 2, part 1)."""

    packet_type: ClassVar[PacketType] = PacketType.PUBREC
    packet_id: int
    reason_code: int = 0
    properties: Properties = EMPTY_PROPERTIES


@dataclass(frozen=True, slots=True)
class PubRel:
    """PUBREL (QoS 2, part 2)."""

    packet_type: ClassVar[PacketType] = PacketType.PUBREL
    packet_id: int
    reason_code: int = 0
    properties: Properties = EMPTY_PROPERTIES


@dataclass(frozen=True, slots=True)
class PubComp:
    """PUBCOMP (QoS 2, part 3)."""

    packet_type: ClassVar[PacketType] = PacketType.PUBCOMP
    packet_id: int
    reason_code: int = 0
    properties: Properties = EMPTY_PROPERTIES


@dataclass(frozen=True, slots=True)
class Subscription:
    """One topic filter of a SUBSCRIBE with its options (only ``qos`` exists in 3.1.1)."""

    topic_filter: str
    qos: int = 0
    no_local: bool = False
    retain_as_published: bool = False
    retain_handling: int = 0


@dataclass(frozen=True, slots=True)
class Subscribe:
    """SUBSCRIBE."""

    packet_type: ClassVar[PacketType] = PacketType.SUBSCRIBE
    packet_id: int
    subscriptions: tuple[Subscription, ...]
    properties: Properties = EMPTY_PROPERTIES


@dataclass(frozen=True, slots=True)
class SubAck:
    """SUBACK: one reason code (3.1.1: return code) per requested filter."""

    packet_type: ClassVar[PacketType] = PacketType.SUBACK
    packet_id: int
    reason_codes: tuple[int, ...]
    properties: Properties = EMPTY_PROPERTIES


@dataclass(frozen=True, slots=True)
class Unsubscribe:
    """UNSUBSCRIBE."""

    packet_type: ClassVar[PacketType] = PacketType.UNSUBSCRIBE
    packet_id: int
    topic_filters: tuple[str, ...]
    properties: Properties = EMPTY_PROPERTIES


@dataclass(frozen=True, slots=True)
class UnsubAck:
    """UNSUBACK: MQTT 5 has one reason code per filter; 3.1.1 has none."""

    packet_type: ClassVar[PacketType] = PacketType.UNSUBACK
    packet_id: int
    reason_codes: tuple[int, ...] = ()
    properties: Properties = EMPTY_PROPERTIES


@dataclass(frozen=True, slots=True)
class PingReq:
    """PINGREQ."""

    packet_type: ClassVar[PacketType] = PacketType.PINGREQ


@dataclass(frozen=True, slots=True)
class PingResp:
    """PINGRESP."""

    packet_type: ClassVar[PacketType] = PacketType.PINGRESP


@dataclass(frozen=True, slots=True)
class Disconnect:
    """DISCONNECT (reason code and properties are MQTT 5 only)."""

    packet_type: ClassVar[PacketType] = PacketType.DISCONNECT
    reason_code: int = 0
    properties: Properties = EMPTY_PROPERTIES


@dataclass(frozen=True, slots=True)
class Auth:
    """AUTH (MQTT 5 only)."""

    packet_type: ClassVar[PacketType] = PacketType.AUTH
    reason_code: int = 0
    properties: Properties = EMPTY_PROPERTIES


#: Any MQTT control packet.
Packet: TypeAlias = (
    Connect | ConnAck | Publish | PubAck | PubRec | PubRel | PubComp | Subscribe | SubAck
    | Unsubscribe | UnsubAck | PingReq | PingResp | Disconnect | Auth
)
