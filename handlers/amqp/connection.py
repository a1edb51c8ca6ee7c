"""The server side of an AMQP 0-9-1 connection as a sans-IO state machine.

Theory of operation
-------------------
The session feeds received bytes to :meth:`ServerConnection.receive_data`, then calls
:meth:`~ServerConnection.next_event` until it returns ``None``, reacting to each event, and
writes whatever :meth:`~ServerConnection.data_to_send` returns.  No trio, no sockets, no clock.

Connection states, in order::

    AWAIT_HEADER ─header ok─▶ AWAIT_START_OK ─start-ok─▶ AUTHENTICATING ─accept_auth()─▶
    AWAIT_TUNE_OK ─tune-ok─▶ AWAIT_OPEN ─open─▶ VHOST_CHECK ─accept_vhost()─▶ OPEN

``AUTHENTICATING`` and ``VHOST_CHECK`` pause input processing (``next_event`` returns ``None``)
until the session answers.  From any state a hard error moves to ``CLOSING`` (we sent
``connection.close`` and only ``close``/``close-ok`` still matter) and then ``CLOSED``; a peer's
``connection.close`` moves straight to ``CLOSED`` after our ``close-ok``.  A framing error (bad
end octet, unknown frame type, oversized frame) desynchronises the stream, so it sends
``connection.close`` 501 and goes straight to ``CLOSED``.  A wrong protocol header is answered
with our header and ``CLOSED``.

Error codes chosen where the spec leaves room (following RabbitMQ where known):

* frames on a channel that is not open → 504 CHANNEL_ERROR; ``channel.open`` on a number above
  channel-max → 530 NOT_ALLOWED; ``channel.open`` on an open channel → 504.
* server-only methods from the client, non-connection methods on channel 0, or connection
  methods on other channels → 503 COMMAND_INVALID; unknown method ids → 540 NOT_IMPLEMENTED.
* content frames out of sequence → 505 UNEXPECTED_FRAME; undecodable method arguments → 501.
* unknown SASL mechanism → 503 (RabbitMQ), bad credentials syntax or rejected login → 403.
* tune-ok with frame-max below 4096 or above ours, or channel-max above ours → 530; 0 in
  tune-ok means "take the server's value" for frame-max and channel-max.  Heartbeat: the
  client's tune-ok value, as RabbitMQ does (0 disables heartbeats both ways).
* ``basic.publish`` with immediate=true and ``basic.qos`` with prefetch-size ≠ 0 → 540, as
  RabbitMQ.
* Before tune-ok, incoming frames may be as large as *our* frame-max (the spec says 4096; being
  lenient costs nothing since the buffer is bounded by frame-max either way).

The handshake steps (before ``OPEN``), :class:`ServerSettings` and :class:`ConnectionState` live
in :mod:`handlers.amqp.handshake`.

Hot path: on an open connection, a ``basic.publish`` whose method, header and body frames have
all been received is handed to its channel at once, and a run of them becomes a run of
:class:`Publish` events in one step (``_step_open``); so does a run of single ``basic.ack``
frames on one channel, as one :class:`Acks` event; other content frames and publishes go
straight to the channel frame by frame.  ``basic.publish`` and its content header are decoded
by the struct-based fast path of :mod:`handlers.amqp.frames` (pamqp decides whatever it cannot
read), and deliveries go out through :meth:`~ServerConnection.send_encoded_content` (frames a
:class:`~handlers.amqp.frames.DeliverEncoder` built) or :meth:`ServerConnection.send_deliver`,
both without pamqp objects.

Time is the session's job: after ``ConnectionTuned`` it should send :meth:`send_heartbeat` every
``heartbeat_interval / 2`` seconds when idle and call :meth:`timer_expired` if nothing at all was
received for ``2 * heartbeat_interval`` (or when a handshake or close-ok wait times out).

Heartbeat negotiation follows RabbitMQ: the value the client sends in tune-ok is used (our
``connection.tune`` only proposes).  A client whose tune-ok says 0 (amqp-tools' default) gets
no heartbeats and is never dropped for silence: :attr:`expects_heartbeats` is false and
``timer_expired`` on an open connection is ignored.
"""

