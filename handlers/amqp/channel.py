"""Per-channel state: method validation and content assembly for ``basic.publish``.

How this works: the connection decodes a frame and hands it to the :class:`Channel` it belongs to.
A channel is either ``OPEN`` or ``CLOSING`` (we sent ``channel.close`` and wait for
``close-ok``; the connection drops everything else for it without decoding, as spec 4.2.4
requires).  An open channel is *idle* or *assembling* a content: ``basic.publish`` starts
assembly, the next frame must be the content header (class 60, body size, properties), then body
frames until exactly ``body_size`` bytes arrived; only then one :class:`Publish` event is
produced.  Any other frame in between is 505 UNEXPECTED_FRAME.

Maximum message size: a content header announcing a body larger than ``max_message_size`` is a
406 PRECONDITION_FAILED *channel* error, which is what RabbitMQ (3.8+) answers ("message size …
is larger than configured max size …").  We raise it as soon as the header announces the size,
so the oversized body is never buffered: its body frames arrive on a closing channel and are
dropped.
"""

from __future__ import annotations

from collections.abc import Callable
from enum import Enum

from pamqp import base, commands

from handlers.amqp import names
from handlers.amqp.errors import (
    AMQPChannelError,
    AMQPConnectionError,
    LocalProtocolError,
    ReplyCode,
)
from handlers.amqp.events import ChannelFlow, Event, MethodReceived, Publish
from handlers.amqp.frames import CONTENT_HEADER, CONTENT_HEADER_SIZE, decode_content_header

#: distinct property lists a channel remembers decoded (a publisher repeats the same few)
PROPERTIES_CACHE = 32
#: longer property lists (big headers tables) are decoded every time
PROPERTIES_CACHE_MAX_BYTES = 512

#: Methods a client may send on a non-zero channel, beyond channel.open/close (handled by the
#: connection).  Anything else (server-only methods such as basic.deliver) is 503.
CLIENT_CHANNEL_METHODS: frozenset[type[base.Frame]] = frozenset(
    {
        commands.Channel.Flow,
        commands.Channel.FlowOk,
        commands.Exchange.Declare,
        commands.Exchange.Delete,
        commands.Exchange.Bind,
        commands.Exchange.Unbind,
        commands.Queue.Declare,
        commands.Queue.Bind,
        commands.Queue.Purge,
        commands.Queue.Delete,
        commands.Queue.Unbind,
        commands.Basic.Qos,
        commands.Basic.Consume,
        commands.Basic.Cancel,
        commands.Basic.CancelOk,
        commands.Basic.Publish,
        commands.Basic.Get,
        commands.Basic.Ack,
        commands.Basic.Reject,
        commands.Basic.RecoverAsync,
        commands.Basic.Recover,
        commands.Basic.Nack,
        commands.Tx.Select,
        commands.Tx.Commit,
        commands.Tx.Rollback,
        commands.Confirm.Select,
    }
)

# (attribute, kind) pairs naming an exchange or queue, per method class.
_NAMED_FIELDS: dict[type[base.Frame], tuple[tuple[str, str], ...]] = {
    commands.Exchange.Declare: (("exchange", "exchange"),),
    commands.Exchange.Delete: (("exchange", "exchange"),),
    commands.Exchange.Bind: (("destination", "exchange"), ("source", "exchange")),
    commands.Exchange.Unbind: (("destination", "exchange"), ("source", "exchange")),
    commands.Queue.Declare: (("queue", "queue"),),
    commands.Queue.Bind: (("queue", "queue"), ("exchange", "exchange")),
    commands.Queue.Purge: (("queue", "queue"),),
    commands.Queue.Delete: (("queue", "queue"),),
    commands.Queue.Unbind: (("queue", "queue"), ("exchange", "exchange")),
    commands.Basic.Consume: (("queue", "queue"),),
    commands.Basic.Get: (("queue", "queue"),),
    commands.Basic.Publish: (("exchange", "exchange"),),
}


class ChannelState(Enum):
    """Lifecycle of an allocated channel number."""

    OPEN = "open"
    CLOSING = "closing"


