"""The AMQP 0-9-1 connection handshake, server side: settings, states and the steps before OPEN.

Sans-IO like :mod:`handlers.amqp.connection`, whose
:class:`~handlers.amqp.connection.ServerConnection` inherits :class:`Handshake`:
protocol header → ``connection.start`` → ``start-ok`` (SASL PLAIN or AMQPLAIN, answered by the
session through ``accept_auth``/``reject_auth``) → ``connection.tune`` → ``tune-ok`` (limits
checked, heartbeat negotiated as RabbitMQ does) → ``connection.open`` (the vhost, answered
through ``accept_vhost``/``reject_vhost``).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from enum import Enum
from typing import TYPE_CHECKING, Literal

from pamqp import commands, common

from handlers.amqp import names
from handlers.amqp.errors import AMQPConnectionError, ReplyCode
from handlers.amqp.events import AuthenticationRequest, ConnectionTuned, Event, VhostRequest
from handlers.amqp.frames import (
    FRAME_METHOD,
    FRAME_MIN_SIZE,
    PROTOCOL_HEADER,
    FrameReader,
    RawFrame,
    decode_method,
    encode_method,
)
from handlers.amqp.sasl import parse_amqplain, parse_plain

__all__ = ["CAPABILITIES", "PAUSED_STATES", "ConnectionState", "Handshake", "ServerSettings"]


CAPABILITIES: common.FieldTable = {
    "publisher_confirms": True,
    "exchange_exchange_bindings": True,
    "basic.nack": True,
    "consumer_cancel_notify": True,
    "connection.blocked": True,
    "authentication_failure_close": True,
    "per_consumer_qos": True,
}
"""Capabilities announced in ``connection.start`` (RabbitMQ's names, which clients check)."""


@dataclass(frozen=True, slots=True)
class ServerSettings:
    """Limits and identity the broker proposes to every client."""

    channel_max: int = 2047
    frame_max: int = 131072
    heartbeat: int = 60
    max_message_size: int = 16 * 1024 * 1024
    product: str = "Polystream"
    version: str = "0.1.0"
    name_policy: names.NamePolicy = names.NamePolicy.COMPATIBLE
    max_receive_buffer: int = 256 * 1024
    max_send_buffer: int = 4 * 1024 * 1024

    def __post_init__(self) -> None:
        if not 1 <= self.channel_max <= 0xFFFF:
            raise ValueError("channel_max must be in 1..65535")
        if self.frame_max < FRAME_MIN_SIZE:
            raise ValueError(f"frame_max must be >= {FRAME_MIN_SIZE}")
        if not 0 <= self.heartbeat <= 0xFFFF:
            raise ValueError("heartbeat must be in 0..65535")


class ConnectionState(Enum):
    """Where the connection is in its lifecycle (see the module docstring)."""

    AWAIT_HEADER = "await-header"
    AWAIT_START_OK = "await-start-ok"
    AUTHENTICATING = "authenticating"
    AWAIT_TUNE_OK = "await-tune-ok"
    AWAIT_OPEN = "await-open"
    VHOST_CHECK = "vhost-check"
    OPEN = "open"
    CLOSING = "closing"
    CLOSED = "closed"


#: states in which :meth:`ServerConnection.next_event` processes no input
PAUSED_STATES = frozenset(
    {ConnectionState.CLOSED, ConnectionState.AUTHENTICATING, ConnectionState.VHOST_CHECK}
)


class Handshake:
    """The handshake steps of :class:`~handlers.amqp.connection.ServerConnection` (a mixin)."""

    settings: ServerSettings
    state: ConnectionState
    channel_max: int
    frame_max: int
    heartbeat_interval: int
    client_heartbeat: int
    vhost: str | None
    username: str | None
    client_properties: common.FieldTable
    _reader: FrameReader
    _events: deque[Event]

    if TYPE_CHECKING:

        def _queue(self, data: bytes, *, session: bool = False) -> None: ...

        def _finish(self, code: int, text: str, *, by_peer: bool) -> None: ...

        def _peer_close(self, method: commands.Connection.Close) -> None: ...

    def _handle_protocol_header(self) -> bool:
        head = self._reader.read_protocol_header()
        if head is None:
            return False
        if head != PROTOCOL_HEADER:
            self._queue(PROTOCOL_HEADER)
            self._reader.discard()
            self._finish(
                int(ReplyCode.FRAME_ERROR),
                f"unsupported protocol header {head!r}; answered with AMQP 0-9-1",
                by_peer=False,
            )
            return True
        self.state = ConnectionState.AWAIT_START_OK
        server_properties: common.FieldTable = {
            "product": self.settings.product,
            "version": self.settings.version,
            "platform": "Python/trio",
            "information": "Polystream multi-protocol gateway",
            "capabilities": dict(CAPABILITIES),
        }
        start = commands.Connection.Start(
            version_major=0,
            version_minor=9,
            server_properties=server_properties,
            mechanisms="PLAIN AMQPLAIN",
            locales="en_US",
        )
        self._queue(encode_method(0, start))
        return True

    def _handle_handshake(self, frame: RawFrame) -> None:
        if frame.frame_type != FRAME_METHOD or frame.channel != 0:
            raise AMQPConnectionError(
                ReplyCode.COMMAND_INVALID,
                f"frame type {frame.frame_type} on channel {frame.channel} during handshake "
                f"({self.state.value})",
            )
        method = decode_method(frame.payload)
        if isinstance(method, commands.Connection.Close):
            self._peer_close(method)
            return
        if self.state is ConnectionState.AWAIT_START_OK and isinstance(
            method, commands.Connection.StartOk
        ):
            self._handle_start_ok(method)
        elif self.state is ConnectionState.AWAIT_TUNE_OK and isinstance(
            method, commands.Connection.TuneOk
        ):
            self._handle_tune_ok(method)
        elif self.state is ConnectionState.AWAIT_OPEN and isinstance(
            method, commands.Connection.Open
        ):
            self.vhost = method.virtual_host
            self.state = ConnectionState.VHOST_CHECK
            self._events.append(VhostRequest(method.virtual_host))
        else:
            raise AMQPConnectionError(
                ReplyCode.COMMAND_INVALID,
                f"unexpected {method.name} in state {self.state.value}",
                method.index >> 16,
                method.index & 0xFFFF,
            )

    def _handle_start_ok(self, method: commands.Connection.StartOk) -> None:
        names.check_table(method.client_properties, 10, 11)
        self.client_properties = dict(method.client_properties or {})
        response = method.response
        raw = response.encode("utf-8") if isinstance(response, str) else bytes(response or b"")
        mechanism: Literal["PLAIN", "AMQPLAIN"]
        if method.mechanism == "PLAIN":
            mechanism = "PLAIN"
            username, password = parse_plain(raw)
        elif method.mechanism == "AMQPLAIN":
            mechanism = "AMQPLAIN"
            username, password = parse_amqplain(raw)
        else:
            raise AMQPConnectionError(
                ReplyCode.COMMAND_INVALID,
                f"unknown authentication mechanism {method.mechanism!r}",
                10,
                11,
            )
        self.username = username
        self.state = ConnectionState.AUTHENTICATING
        self._events.append(
            AuthenticationRequest(
                mechanism=mechanism,
                username=username,
                password=password,
                client_properties=self.client_properties,
                locale=method.locale,
            )
        )

    def _handle_tune_ok(self, method: commands.Connection.TuneOk) -> None:
        ours = self.settings
        channel_max = method.channel_max or ours.channel_max
        if channel_max > ours.channel_max:
            raise AMQPConnectionError(
                ReplyCode.NOT_ALLOWED,
                f"channel_max={channel_max} > {ours.channel_max} max channels",
                10,
                31,
            )
        frame_max = method.frame_max or ours.frame_max
        if frame_max < FRAME_MIN_SIZE or frame_max > ours.frame_max:
            raise AMQPConnectionError(
                ReplyCode.NOT_ALLOWED,
                f"frame_max={frame_max} outside {FRAME_MIN_SIZE}..{ours.frame_max}",
                10,
                31,
            )
        self.channel_max = channel_max
        self.frame_max = frame_max
        # RabbitMQ's rule: the client's tune-ok value is final (0 disables heartbeats).
        self.heartbeat_interval = method.heartbeat
        self.client_heartbeat = method.heartbeat
        self._reader.frame_max = frame_max
        self.state = ConnectionState.AWAIT_OPEN
        self._events.append(ConnectionTuned(channel_max, frame_max, self.heartbeat_interval))