from __future__ import annotations

from collections import deque

from pamqp import base, commands, common

from handlers.amqp.channel import Channel, ChannelState
from handlers.amqp.errors import (
    CHANNEL_CODES,
    AMQPChannelError,
    AMQPConnectionError,
    FrameError,
    LocalProtocolError,
    ReplyCode,
)
from handlers.amqp.events import (
    Acks,
    ChannelClosed,
    ChannelOpened,
    ConnectionClosed,
    ConnectionClosing,
    Event,
    MethodReceived,
    Publish,
)
from handlers.amqp.frames import (
    FRAME_BODY,
    FRAME_HEADER,
    FRAME_HEARTBEAT,
    FRAME_METHOD,
    FrameReader,
    RawFrame,
    decode_method,
    decode_publish_fast,
    encode_content,
    encode_deliver,
    encode_heartbeat,
    encode_method,
    method_ids,
)
from handlers.amqp.handshake import (
    CAPABILITIES,
    PAUSED_STATES,
    ConnectionState,
    Handshake,
    ServerSettings,
)

__all__ = ["CAPABILITIES", "ConnectionState", "ServerConnection", "ServerSettings"]

_CHANNEL_CLOSE = (20, 40)
_CHANNEL_CLOSE_OK = (20, 41)
_CHANNEL_OPEN = (20, 10)
_CONNECTION_CLOSE = (10, 50)
_CONNECTION_CLOSE_OK = (10, 51)


def _shortstr(text: str) -> str:
    """Truncate text to fit a shortstr (255 UTF-8 bytes) without splitting a character."""
    raw = text.encode("utf-8")
    if len(raw) <= 255:
        return text
    return raw[:255].decode("utf-8", "ignore")