class Channel:
    """State of one open channel.  Errors are raised as typed AMQP errors for the connection."""

    def __init__(
        self,
        number: int,
        *,
        max_message_size: int,
        name_policy: names.NamePolicy,
        reply: Callable[[int, base.Frame], None],
    ) -> None:
        self.number = number
        self.state = ChannelState.OPEN
        self.active = True
        self.close_code = 0
        self.close_text = ""
        self._max_message_size = max_message_size
        self._name_policy = name_policy
        self._reply = reply
        self._publish: commands.Basic.Publish | None = None
        self._properties: commands.Basic.Properties | None = None
        self._body_size = 0
        self._received = 0
        self._chunks: list[bytes] = []
        self._checked_exchange: str | None = None
        self._raw_properties = b""
        self._known_properties: dict[bytes, commands.Basic.Properties] = {}

    @property
    def assembling(self) -> bool:
        """Whether a ``basic.publish`` is waiting for its header or body."""
        return self._publish is not None

    def start_closing(self, reply_code: int, reply_text: str) -> None:
        """We sent ``channel.close``: forget any partial content and wait for ``close-ok``."""
        self.state = ChannelState.CLOSING
        self.close_code = reply_code
        self.close_text = reply_text
        self._reset_content()

    def handle_method(self, method: base.Frame) -> Event | None:
        """A decoded method (not channel.open/close/close-ok) for this open channel."""
        if type(method) is commands.Basic.Publish and self._publish is None:
            self.handle_publish(method)
            return None
        if self._publish is not None:
            raise AMQPConnectionError(
                ReplyCode.UNEXPECTED_FRAME,
                f"expected content header for basic.publish, got {method.name}",
                method.index >> 16,
                method.index & 0xFFFF,
            )
        method_type = type(method)
        if method_type not in CLIENT_CHANNEL_METHODS:
            raise AMQPConnectionError(
                ReplyCode.COMMAND_INVALID,
                f"{method.name} is not a method a client may send on a channel",
                method.index >> 16,
                method.index & 0xFFFF,
            )
        if method_type is commands.Basic.Ack:  # no names or arguments to check
            return MethodReceived(self.number, method)
        self._validate(method)
        if isinstance(method, commands.Basic.Publish):
            self._publish = method
            return None
        if isinstance(method, commands.Channel.Flow):
            self.active = bool(method.active)
            self._reply(self.number, commands.Channel.FlowOk(active=self.active))
            return ChannelFlow(self.number, self.active)
        return MethodReceived(self.number, method)

    def handle_publish(self, method: commands.Basic.Publish) -> None:
        """A ``basic.publish`` while no content is being assembled (:meth:`handle_method`'s
        hot path): content assembly starts."""
        if self._publish is not None:
            raise LocalProtocolError("handle_publish() while assembling a content")
        # A publisher sends to one exchange again and again, so its name is checked once
        # until it changes.
        if method.exchange != self._checked_exchange:
            self._validate(method)
            self._checked_exchange = method.exchange
        elif method.immediate:
            self._validate(method)
        self._publish = method

    def handle_header(self, payload: bytes) -> Event | None:
        """A content header frame."""
        if self._publish is None or self._properties is not None:
            raise AMQPConnectionError(
                ReplyCode.UNEXPECTED_FRAME, "content header frame without a pending basic.publish"
            )
        raw = payload[CONTENT_HEADER_SIZE:]
        known = self._known_properties.get(raw)
        if known is None:
            class_id, body_size, properties = decode_content_header(payload)
        else:  # raw is a known (so well-formed) property list: the payload is long enough
            class_id, _weight, body_size = CONTENT_HEADER.unpack_from(payload)
            properties = known
        if class_id != commands.Basic.frame_id:
            raise AMQPConnectionError(
                ReplyCode.UNEXPECTED_FRAME,
                f"content header for class {class_id}, expected basic (60)",
            )
        if known is None:
            names.check_table(properties.headers, commands.Basic.frame_id, 40)
            if len(raw) <= PROPERTIES_CACHE_MAX_BYTES:
                if len(self._known_properties) >= PROPERTIES_CACHE:
                    self._known_properties.clear()
                self._known_properties[raw] = properties
        # only short property lists travel as a cache key (see Publish.raw_properties)
        self._raw_properties = raw if len(raw) <= PROPERTIES_CACHE_MAX_BYTES else b""
        if body_size > self._max_message_size:
            raise AMQPChannelError(
                ReplyCode.PRECONDITION_FAILED,
                f"message size {body_size} is larger than configured max size "
                f"{self._max_message_size}",
                commands.Basic.frame_id,
                40,
            )
        self._properties = properties
        self._body_size = body_size
        if body_size == 0:
            return self._complete()
        return None

    def handle_whole(
        self, method: commands.Basic.Publish, content: bytes, body: bytes
    ) -> Event | None:
        """:meth:`handle_publish`, :meth:`handle_header` and :meth:`handle_body` at once, for a
        publish whose frames all arrived (the body in one frame; ``b""`` when empty)."""
        self.handle_publish(method)
        event = self.handle_header(content)
        if event is not None or len(body) != self._body_size:
            return event if event is not None else self.handle_body(body)
        assert self._publish is not None and self._properties is not None
        event = Publish(self.number, self._publish, self._properties, body, self._raw_properties)
        self._publish = None
        self._properties = None
        self._body_size = 0
        self._raw_properties = b""
        return event

    def handle_body(self, payload: bytes) -> Event | None:
        """A content body frame."""
        if self._publish is None or self._properties is None:
            raise AMQPConnectionError(
                ReplyCode.UNEXPECTED_FRAME, "content body frame without a pending content header"
            )
        self._received += len(payload)
        if self._received > self._body_size:
            raise AMQPConnectionError(
                ReplyCode.UNEXPECTED_FRAME,
                f"content body exceeds announced size {self._body_size} "
                f"(got at least {self._received})",
            )
        self._chunks.append(payload)
        if self._received == self._body_size:
            return self._complete()
        return None

    def _complete(self) -> Publish:
        assert self._publish is not None and self._properties is not None
        chunks = self._chunks
        body = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        event = Publish(self.number, self._publish, self._properties, body, self._raw_properties)
        self._reset_content()
        return event

    def _reset_content(self) -> None:
        self._publish = None
        self._properties = None
        self._body_size = 0
        self._received = 0
        if self._chunks:
            self._chunks = []
        self._raw_properties = b""

    def _validate(self, method: base.Frame) -> None:
        class_id, method_id = method.index >> 16, method.index & 0xFFFF
        for attribute, kind in _NAMED_FIELDS.get(type(method), ()):
            value = getattr(method, attribute)
            names.check_name(kind, value, self._name_policy, class_id, method_id)
        if isinstance(method, commands.Exchange.Declare):
            if not method.exchange:
                raise AMQPChannelError(
                    ReplyCode.ACCESS_REFUSED,
                    "operation not permitted on the default exchange",
                    class_id,
                    method_id,
                )
            if not method.passive:
                names.check_not_reserved("exchange", method.exchange, class_id, method_id)
        elif isinstance(method, commands.Exchange.Delete):
            if not method.exchange:
                raise AMQPChannelError(
                    ReplyCode.ACCESS_REFUSED,
                    "operation not permitted on the default exchange",
                    class_id,
                    method_id,
                )
            names.check_not_reserved("exchange", method.exchange, class_id, method_id)
        elif isinstance(method, commands.Queue.Declare) and not method.passive:
            names.check_not_reserved("queue", method.queue, class_id, method_id)
        elif isinstance(method, commands.Basic.Publish) and method.immediate:
            # RabbitMQ dropped 'immediate' in 3.0 and answers it with this connection error.
            raise AMQPConnectionError(
                ReplyCode.NOT_IMPLEMENTED, "immediate=true", class_id, method_id
            )
        elif isinstance(method, commands.Basic.Qos) and method.prefetch_size:
            raise AMQPConnectionError(
                ReplyCode.NOT_IMPLEMENTED,
                f"prefetch_size!=0 ({method.prefetch_size})",
                class_id,
                method_id,
            )
        arguments = getattr(method, "arguments", None)
        if isinstance(arguments, dict):
            names.check_table(arguments, class_id, method_id)
