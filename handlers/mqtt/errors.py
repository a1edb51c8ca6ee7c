"""Error types raised by the MQTT codec.

Every error a peer can cause carries the MQTT 5 reason code a broker must send (in a CONNACK
before the connection is accepted, in a DISCONNECT after) before closing the connection. MQTT
3.1.1 has no reason codes: a 3.1.1 broker just closes the connection, except for the CONNACK
return codes named on :class:`UnsupportedProtocolVersion`.

``NeedMoreData`` is not a protocol error: it tells the caller to feed more bytes.
"""

from __future__ import annotations

from .reason_codes import ReasonCode


class NeedMoreData(Exception):
    """The buffer ends before the value being decoded does."""


class MQTTError(Exception):
    """Base class of every error the peer can cause; ``reason_code`` is the code to send."""

    reason_code: int = ReasonCode.UNSPECIFIED_ERROR

    def __init__(self, message: str, reason_code: int | None = None) -> None:
        super().__init__(message)
        if reason_code is not None:
            self.reason_code = reason_code


class MalformedPacket(MQTTError):
    """The bytes cannot be parsed according to the specification (reason code 0x81)."""

    reason_code = ReasonCode.MALFORMED_PACKET


class ProtocolError(MQTTError):
    """The packet parses but breaks a protocol rule (reason code 0x82)."""

    reason_code = ReasonCode.PROTOCOL_ERROR


class PacketTooLarge(MQTTError):
    """The declared packet size exceeds the configured maximum (reason code 0x95)."""

    reason_code = ReasonCode.PACKET_TOO_LARGE


class UnsupportedProtocolVersion(MQTTError):
    """CONNECT names a protocol level this codec does not speak (reason code 0x84).

    ``protocol_level`` is what the client sent. A broker answers a version-5 client with a v5
    CONNACK carrying ``reason_code`` and every other client with a 3.1.1-style CONNACK carrying
    :attr:`return_code_v311` (0x01, "unacceptable protocol version"), then closes.
    """

    reason_code = ReasonCode.UNSUPPORTED_PROTOCOL_VERSION
    return_code_v311 = 0x01

    def __init__(self, message: str, protocol_level: int) -> None:
        super().__init__(message)
        self.protocol_level = protocol_level


class EncodeError(ValueError):
    """Local misuse: the packet given to the encoder cannot be sent in this protocol version."""
