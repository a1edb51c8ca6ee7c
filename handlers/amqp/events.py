"""What the AMQP server state machine reports upward: one immutable type per kind of event
(frozen dataclasses; :class:`Publish`, made once per message, is a named tuple: cheaper to build).

The session calls :meth:`ServerConnection.next_event` until it returns ``None`` and reacts:

* :class:`AuthenticationRequest` / :class:`VhostRequest` pause the state machine until the session
  answers with ``accept_auth``/``reject_auth`` or ``accept_vhost``/``reject_vhost``.
* :class:`ConnectionTuned` tells the session the negotiated limits, notably the heartbeat.
* :class:`ChannelOpened`, :class:`ChannelClosed`, :class:`ChannelFlow` keep broker logic in step.
* :class:`Publish`, :class:`Acks` and :class:`MethodReceived` carry work for the broker logic.
* :class:`ConnectionClosing` means the broker sent ``connection.close`` (because of a protocol
  error) and waits for ``close-ok``; :class:`ConnectionClosed` is terminal: flush
  ``data_to_send()`` and close the socket.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, NamedTuple

from pamqp import base, commands, common

from handlers.amqp.errors import ReplyCode


@dataclass(frozen=True, slots=True)
class AuthenticationRequest:
    """The client sent ``connection.start-ok``; credentials are parsed from the SASL response."""

    mechanism: Literal["PLAIN", "AMQPLAIN"]
    username: str
    password: str
    client_properties: common.FieldTable
    locale: str


@dataclass(frozen=True, slots=True)
class ConnectionTuned:
    """``tune-ok`` arrived: the limits that now hold for this connection (0 heartbeat = off)."""

    channel_max: int
    frame_max: int
    heartbeat: int


@dataclass(frozen=True, slots=True)
class VhostRequest:
    """The client sent ``connection.open`` for this virtual host."""

    vhost: str


@dataclass(frozen=True, slots=True)
class ChannelOpened:
    """The client opened a channel; ``channel.open-ok`` has been queued."""

    channel: int


@dataclass(frozen=True, slots=True)
class ChannelClosed:
    """A channel is gone and its number is free again.

    ``by_peer`` is true when the client sent ``channel.close`` (its reply code and text are given);
    false when the close was ours and the client's ``close-ok`` has now arrived.
    """

    channel: int
    reply_code: int
    reply_text: str
    by_peer: bool


@dataclass(frozen=True, slots=True)
class ChannelFlow:
    """The client asked us to stop (``active=False``) or resume deliveries on a channel.

    ``channel.flow-ok`` has already been queued.
    """

    channel: int
    active: bool


class Publish(NamedTuple):
    """A complete ``basic.publish``: method, content header properties and the whole body.

    ``raw_properties`` is the property flags and list as received (``b""`` when unknown); equal
    raw bytes mean equal properties, which lets the session map them once for many messages.
    The ``properties`` object may be shared by several events: treat it as read-only.
    """

    channel: int
    method: commands.Basic.Publish
    properties: commands.Basic.Properties
    body: bytes
    raw_properties: bytes = b""


class Acks(NamedTuple):
    """A run of consecutive ``basic.ack`` frames with ``multiple=false`` on one open channel,
    received together (clients such as pika ack one delivery at a time): their delivery tags
    in the order received.  Equivalent to one :class:`MethodReceived` per tag."""

    channel: int
    tags: list[int]


@dataclass(frozen=True, slots=True)
class MethodReceived:
    """Any other client method for the broker logic (exchange.*, queue.*, basic.*, tx.*, …).

    Names and arguments were validated as far as the protocol layer can.
    """

    channel: int
    method: base.Frame


@dataclass(frozen=True, slots=True)
class ConnectionClosing:
    """We sent ``connection.close`` because of a hard error and now wait for ``close-ok``.

    The session should bound the wait (e.g. ``trio.move_on_after``) and call
    :meth:`ServerConnection.timer_expired` if it runs out.
    """

    reply_code: ReplyCode
    reply_text: str


@dataclass(frozen=True, slots=True)
class ConnectionClosed:
    """Terminal: flush ``data_to_send()`` then close the transport.

    ``by_peer`` is true when the client sent ``connection.close`` (``reply_code``/``reply_text``
    are its values) or dropped the stream; otherwise the close was ours (error, timeout, bad
    protocol header).  ``reply_code`` is 0 when no close handshake took place (stream dropped,
    missed heartbeats, handshake timeout).
    """

    reply_code: int
    reply_text: str
    by_peer: bool


Event = (
    AuthenticationRequest
    | ConnectionTuned
    | VhostRequest
    | ChannelOpened
    | ChannelClosed
    | ChannelFlow
    | Publish
    | Acks
    | MethodReceived
    | ConnectionClosing
    | ConnectionClosed
)
"""Every event :meth:`ServerConnection.next_event` can return."""
