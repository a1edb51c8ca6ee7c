"""MQTT 3.1.1 and 5.0: the served handler (:class:`MqttHandler`) and its sans-IO codec.

The codec (packets, properties, framing, encoding and decoding) has no sockets and no trio;
the trio session that moves bytes is :mod:`handlers.mqtt.session`.
"""

from .decoder import decode, decode_fixed_header, decode_packet
from .encoder import encode
from .errors import (
    EncodeError,
    MalformedPacket,
    MQTTError,
    NeedMoreData,
    PacketTooLarge,
    ProtocolError,
    UnsupportedProtocolVersion,
)
from .framing import ABSOLUTE_MAX_PACKET_SIZE, PacketReader, Role
from .handler import MqttHandler
from .packet_types import MQTT_5, MQTT_311, PacketType
from .packets import (
    Auth,
    ConnAck,
    Connect,
    Disconnect,
    Packet,
    Payload,
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
from .properties import EMPTY_PROPERTIES, Properties, PropertyId
from .reason_codes import ConnackReturnCodeV311, ReasonCode

__all__ = [
    "ABSOLUTE_MAX_PACKET_SIZE",
    "EMPTY_PROPERTIES",
    "MQTT_5",
    "MQTT_311",
    "Auth",
    "ConnAck",
    "ConnackReturnCodeV311",
    "Connect",
    "Disconnect",
    "EncodeError",
    "MQTTError",
    "MalformedPacket",
    "MqttHandler",
    "NeedMoreData",
    "Packet",
    "PacketReader",
    "PacketTooLarge",
    "PacketType",
    "Payload",
    "PingReq",
    "PingResp",
    "Properties",
    "PropertyId",
    "ProtocolError",
    "PubAck",
    "PubComp",
    "PubRec",
    "PubRel",
    "Publish",
    "ReasonCode",
    "Role",
    "SubAck",
    "Subscribe",
    "Subscription",
    "UnsubAck",
    "Unsubscribe",
    "UnsupportedProtocolVersion",
    "Will",
    "decode",
    "decode_fixed_header",
    "decode_packet",
    "encode",
]
