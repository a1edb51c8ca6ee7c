"""MQTT control packet types (the high nibble of the fixed header) and protocol levels."""

from __future__ import annotations

from enum import IntEnum


class PacketType(IntEnum):
    """Control packet type; ``WILL`` (16) is not a packet but the context of will properties."""

    CONNECT = 1
    CONNACK = 2
    PUBLISH = 3
    PUBACK = 4
    PUBREC = 5
    PUBREL = 6
    PUBCOMP = 7
    SUBSCRIBE = 8
    SUBACK = 9
    UNSUBSCRIBE = 10
    UNSUBACK = 11
    PINGREQ = 12
    PINGRESP = 13
    DISCONNECT = 14
    AUTH = 15
    WILL = 16


#: Protocol level byte of CONNECT for MQTT 3.1.1.
MQTT_311 = 4
#: Protocol level byte of CONNECT for MQTT 5.0.
MQTT_5 = 5

#: Packets a client sends to a server.
CLIENT_TO_SERVER = frozenset(
    {PacketType.CONNECT, PacketType.PUBLISH, PacketType.PUBACK, PacketType.PUBREC,
     PacketType.PUBREL, PacketType.PUBCOMP, PacketType.SUBSCRIBE, PacketType.UNSUBSCRIBE,
     PacketType.PINGREQ, PacketType.DISCONNECT, PacketType.AUTH}
)
#: Packets a server sends to a client.
SERVER_TO_CLIENT = frozenset(
    {PacketType.CONNACK, PacketType.PUBLISH, PacketType.PUBACK, PacketType.PUBREC,
     PacketType.PUBREL, PacketType.PUBCOMP, PacketType.SUBACK, PacketType.UNSUBACK,
     PacketType.PINGRESP, PacketType.DISCONNECT, PacketType.AUTH}
)
