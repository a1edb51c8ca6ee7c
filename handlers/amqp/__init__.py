"""AMQP 0-9-1 protocol handler.

:class:`AmqpHandler` is the plugin (entry point ``amqp``); :mod:`handlers.amqp.session` is the
thin trio session; :mod:`handlers.amqp.broker` holds the broker logic (exchanges, queues on the
core's subscriptions, bindings, vhosts, confirms).  Underneath is the sans-IO protocol layer:
:class:`ServerConnection` (bytes in → events out, broker calls in → bytes out) with its
handshake (:mod:`handlers.amqp.handshake`), its events, errors, framing and name validation.
"""

from handlers.amqp.connection import (
    CAPABILITIES,
    ConnectionState,
    ServerConnection,
    ServerSettings,
)
from handlers.amqp.errors import (
    AMQPChannelError,
    AMQPConnectionError,
    AMQPError,
    FrameError,
    LocalProtocolError,
    ReplyCode,
)
from handlers.amqp.events import (
    Acks,
    AuthenticationRequest,
    ChannelClosed,
    ChannelFlow,
    ChannelOpened,
    ConnectionClosed,
    ConnectionClosing,
    ConnectionTuned,
    Event,
    MethodReceived,
    Publish,
    VhostRequest,
)
from handlers.amqp.handler import AmqpHandler
from handlers.amqp.names import NamePolicy

__all__ = [
    "CAPABILITIES",
    "AMQPChannelError",
    "AMQPConnectionError",
    "AMQPError",
    "Acks",
    "AmqpHandler",
    "AuthenticationRequest",
    "ChannelClosed",
    "ChannelFlow",
    "ChannelOpened",
    "ConnectionClosed",
    "ConnectionClosing",
    "ConnectionState",
    "ConnectionTuned",
    "Event",
    "FrameError",
    "LocalProtocolError",
    "MethodReceived",
    "NamePolicy",
    "Publish",
    "ReplyCode",
    "ServerConnection",
    "ServerSettings",
    "VhostRequest",
]
