"""AMQP 0-9-1 reply codes and the typed errors of the AMQP protocol layer.

Two families, as in the spec:

* :class:`AMQPChannelError` (soft error): the broker closes one channel with ``channel.close``; the
  connection and its other channels carry on.
* :class:`AMQPConnectionError` (hard error): the broker closes the whole connection with
  ``connection.close``.

Both derive from :class:`AMQPError`, which carries the reply code, a log-worthy reply text and the
class/method id of the offending method (0/0 when no method is to blame).

:class:`LocalProtocolError` is different: it means *our* caller (the session or the broker logic)
misused the state machine API, e.g. sent a method on a channel that is not open.  It is never
caused by bytes from the peer.
"""

from __future__ import annotations

from enum import IntEnum


class ReplyCode(IntEnum):
    """AMQP 0-9-1 reply codes (spec section 1.9 'constants')."""

    REPLY_SUCCESS = 200
    CONTENT_TOO_LARGE = 311
    NO_ROUTE = 312
    NO_CONSUMERS = 313
    CONNECTION_FORCED = 320
    INVALID_PATH = 402
    ACCESS_REFUSED = 403
    NOT_FOUND = 404
    RESOURCE_LOCKED = 405
    PRECONDITION_FAILED = 406
    FRAME_ERROR = 501
    SYNTAX_ERROR = 502
    COMMAND_INVALID = 503
    CHANNEL_ERROR = 504
    UNEXPECTED_FRAME = 505
    RESOURCE_ERROR = 506
    NOT_ALLOWED = 530
    NOT_IMPLEMENTED = 540
    INTERNAL_ERROR = 541


#: Codes that close one channel (soft errors); everything else >= 300 closes the connection.
CHANNEL_CODES = frozenset(
    {
        ReplyCode.CONTENT_TOO_LARGE,
        ReplyCode.NO_ROUTE,
        ReplyCode.NO_CONSUMERS,
        ReplyCode.ACCESS_REFUSED,
        ReplyCode.NOT_FOUND,
        ReplyCode.RESOURCE_LOCKED,
        ReplyCode.PRECONDITION_FAILED,
    }
)

#: Codes that close the whole connection (hard errors).
CONNECTION_CODES = frozenset(
    {
        ReplyCode.CONNECTION_FORCED,
        ReplyCode.INVALID_PATH,
        ReplyCode.FRAME_ERROR,
        ReplyCode.SYNTAX_ERROR,
        ReplyCode.COMMAND_INVALID,
        ReplyCode.CHANNEL_ERROR,
        ReplyCode.UNEXPECTED_FRAME,
        ReplyCode.RESOURCE_ERROR,
        ReplyCode.NOT_ALLOWED,
        ReplyCode.NOT_IMPLEMENTED,
        ReplyCode.INTERNAL_ERROR,
    }
)

# ACCESS_REFUSED is a channel code in the spec, but RabbitMQ also closes the *connection* with it
# when authentication fails; AMQPConnectionError therefore accepts it too.
_CONNECTION_ALLOWED = CONNECTION_CODES | {ReplyCode.ACCESS_REFUSED}


class AMQPError(Exception):
    """Base of every error the AMQP protocol layer raises about the peer's input.

    ``reply_text`` is what goes on the wire (truncated to a shortstr when sent) and what the
    session should log.
    """

    def __init__(
        self, reply_code: ReplyCode, reply_text: str, class_id: int = 0, method_id: int = 0
    ) -> None:
        super().__init__(f"{int(reply_code)} {reply_code.name}: {reply_text}")
        self.reply_code = reply_code
        self.reply_text = reply_text
        self.class_id = class_id
        self.method_id = method_id


class AMQPChannelError(AMQPError):
    """A soft error: the channel is closed with ``channel.close``; the connection survives."""

    def __init__(
        self, reply_code: ReplyCode, reply_text: str, class_id: int = 0, method_id: int = 0
    ) -> None:
        if reply_code not in CHANNEL_CODES:
            raise ValueError(f"{reply_code!r} is not a channel-level reply code")
        super().__init__(reply_code, reply_text, class_id, method_id)


class AMQPConnectionError(AMQPError):
    """A hard error: the connection is closed with ``connection.close``."""

    def __init__(
        self, reply_code: ReplyCode, reply_text: str, class_id: int = 0, method_id: int = 0
    ) -> None:
        if reply_code not in _CONNECTION_ALLOWED:
            raise ValueError(f"{reply_code!r} is not a connection-level reply code")
        super().__init__(reply_code, reply_text, class_id, method_id)


class FrameError(AMQPConnectionError):
    """The byte stream is not valid AMQP framing (501); the stream cannot be resynchronised."""

    def __init__(self, reply_text: str) -> None:
        super().__init__(ReplyCode.FRAME_ERROR, reply_text)


class LocalProtocolError(Exception):
    """The caller of the state machine broke its API contract (not the peer's fault)."""