class ServerConnection(Handshake):
    """One client connection, server side.  See the module docstring for the protocol."""

    def __init__(self, settings: ServerSettings | None = None) -> None:
        self.settings = settings or ServerSettings()
        self.state = ConnectionState.AWAIT_HEADER
        self.channel_max = self.settings.channel_max
        self.frame_max = self.settings.frame_max
        self.heartbeat_interval = 0
        """Negotiated heartbeat in seconds (0: disabled); valid after ``ConnectionTuned``."""
        self.client_heartbeat = 0
        """The heartbeat the client asked for in tune-ok (0: it will not send heartbeats)."""
        self.vhost: str | None = None
        self.username: str | None = None
        self.client_properties: common.FieldTable = {}
        self.blocked = False
        self._reader = FrameReader(self.settings.frame_max, self.settings.max_receive_buffer)
        self._out: list[bytes] = []
        self._out_size = 0
        self._events: deque[Event] = deque()
        self._channels: dict[int, Channel] = {}
        self._close_code = 0
        self._close_text = ""

    # ------------------------------------------------------------------ input

    def receive_data(self, data: bytes) -> None:
        """Feed bytes received from the client; ``b""`` means the client closed the stream."""
        if self.state is ConnectionState.CLOSED:
            return
        if not data:
            self._reader.discard()
            self._finish(0, "connection closed by peer without connection.close", by_peer=True)
            return
        self._reader.feed(data)

    def next_event(self) -> Event | None:
        """The next event, or ``None`` when more data (or a session decision) is needed."""
        events = self._events
        if events:
            return events.popleft()
        while not events:
            state = self.state
            if state in PAUSED_STATES:
                return None
            try:
                if not (self._step_open() if state is ConnectionState.OPEN else self._step()):
                    break
            except FrameError as exc:
                self._fatal_frame_error(exc)
            except AMQPConnectionError as exc:
                self._connection_error(exc)
        return events.popleft() if events else None

    # ----------------------------------------------------------------- output

    def data_to_send(self) -> bytes:
        """Everything queued for the client since the last call (possibly ``b""``)."""
        data = b"".join(self._out)
        self._out.clear()
        self._out_size = 0
        return data

    @property
    def has_data_to_send(self) -> bool:
        """Whether :meth:`data_to_send` would return bytes."""
        return bool(self._out)

    def send_method(self, channel: int, method: base.Frame) -> bool:
        """Queue a method frame for an open channel (or channel 0).

        Returns ``False`` (and sends nothing) when the channel is no longer open, e.g. a late
        reply after the client closed it; raises :class:`LocalProtocolError` on API misuse.
        """
        if not self._can_send(channel, method):
            return False
        self._queue(encode_method(channel, method), session=True)
        return True

    def send_content(
        self,
        channel: int,
        method: base.Frame,
        properties: commands.Basic.Properties,
        body: bytes,
    ) -> bool:
        """Queue a content-bearing method (basic.deliver/get-ok/return) split at frame-max."""
        if channel == 0:
            raise LocalProtocolError("content cannot be sent on channel 0")
        if not self._can_send(channel, method):
            return False
        self._queue(encode_content(channel, method, properties, body, self.frame_max), session=True)
        return True

    def send_unroutable(self, channel: int, publish: Publish) -> bool:
        """basic.return (312 NO_ROUTE) of a mandatory publish that no queue took."""
        method = publish.method
        return self.send_content(
            channel,
            commands.Basic.Return(reply_code=int(ReplyCode.NO_ROUTE), reply_text="NO_ROUTE",
                                  exchange=method.exchange, routing_key=method.routing_key),
            publish.properties, publish.body)

    def send_deliver(
        self,
        channel: int,
        consumer_tag: str,
        delivery_tag: int,
        redelivered: bool,
        exchange: str,
        routing_key: str,
        properties: commands.Basic.Properties | None,
        body: bytes,
    ) -> bool:
        """Queue a ``basic.deliver`` with its content, encoded without building pamqp objects.

        ``properties`` ``None`` means none.  Returns ``False`` (and sends nothing) when the
        channel is not open; the bytes are those :meth:`send_content` would queue.
        """
        if not self._content_channel_open(channel):
            return False
        data = encode_deliver(
            channel,
            consumer_tag,
            delivery_tag,
            redelivered,
            exchange,
            routing_key,
            properties,
            body,
            self.frame_max,
        )
        self._queue(data, session=True)
        return True

    def send_encoded_content(self, channel: int, data: bytes) -> bool:
        """Queue content frames the caller encoded for ``channel`` (e.g. with
        :func:`~handlers.amqp.frames.encode_content_frames` at :attr:`frame_max`).

        The bytes are queued as they are; returns ``False`` when the channel is not open.
        """
        if not self._content_channel_open(channel):
            return False
        self._queue(data, session=True)
        return True

    def send_encoded_contents(self, channel: int, parts: list[bytes]) -> bool:
        """:meth:`send_encoded_content` for several deliveries at once (checked once)."""
        if not self._content_channel_open(channel):
            return False
        if self._out_size > self.settings.max_send_buffer:
            raise LocalProtocolError(
                f"{self._out_size} bytes queued: write data_to_send() before sending more"
            )
        self._out.extend(parts)
        self._out_size += sum(map(len, parts))
        return True

    def send_heartbeat(self) -> None:
        """Queue a heartbeat frame (only once the connection is open)."""
        if self.state is ConnectionState.OPEN:
            self._queue(encode_heartbeat())

    def send_blocked(self, reason: str) -> bool:
        """Tell the client publishing is blocked (only if it announced ``connection.blocked``)."""
        if self.state is not ConnectionState.OPEN or not self._client_capability(
            "connection.blocked"
        ):
            return False
        self.blocked = True
        self._queue(encode_method(0, commands.Connection.Blocked(reason=_shortstr(reason))))
        return True

    def send_unblocked(self) -> bool:
        """Lift a previous :meth:`send_blocked`."""
        if self.state is not ConnectionState.OPEN or not self.blocked:
            return False
        self.blocked = False
        self._queue(encode_method(0, commands.Connection.Unblocked()))
        return True

    def close_channel(
        self,
        channel: int,
        reply_code: ReplyCode,
        reply_text: str,
        class_id: int = 0,
        method_id: int = 0,
    ) -> bool:
        """Close an open channel from the broker side (e.g. 404 from the broker logic).

        ``reply_code`` is 200 or a channel-level code; returns ``False`` if the channel is not
        open (any more).
        """
        if reply_code is not ReplyCode.REPLY_SUCCESS and reply_code not in CHANNEL_CODES:
            raise LocalProtocolError(f"{reply_code!r} cannot close a channel; use close()")
        chan = self._channels.get(channel)
        if chan is None or chan.state is not ChannelState.OPEN:
            return False
        self._close_channel(chan, int(reply_code), reply_text, class_id, method_id)
        return True

    def close(
        self, reply_code: ReplyCode = ReplyCode.REPLY_SUCCESS, reply_text: str = "Goodbye"
    ) -> None:
        """Start closing the connection from the broker side (shutdown, 320 forced close …)."""
        if self.state in (ConnectionState.CLOSING, ConnectionState.CLOSED):
            return
        if self.state is ConnectionState.AWAIT_HEADER:
            self._finish(int(reply_code), reply_text, by_peer=False)
            return
        self._send_close(int(reply_code), reply_text, 0, 0)

    def accept_auth(self) -> None:
        """Answer an :class:`AuthenticationRequest` positively: ``connection.tune`` is queued."""
        self._require(ConnectionState.AUTHENTICATING, "accept_auth")
        self.state = ConnectionState.AWAIT_TUNE_OK
        tune = commands.Connection.Tune(
            channel_max=self.settings.channel_max,
            frame_max=self.settings.frame_max,
            heartbeat=self.settings.heartbeat,
        )
        self._queue(encode_method(0, tune))

    def reject_auth(self, reply_text: str = "Login was refused") -> None:
        """Refuse the login: ``connection.close`` 403 ACCESS_REFUSED."""
        self._require(ConnectionState.AUTHENTICATING, "reject_auth")
        self._connection_error(AMQPConnectionError(ReplyCode.ACCESS_REFUSED, reply_text))

    def accept_vhost(self) -> None:
        """Answer a :class:`VhostRequest` positively: ``connection.open-ok``; the link is OPEN."""
        self._require(ConnectionState.VHOST_CHECK, "accept_vhost")
        self.state = ConnectionState.OPEN
        self._queue(encode_method(0, commands.Connection.OpenOk()))

    def reject_vhost(self, reply_text: str = "access to vhost refused") -> None:
        """Refuse the virtual host: ``connection.close`` 530 NOT_ALLOWED."""
        self._require(ConnectionState.VHOST_CHECK, "reject_vhost")
        self._connection_error(AMQPConnectionError(ReplyCode.NOT_ALLOWED, reply_text, 10, 40))

    def timer_expired(self) -> None:
        """The session's deadline passed: heartbeats missed, handshake or close-ok too slow."""
        if self.state is ConnectionState.CLOSED:
            return
        if self.state is ConnectionState.CLOSING:
            text = f"no close-ok after connection.close ({self._close_text})"
            self._finish(self._close_code, text, by_peer=False)
        elif self.state is ConnectionState.OPEN:
            if not self.expects_heartbeats:
                return
            self._finish(0, "missed heartbeats from client", by_peer=False)
        else:
            self._finish(0, f"handshake timeout in state {self.state.value}", by_peer=False)
        self._reader.discard()

    @property
    def expects_heartbeats(self) -> bool:
        """Whether the client promised heartbeats, so that silence means it is gone."""
        return self.heartbeat_interval > 0 and self.client_heartbeat > 0

    @property
    def open_channels(self) -> frozenset[int]:
        """Channel numbers currently open (not closing)."""
        return frozenset(n for n, c in self._channels.items() if c.state is ChannelState.OPEN)

    # --------------------------------------------------------------- internals

    def _require(self, state: ConnectionState, verb: str) -> None:
        if self.state is not state:
            raise LocalProtocolError(f"{verb}() called in state {self.state.value}")

    def _queue(self, data: bytes, *, session: bool = False) -> None:
        if session and self._out_size > self.settings.max_send_buffer:
            raise LocalProtocolError(
                f"{self._out_size} bytes queued: write data_to_send() before sending more"
            )
        self._out.append(data)
        self._out_size += len(data)

    def _can_send(self, channel: int, method: base.Frame) -> bool:
        if not isinstance(method, base.Frame):
            raise LocalProtocolError(f"not a pamqp method: {method!r}")
        if not 0 <= channel <= self.channel_max:
            raise LocalProtocolError(f"channel {channel} outside 0..{self.channel_max}")
        is_connection_method = method.index >> 16 == commands.Connection.frame_id
        if (channel == 0) != is_connection_method:
            raise LocalProtocolError(f"{method.name} cannot be sent on channel {channel}")
        if self.state is not ConnectionState.OPEN:
            return False
        if channel == 0:
            return True
        chan = self._channels.get(channel)
        return chan is not None and chan.state is ChannelState.OPEN

    def _content_channel_open(self, channel: int) -> bool:
        if not 0 < channel <= self.channel_max:
            raise LocalProtocolError(f"content cannot be sent on channel {channel}")
        if self.state is not ConnectionState.OPEN:
            return False
        chan = self._channels.get(channel)
        return chan is not None and chan.state is ChannelState.OPEN

    def _client_capability(self, name: str) -> bool:
        caps = self.client_properties.get("capabilities")
        return isinstance(caps, dict) and bool(caps.get(name))

    def _step_open(self) -> bool:
        """:meth:`_step` on an open connection: process input until an event is ready.

        The hot path: a whole ``basic.publish`` (method, header and body frames already
        received) for an open channel is handed to the channel at once, and consecutive ones
        are all turned into :class:`Publish` events in one call (the session collects
        publishes before acting anyway).  Any other frame goes through :meth:`_open_frame` one
        at a time, and its event is returned before more input is looked at, as in
        :meth:`_step`.  False when more bytes are needed.
        """
        reader = self._reader
        channels = self._channels
        events = self._events
        while True:
            whole = reader.peek_publish()
            if whole is not None:
                # method, header and body at once: what the three frames one by one would do
                number, method_payload, content, body, end = whole
                chan = channels.get(number)
                if chan is not None and chan.state is ChannelState.OPEN and not chan.assembling:
                    publish = decode_publish_fast(method_payload)
                    if publish is not None:
                        reader.commit(end)
                        try:
                            event = chan.handle_whole(publish, content, body)
                        except AMQPChannelError as exc:
                            self._close_channel(
                                chan, int(exc.reply_code), exc.reply_text, exc.class_id,
                                exc.method_id,
                            )
                            continue
                        if event is not None:
                            events.append(event)
                        continue
            else:
                acks = reader.peek_acks()
                if acks is not None:
                    # basic.ack frames one by one would each become a MethodReceived
                    number, tags, end = acks
                    chan = channels.get(number)
                    if chan is not None and chan.state is ChannelState.OPEN and not chan.assembling:
                        reader.commit(end)
                        events.append(Acks(number, tags))
                        continue
            if events:
                return True
            frame = reader.next_frame()
            if frame is None:
                return False
            self._open_frame(frame)
            if events or self.state is not ConnectionState.OPEN:
                return True

    def _open_frame(self, frame: RawFrame) -> None:
        """One frame on an open connection (see :meth:`_step_open`)."""
        frame_type, number, payload = frame
        chan = self._channels.get(number) if number else None
        if chan is None or chan.state is not ChannelState.OPEN:
            self._dispatch_frame(frame)
            return
        try:
            if frame_type == FRAME_BODY:
                event = chan.handle_body(payload)
            elif frame_type == FRAME_HEADER:
                event = chan.handle_header(payload)
            elif frame_type == FRAME_METHOD:
                publish = None if chan.assembling else decode_publish_fast(payload)
                if publish is not None:
                    chan.handle_publish(publish)
                    return
                event = self._dispatch(chan, frame, method_ids(payload))
            else:
                self._dispatch_frame(frame)  # a heartbeat on a channel: a connection error
                return
        except AMQPChannelError as exc:
            self._close_channel(
                chan, int(exc.reply_code), exc.reply_text, exc.class_id, exc.method_id
            )
            return
        if event is not None:
            self._events.append(event)

    def _step(self) -> bool:
        """Process one unit of input; False when more bytes are needed."""
        if self.state is ConnectionState.AWAIT_HEADER:
            return self._handle_protocol_header()
        frame = self._reader.next_frame()
        if frame is None:
            return False
        self._dispatch_frame(frame)
        return True

    def _dispatch_frame(self, frame: RawFrame) -> None:
        if frame.frame_type == FRAME_HEARTBEAT:
            if frame.channel != 0:
                raise AMQPConnectionError(
                    ReplyCode.FRAME_ERROR, f"heartbeat frame on channel {frame.channel}"
                )
            return
        if self.state is ConnectionState.CLOSING:
            self._handle_closing(frame)
        elif self.state is ConnectionState.OPEN:
            if frame.channel == 0:
                self._handle_channel_zero(frame)
            else:
                self._handle_channel_frame(frame)
        else:
            self._handle_handshake(frame)

    # open connection -----------------------------------------------------------

    def _handle_channel_zero(self, frame: RawFrame) -> None:
        if frame.frame_type != FRAME_METHOD:
            raise AMQPConnectionError(
                ReplyCode.UNEXPECTED_FRAME, f"frame type {frame.frame_type} on channel 0"
            )
        method = decode_method(frame.payload)
        if isinstance(method, commands.Connection.Close):
            self._peer_close(method)
        elif isinstance(method, commands.Connection.UpdateSecret):
            self._events.append(MethodReceived(0, method))
        else:
            raise AMQPConnectionError(
                ReplyCode.COMMAND_INVALID,
                f"{method.name} is not allowed on channel 0 of an open connection",
                method.index >> 16,
                method.index & 0xFFFF,
            )

    def _handle_channel_frame(self, frame: RawFrame) -> None:
        number = frame.channel
        chan = self._channels.get(number)
        ids = method_ids(frame.payload) if frame.frame_type == FRAME_METHOD else None
        if chan is None:
            if ids != _CHANNEL_OPEN:
                raise AMQPConnectionError(
                    ReplyCode.CHANNEL_ERROR,
                    f"frame type {frame.frame_type} on channel {number}, which is not open",
                    *(ids or (0, 0)),
                )
            if number > self.channel_max:
                raise AMQPConnectionError(
                    ReplyCode.NOT_ALLOWED,
                    f"channel {number} above negotiated channel_max {self.channel_max}",
                    20,
                    10,
                )
            decode_method(frame.payload)
            self._channels[number] = Channel(
                number,
                max_message_size=self.settings.max_message_size,
                name_policy=self.settings.name_policy,
                reply=self._reply,
            )
            self._queue(encode_method(number, commands.Channel.OpenOk()))
            self._events.append(ChannelOpened(number))
            return
        if chan.state is ChannelState.CLOSING:
            self._handle_closing_channel(chan, frame, ids)
            return
        try:
            event = self._dispatch(chan, frame, ids)
        except AMQPChannelError as exc:
            self._close_channel(
                chan, int(exc.reply_code), exc.reply_text, exc.class_id, exc.method_id
            )
            return
        if event is not None:
            self._events.append(event)

    def _dispatch(
        self, chan: Channel, frame: RawFrame, ids: tuple[int, int] | None
    ) -> Event | None:
        if frame.frame_type == FRAME_HEADER:
            return chan.handle_header(frame.payload)
        if frame.frame_type == FRAME_BODY:
            return chan.handle_body(frame.payload)
        method = decode_method(frame.payload)
        class_id, method_id = ids or (0, 0)
        if chan.assembling:
            raise AMQPConnectionError(
                ReplyCode.UNEXPECTED_FRAME,
                f"expected content frame on channel {chan.number}, got {method.name}",
                class_id,
                method_id,
            )
        if class_id == commands.Connection.frame_id:
            raise AMQPConnectionError(
                ReplyCode.COMMAND_INVALID,
                f"{method.name} on channel {chan.number} (connection methods use channel 0)",
                class_id,
                method_id,
            )
        if isinstance(method, commands.Channel.Open):
            raise AMQPConnectionError(
                ReplyCode.CHANNEL_ERROR, f"channel {chan.number} is already open", 20, 10
            )
        if isinstance(method, commands.Channel.Close):
            del self._channels[chan.number]
            self._queue(encode_method(chan.number, commands.Channel.CloseOk()))
            return ChannelClosed(
                chan.number, method.reply_code or 0, method.reply_text or "", by_peer=True
            )
        if isinstance(method, commands.Channel.CloseOk):
            raise AMQPConnectionError(
                ReplyCode.COMMAND_INVALID,
                f"channel.close-ok on channel {chan.number}, which we did not close",
                20,
                41,
            )
        return chan.handle_method(method)

    def _handle_closing_channel(
        self, chan: Channel, frame: RawFrame, ids: tuple[int, int] | None
    ) -> None:
        # Spec 4.2.4: after sending channel.close, discard everything but close and close-ok.
        if ids == _CHANNEL_CLOSE:
            decode_method(frame.payload)
            self._queue(encode_method(chan.number, commands.Channel.CloseOk()))
        elif ids == _CHANNEL_CLOSE_OK:
            del self._channels[chan.number]
            self._events.append(
                ChannelClosed(chan.number, chan.close_code, chan.close_text, by_peer=False)
            )

    def _handle_closing(self, frame: RawFrame) -> None:
        if frame.channel != 0 or frame.frame_type != FRAME_METHOD:
            return
        ids = method_ids(frame.payload)
        if ids == _CONNECTION_CLOSE:
            self._queue(encode_method(0, commands.Connection.CloseOk()))
            self._finish(self._close_code, self._close_text, by_peer=False)
        elif ids == _CONNECTION_CLOSE_OK:
            self._finish(self._close_code, self._close_text, by_peer=False)

    # closing -------------------------------------------------------------------

    def _reply(self, channel: int, method: base.Frame) -> None:
        self._queue(encode_method(channel, method))

    def _peer_close(self, method: commands.Connection.Close) -> None:
        self._queue(encode_method(0, commands.Connection.CloseOk()))
        self._finish(method.reply_code or 0, method.reply_text or "", by_peer=True)

    def _close_channel(
        self, chan: Channel, code: int, text: str, class_id: int, method_id: int
    ) -> None:
        chan.start_closing(code, text)
        close = commands.Channel.Close(
            reply_code=code, reply_text=_shortstr(text), class_id=class_id, method_id=method_id
        )
        self._queue(encode_method(chan.number, close))

    def _send_close(self, code: int, text: str, class_id: int, method_id: int) -> None:
        close = commands.Connection.Close(
            reply_code=code, reply_text=_shortstr(text), class_id=class_id, method_id=method_id
        )
        self._queue(encode_method(0, close))
        self._close_code = code
        self._close_text = text
        self.state = ConnectionState.CLOSING
        self._channels.clear()

    def _connection_error(self, exc: AMQPConnectionError) -> None:
        if self.state in (ConnectionState.CLOSING, ConnectionState.CLOSED):
            return
        self._send_close(int(exc.reply_code), exc.reply_text, exc.class_id, exc.method_id)
        self._events.append(ConnectionClosing(exc.reply_code, exc.reply_text))

    def _fatal_frame_error(self, exc: FrameError) -> None:
        self._reader.discard()
        if self.state is not ConnectionState.CLOSING:
            self._send_close(int(exc.reply_code), exc.reply_text, 0, 0)
        self._finish(int(exc.reply_code), exc.reply_text, by_peer=False)

    def _finish(self, code: int, text: str, *, by_peer: bool) -> None:
        self.state = ConnectionState.CLOSED
        self._channels.clear()
        self._events.append(ConnectionClosed(code, text, by_peer))
