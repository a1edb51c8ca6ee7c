"""The trio session of one MQTT connection: bytes in → codec → session state → core, and back.

How it works
------------
:meth:`MqttSession.run` waits ``connect_timeout`` for CONNECT, checks the client id, the
credentials (``core.users``) and the limits, attaches to the session registry (taking over an
older connection with the same client id) and answers CONNACK with the server's limits.  Then
four tasks share one nursery:

* the *reader* feeds :class:`~handlers.mqtt.framing.PacketReader` and handles each packet in
  order.  Runs of PUBLISH packets (those of one read) go to the storer through a small
  bounded queue, so the reader reads on while an append waits for its fsync; any other
  packet but PUBACK/PUBREC/PUBREL/PUBCOMP first waits until everything before it is stored
  and acknowledged.  The replies to PUBREC/PUBREL packets read together go out as one send,
  and a run of PUBACK packets is settled on the core at once.  The keep-alive deadline
  (1.5 x the keep alive in force) restarts with every read;
* the *storer* appends what the reader queued, the runs waiting together with one append per
  core partition (one shared fsync), and acknowledges each PUBLISH (PUBACK, PUBREC), in
  order and as one send, only once the append is durable.  QoS 2 packet ids are remembered
  until PUBREL (in the stored session too), so a re-sent PUBLISH is stored once: the PUBREC
  of a new one waits until the session is stored with its id (one write per run; none for
  sessions that are not persisted), the PUBCOMP until it is stored without it.  A refusal
  that ends the connection stops the reader; what the reader queued before it stopped is
  still stored (within ``GOODBYE_TIMEOUT_S``);
* the *writer* drains the connection's :class:`~handlers.mqtt.outbox.Outbox` (a bounded
  queue of encoded packets; also the deliverer's sink) into the stream;
* the *deliverer* (:class:`~handlers.mqtt.delivery.Deliverer`) turns core subscriptions into
  PUBLISH packets.

How a connection ends decides what happens to the will: DISCONNECT 0x00 drops it; DISCONNECT
0x04, the socket closing, a keep-alive timeout, a protocol error or a takeover publish it
(after its Will Delay Interval); a broker shutdown (DISCONNECT 0x8B) does not.  When the
reader stops, the writer still sends what is queued (within ``GOODBYE_TIMEOUT_S``).
Protocol errors are logged, answered with DISCONNECT and the error's reason code on MQTT 5,
and close the connection (3.1.1 just closes).
"""

from __future__ import annotations

import logging
import uuid
from contextlib import suppress
from dataclasses import replace
from typing import TYPE_CHECKING

import trio

from core.errors import MessageTooLarge
from core.handler import ConnectionInfo
from core.headers import is_expired
from core.listeners import format_host_port
from core.records import Message
from core.stream_io import socket_io
from storage.api import StorageError

from .delivery import Deliverer, Token
from .encoder import encode
from .errors import MQTTError, ProtocolError, UnsupportedProtocolVersion
from .framing import PacketReader, Role
from .hot_path import puback_bytes
from .mapping import delivery_qos, message_to_publish
from .outbox import SEND_QUEUE, Outbox
from .packet_types import MQTT_5, MQTT_311
from .packets import (
    Auth,
    ConnAck,
    Connect,
    Disconnect,
    Packet,
    PingReq,
    PingResp,
    PubAck,
    PubComp,
    Publish,
    PubRec,
    PubRel,
    SubAck,
    Subscribe,
    UnsubAck,
    Unsubscribe,
    Will,
)
from .properties import EMPTY_PROPERTIES, Properties
from .reason_codes import ConnackReturnCodeV311, ReasonCode
from .session_state import (
    ConnectionState,
    InboundResult,
    OutboundAliases,
    SessionState,
    SubscriptionEntry,
)
from .sessions import NEVER_EXPIRES
from .topic_mapping import (
    AllTopics,
    Concrete,
    TopicNotMappable,
    filter_core_topics,
    mqtt_topic_to_core,
)

if TYPE_CHECKING:
    from .handler import MqttContext

__all__ = ["RECEIVE_SIZE", "SEND_QUEUE", "MqttSession"]

log = logging.getLogger(__name__)

#: bytes asked for per socket read: a QoS 1 window of 1 KiB messages (~100 KiB) in one read
#: (A/B at 1 KiB QoS 1: ~9% more messages per broker CPU-second than 64 KiB reads)
RECEIVE_SIZE = 256 * 1024
#: inbound PUBLISH packets handed from the reader to the storer as one item
MAX_PUBLISH_BATCH = 256
#: items (runs of PUBLISH packets) read and waiting for the storer
STORE_QUEUE = 4
#: inbound PUBLISH packets stored with one append at most
MAX_STORE_RUN = 1024
#: payload bytes above which the storer stops joining runs into one append (a record batch
#: must stay under the topic's max_message_bytes, 1 MiB by default)
MAX_STORE_BYTES = 512 * 1024
#: how long a closing connection may take to say goodbye
GOODBYE_TIMEOUT_S = 2.0
_STREAM_GONE = (trio.BrokenResourceError, trio.ClosedResourceError)


class _End(Exception):
    """End the connection: ``reason`` goes into a DISCONNECT (MQTT 5) unless None."""

    def __init__(self, why: str, reason: int | None = None, *, will: bool = True) -> None:
        super().__init__(why)
        self.reason = reason
        self.will = will


class MqttSession:
    """Serves one connected MQTT client (see the module docstring)."""

    def __init__(self, stream: trio.abc.Stream, ctx: MqttContext, conn: ConnectionInfo) -> None:
        self._stream = stream
        self._ctx = ctx
        self._conn = conn
        self.peer = format_host_port(conn.peer_host, conn.peer_port)
        self._reader = PacketReader(Role.SERVER, max_packet_size=ctx.settings.max_packet_size)
        self.protocol_level = MQTT_311
        self.client_id = ""
        self._out = Outbox()
        self._state: SessionState[Token | None] | None = None
        self._limits = ConnectionState(ctx.settings.topic_alias_maximum,
                                       ctx.settings.receive_maximum)
        self._deliverer: Deliverer | None = None
        self._will: Will | None = None
        self._keepalive = 0
        self._scope = trio.CancelScope()
        self._ending: _End | None = None
        self._finished = trio.Event()
        self._served = False
        self._to_store, self._storing = trio.open_memory_channel[list[Publish]](STORE_QUEUE)
        self._unstored = 0  # runs handed to the storer and not yet acknowledged
        self._all_stored = trio.Event()
        self._reading = trio.CancelScope()
        self._save_due = False  # QoS 2 ids released: the stored session is out of date
        #: when the reader started waiting for the client's next bytes (None: not waiting)
        self._waiting_since: float | None = None

    # ------------------------------------------------------------ registry attachment

    def kick(self, reason_code: int) -> None:
        """Close this connection (takeover, shutdown); MQTT 5 clients get DISCONNECT."""
        if self._ending is None:
            self._ending = _End(f"closed by the server (0x{reason_code:02x})", reason_code)
        self._scope.cancel()

    async def wait_finished(self) -> None:
        await self._finished.wait()

    # ------------------------------------------------------------ run

    async def run(self) -> None:
        """Serve the connection until it ends; never raises for client misbehaviour."""
        try:
            connect = await self._read_connect()
            if connect is None or not await self._accept(connect):
                return
            await self._serve()
        except _STREAM_GONE:
            log.debug("mqtt %s: connection lost before CONNACK", self.peer)
        finally:
            if self._state is not None and not self._served:  # attached, CONNACK failed
                with trio.CancelScope(shield=True), trio.move_on_after(GOODBYE_TIMEOUT_S):
                    await self._ctx.sessions.detach(self.client_id, self)
            self._finished.set()

    async def _read_connect(self) -> Connect | None:
        with trio.move_on_after(self._ctx.settings.connect_timeout):
            while True:
                data = await self._stream.receive_some(RECEIVE_SIZE)
                if not data:
                    return None
                self._reader.receive_data(data)
                try:
                    packet = self._reader.next_packet()
                except UnsupportedProtocolVersion as exc:
                    log.info("mqtt %s: %s", self.peer, exc)
                    v5 = exc.protocol_level == MQTT_5
                    code = exc.reason_code if v5 else exc.return_code_v311
                    await self._stream.send_all(
                        encode(ConnAck(False, code), MQTT_5 if v5 else MQTT_311))
                    return None
                except MQTTError as exc:
                    log.info("mqtt %s: bad CONNECT, closing: %s", self.peer, exc)
                    return None
                if packet is not None:
                    assert isinstance(packet, Connect)
                    return packet
        log.info("mqtt %s: no CONNECT within %gs, closing", self.peer,
                 self._ctx.settings.connect_timeout)
        return None

    async def _refuse(self, connect: Connect, v5_code: int, v3_code: int, why: str) -> bool:
        log.info("mqtt %s: refusing client %r: %s", self.peer, connect.client_id, why)
        code = v5_code if self.protocol_level == MQTT_5 else v3_code
        await self._stream.send_all(encode(ConnAck(False, code), self.protocol_level))
        return False

    async def _accept(self, connect: Connect) -> bool:
        """Check CONNECT, attach the session, send CONNACK; False when refused."""
        settings = self._ctx.settings
        self.protocol_level = self._out.protocol_level = level = connect.protocol_level
        v5 = level == MQTT_5
        props = connect.properties
        R, V3 = ReasonCode, ConnackReturnCodeV311
        if props.authentication_method is not None:
            return await self._refuse(connect, R.BAD_AUTHENTICATION_METHOD, V3.NOT_AUTHORIZED,
                                      "enhanced authentication is not supported")
        client_id = connect.client_id
        assigned = None
        if not client_id:
            if not v5 and not connect.clean_start:
                return await self._refuse(connect, R.CLIENT_IDENTIFIER_NOT_VALID,
                                          V3.IDENTIFIER_REJECTED,
                                          "empty client id without clean session")
            client_id = assigned = f"ps-{uuid.uuid4().hex}"
        if not await self._authenticate(connect):
            return False
        self.client_id = client_id
        # limits
        keepalive = connect.keep_alive
        server_keepalive = None
        if v5 and settings.max_keepalive and (keepalive == 0 or keepalive > settings.max_keepalive):
            keepalive = server_keepalive = settings.max_keepalive
        self._keepalive = keepalive
        if v5:
            requested = props.session_expiry_interval or 0
        else:
            requested = 0 if connect.clean_start else NEVER_EXPIRES
        expiry = min(requested, settings.max_session_expiry)
        self._out.max_packet_size = props.maximum_packet_size
        self._out.aliases = OutboundAliases((props.topic_alias_maximum or 0) if v5 else 0)
        client_receive_max = props.receive_maximum or 65535
        state, present = await self._ctx.sessions.attach(
            client_id, self, clean_start=connect.clean_start, protocol_level=level,
            expiry_interval=expiry)
        self._state = state
        self._ctx.wills.cancel(client_id)
        self._will = connect.will
        self._deliverer = Deliverer(self._ctx.manager, self._ctx.directory, state, self._out,
                                    client_receive_max, wall_ms=self._ctx.wall_ms)
        ack_props = EMPTY_PROPERTIES
        if v5:
            ack_props = Properties(
                session_expiry_interval=expiry if expiry != requested else None,
                assigned_client_identifier=assigned,
                server_keep_alive=server_keepalive,
                receive_maximum=settings.receive_maximum,
                topic_alias_maximum=settings.topic_alias_maximum or None,
                maximum_packet_size=settings.max_packet_size,
                retain_available=1,
                wildcard_subscription_available=1,
                subscription_identifier_available=1,
                shared_subscription_available=1,
            )
        await self._stream.send_all(encode(ConnAck(present, 0, ack_props), level))
        log.info("mqtt %s: client %r connected (MQTT %s, keep alive %ds, session %s, "
                 "expiry %ds)", self.peer, client_id, "5.0" if v5 else "3.1.1", keepalive,
                 "resumed" if present else "new", expiry)
        return True

    async def _authenticate(self, connect: Connect) -> bool:
        R, V3 = ReasonCode, ConnackReturnCodeV311
        if connect.username is None:
            if self._ctx.settings.allow_anonymous:
                return True
            return await self._refuse(connect, R.NOT_AUTHORIZED, V3.NOT_AUTHORIZED,
                                      "anonymous clients are not allowed")
        try:
            password = (connect.password or b"").decode("utf-8")
        except UnicodeDecodeError:
            password = "\x00invalid"
        result = await self._ctx.core.users.authenticate_plain(
            connect.username, password, peer_is_loopback=self._conn.peer_is_loopback)
        if result.ok:
            return True
        return await self._refuse(connect, R.BAD_USER_NAME_OR_PASSWORD,
                                  V3.BAD_USER_NAME_OR_PASSWORD,
                                  f"login of {connect.username!r} failed: {result.outcome.value}")

    async def _serve(self) -> None:
        assert self._state is not None and self._deliverer is not None
        state, deliverer = self._state, self._deliverer
        self._served = True
        try:
            with self._scope:
                async with trio.open_nursery() as outer:
                    outer.start_soon(self._writer)
                    async with trio.open_nursery() as nursery:
                        nursery.start_soon(self._watch_stopping)
                        resumed = list(state.pending_releases())
                        deliverer.hold_slots(len(resumed))
                        for pid in resumed:
                            await self._out.packet(PubRel(pid))
                        await nursery.start(deliverer.run)
                        stored = trio.Event()
                        nursery.start_soon(self._store_loop, stored)
                        if self._keepalive:
                            nursery.start_soon(self._watch_keepalive, self._keepalive * 1.5)
                        with self._reading:
                            await self._read_loop()
                        # what was read is stored (and acknowledged) before the end
                        self._to_store.close()
                        with trio.CancelScope(shield=True), \
                                trio.move_on_after(GOODBYE_TIMEOUT_S):
                            await stored.wait()
                        nursery.cancel_scope.cancel()
                    # let the writer send what is queued (the last acks), within a bound
                    outer.cancel_scope.deadline = trio.current_time() + GOODBYE_TIMEOUT_S
                    self._out.close()
        except Exception as exc:  # a bug must not take other connections down
            log.exception("mqtt %s: client %r: internal error", self.peer, self.client_id)
            self._ending = self._ending or _End(f"internal error: {exc!r}",
                                                ReasonCode.UNSPECIFIED_ERROR)
        finally:
            with trio.CancelScope(shield=True):
                await self._finish()

    async def _finish(self) -> None:
        assert self._state is not None
        ending = self._ending or _End("connection closed", None)
        goodbye = self._out.take_queued()  # queued before the end (the last acks)
        if ending.reason is not None and self.protocol_level == MQTT_5:
            goodbye += encode(Disconnect(ending.reason), MQTT_5)
        if goodbye and not self._out.stream_broken:
            with trio.move_on_after(GOODBYE_TIMEOUT_S), suppress(*_STREAM_GONE):
                await self._stream.send_all(goodbye)
        dropped = ""
        if self._deliverer is not None:
            self._deliverer.close()
            if self._deliverer.dropped:
                self._ctx.dropped_qos0 += self._deliverer.dropped
                dropped = f" ({self._deliverer.dropped} QoS 0 message(s) dropped: slow client)"
        log.info("mqtt %s: client %r disconnected: %s%s", self.peer, self.client_id, ending,
                 dropped)
        if ending.will and self._will is not None:
            delay = self._will.properties.will_delay_interval or 0
            self._ctx.wills.trigger(self.client_id, self._will, delay)
        with trio.move_on_after(GOODBYE_TIMEOUT_S):
            try:
                await self._ctx.sessions.detach(self.client_id, self)
            except Exception:
                log.exception("mqtt: detaching client %r failed", self.client_id)

    async def _watch_stopping(self) -> None:
        await self._ctx.stopping.wait()
        if self._ending is None:  # wills are for clients that fail, not for a broker restart
            self._ending = _End("server shutting down", ReasonCode.SERVER_SHUTTING_DOWN,
                                will=False)
        self.kick(ReasonCode.SERVER_SHUTTING_DOWN)

    async def _writer(self) -> None:
        try:
            await self._out.write_to(self._stream)
        except _STREAM_GONE:
            if self._ending is None:
                self._ending = _End("connection lost while writing")
            self._scope.cancel()

    async def _read_loop(self) -> None:
        io = socket_io(self._stream)
        receive = io.receive if io is not None else self._stream.receive_some
        reader, now = self._reader, trio.current_time
        try:
            while True:
                self._waiting_since = now()
                data = await receive(RECEIVE_SIZE)
                self._waiting_since = None
                if not data:
                    raise _End("connection closed by the client")
                reader.receive_data(data)
                await self._drain()
        except _End as end:
            self._ending = self._ending or end
        except MQTTError as exc:
            self._protocol_error(exc)
        except _STREAM_GONE:
            self._ending = self._ending or _End("connection lost")

    async def _watch_keepalive(self, limit: float) -> None:
        """End the connection once the reader has waited ``limit`` seconds for a packet.

        The reader only notes when it starts waiting (no timer per read); this wakes about
        once per ``limit`` and checks.  Time the reader spends on what it read (waiting for
        the storer, say) does not count against the client.
        """
        while True:
            since = self._waiting_since
            if since is None:  # the reader is busy: its next wait starts later than now
                await trio.sleep(limit)
            elif trio.current_time() < since + limit:
                await trio.sleep_until(since + limit)
            else:  # the same wait, for ``limit`` already
                self._ending = self._ending or _End(
                    f"keep alive timeout ({self._keepalive}s)", ReasonCode.KEEP_ALIVE_TIMEOUT)
                self._reading.cancel()
                return

    async def _drain(self) -> None:
        """Handle every complete packet received; runs of PUBLISH are stored together."""
        batch: list[Publish] = []
        pubacks: list[int] = []  # packet ids; a run of PUBACK is settled on the core at once
        reader = self._reader
        try:
            while True:
                reader.take_pubacks(pubacks)
                packet = reader.next_packet()
                if packet is None:
                    break
                if isinstance(packet, Publish):
                    batch.append(packet)
                    if len(batch) >= MAX_PUBLISH_BATCH:
                        batch, done = [], batch
                        await self._submit(done)
                    continue
                if isinstance(packet, PubAck):
                    pubacks.append(packet.packet_id)
                    continue
                if pubacks:
                    pubacks, acked = [], pubacks
                    self._on_pubacks(acked)
                if isinstance(packet, (PubRec, PubRel, PubComp)):
                    # no waiting: the replies go out together (a PUBREL cannot concern a
                    # PUBLISH still in ``batch``: the client has its PUBREC)
                    self._on_qos2_step(packet)
                    continue
                if batch:
                    batch, done = [], batch
                    await self._submit(done)
                # other packets wait for the PUBLISH packets before them (a DISCONNECT
                # after publications, a SUBSCRIBE after publishing to the topic, ...)
                await self._until_stored()
                await self._handle(packet)
            if pubacks:
                pubacks, acked = [], pubacks
                self._on_pubacks(acked)
            if batch:
                batch, done = [], batch
                await self._submit(done)
            await self._save_released()
            await self._out.flush_replies()
        finally:
            if pubacks:
                self._on_pubacks(pubacks)
            if batch:  # the packets before a protocol error still count
                with trio.CancelScope(shield=True), trio.move_on_after(GOODBYE_TIMEOUT_S):
                    await self._submit(batch)
            self._out.flush_replies_nowait()  # for the goodbye, when there is room
            if self._save_due and self._state is not None:
                self._save_due = False
                self._ctx.sessions.save_soon(self._state)

    async def _save_released(self) -> None:
        """Store the session once PUBREL packets released QoS 2 ids (before their PUBCOMP
        goes out: after PUBCOMP the client may reuse an id, which a stale stored session
        would take for a duplicate after a restart).  One write per burst; none when the
        session is not persisted."""
        if not self._save_due or self._state is None:
            return
        self._save_due = False
        if self._state.expiry_interval:
            try:
                await self._ctx.sessions.save(self._state)
            except StorageError as exc:
                raise _End(f"cannot save the session: {exc}",
                           ReasonCode.UNSPECIFIED_ERROR) from exc

    # ------------------------------------------------------------ storing publications

    async def _submit(self, run: list[Publish]) -> None:
        """Hand a run of PUBLISH packets to the storer (waits while its queue is full)."""
        self._unstored += 1
        try:
            # ``send`` yields even with room: measured, the round it gives the storer (and the
            # deliverer, for the outbox) batches more per fsync at full speed than it costs
            await self._to_store.send(run)
        except BaseException:
            self._unstored -= 1
            raise

    async def _until_stored(self) -> None:
        """Wait until every PUBLISH handed to the storer is stored and acknowledged."""
        while self._unstored:
            await self._all_stored.wait()

    async def _store_loop(self, done: trio.Event) -> None:
        """The storer: runs waiting together are stored with one append (one fsync), so the
        reader reads on while an append is under way; a refusal that ends the connection
        stops the reader."""
        try:
            # receive takes a scheduler round even when a run is waiting: more join it
            async for run in self._storing:
                runs = 1
                size = -1  # payload bytes of ``run``, counted once a second run could join
                while len(run) < MAX_STORE_RUN:
                    try:
                        more = self._storing.receive_nowait()
                    except (trio.WouldBlock, trio.EndOfChannel):
                        break
                    if size < 0:
                        size = sum(len(p.payload) for p in run)
                    size += sum(len(p.payload) for p in more)
                    run = run + more
                    runs += 1
                    if size >= MAX_STORE_BYTES:
                        break
                try:
                    await self._on_publishes(run)
                finally:
                    self._unstored -= runs
                    if not self._unstored:
                        self._all_stored.set()
                        self._all_stored = trio.Event()
        except _End as end:
            self._ending = self._ending or end
            self._reading.cancel()
        except MQTTError as exc:
            self._protocol_error(exc)
            self._reading.cancel()
        finally:
            self._storing.close()
            done.set()

    def _protocol_error(self, exc: MQTTError) -> None:
        log.warning("mqtt %s: client %r broke the protocol (0x%02x): %s", self.peer,
                    self.client_id, exc.reason_code, exc)
        self._ending = self._ending or _End(f"protocol error: {exc}", exc.reason_code)

    # ------------------------------------------------------------ packets

    def _on_qos2_step(self, packet: PubRec | PubRel | PubComp) -> None:
        """PUBREC, PUBREL or PUBCOMP; the reply waits in the outbox for the next send."""
        assert self._state is not None and self._deliverer is not None
        state = self._state
        if isinstance(packet, PubRec):
            release, flight = state.pubrec(packet.packet_id, packet.reason_code)
            if flight is not None:
                self._deliverer.acknowledged(flight.token, release=not release)
            if release:
                self._out.reply(PubRel(packet.packet_id))
            elif self.protocol_level == MQTT_5 and flight is None:
                self._out.reply(PubRel(packet.packet_id, ReasonCode.PACKET_IDENTIFIER_NOT_FOUND))
        elif isinstance(packet, PubRel):
            known = state.release(packet.packet_id)
            if known:
                self._save_due = True  # once per burst, by _drain
            code = 0 if known or self.protocol_level != MQTT_5 else \
                ReasonCode.PACKET_IDENTIFIER_NOT_FOUND
            self._out.reply(PubComp(packet.packet_id, code))
        elif state.pubcomp(packet.packet_id):
            self._deliverer.completed()

    def _on_pubacks(self, packet_ids: list[int]) -> None:
        assert self._state is not None and self._deliverer is not None
        puback = self._state.puback
        tokens: list[Token | None] = []
        for pid in packet_ids:
            flight = puback(pid)
            if flight is not None:
                tokens.append(flight.token)
        if tokens:
            self._deliverer.acknowledged_many(tokens)

    async def _handle(self, packet: Packet) -> None:
        assert self._state is not None and self._deliverer is not None
        state = self._state
        if isinstance(packet, Publish):
            await self._on_publishes([packet])
        elif isinstance(packet, PubAck):
            flight = state.puback(packet.packet_id)
            if flight is not None:
                self._deliverer.acknowledged(flight.token)
        elif isinstance(packet, PubRec | PubRel | PubComp):
            self._on_qos2_step(packet)
            await self._save_released()
            await self._out.flush_replies()
        elif isinstance(packet, Subscribe):
            await self._on_subscribe(packet)
        elif isinstance(packet, Unsubscribe):
            await self._on_unsubscribe(packet)
        elif isinstance(packet, PingReq):
            await self._out.packet(PingResp())
        elif isinstance(packet, Disconnect):
            self._on_disconnect(packet)
        elif isinstance(packet, Auth):
            raise ProtocolError("AUTH without enhanced authentication")
        else:  # the reader only passes packets a client may send
            raise ProtocolError(f"unexpected {type(packet).__name__}")

    async def _on_publishes(self, packets: list[Publish]) -> None:
        """Store a run of inbound PUBLISH packets, then acknowledge each in order.

        Topic aliases, QoS 2 duplicates and the Receive Maximum are checked packet by packet;
        a protocol error stops the run, and the packets before it are still stored and
        acknowledged before the error closes the connection.
        """
        assert self._state is not None
        state = self._state
        plan: list[tuple[Publish, bool]] = []  # (packet, store it?)
        error: MQTTError | None = None
        in_flight = len(state.inbound_qos2)
        batch_qos2: set[int] = set()
        for packet in packets:
            try:
                packet = self._resolve_alias(packet)
                pid = packet.packet_id
                if packet.qos == 2 and pid is not None and (
                        pid in batch_qos2
                        or state.classify_qos2(pid) == InboundResult.DUPLICATE):
                    plan.append((packet, False))
                    continue
                if packet.qos:
                    self._limits.check_receive_maximum(in_flight)
                    in_flight += 1
                if packet.qos == 2 and pid is not None:
                    batch_qos2.add(pid)
                plan.append((packet, True))
            except MQTTError as exc:
                error = exc
                break
        results = iter(await self._ctx.store_many([p for p, store in plan if store]))
        # only this session's own *no local* subscriptions ask whether it published a message
        remember = any(e.no_local for e in state.subscriptions.values())
        end: _End | None = None
        acks = bytearray()  # all the acknowledgements go out as one send-channel item
        held = -1  # where the first PUBREC of a newly stored QoS 2 message starts in ``acks``
        level = self.protocol_level
        for packet, store in plan:
            code = 0
            if store:
                result = next(results)
                if not isinstance(result, Exception):
                    if remember:
                        self._out.remember_local(
                            (result.core_topic, result.partition, result.offset))
                else:
                    try:
                        code = self._refusal(packet, result)
                    except _End as exc:
                        end = end or exc
                        continue
            pid = packet.packet_id
            if pid is None or end is not None:
                continue
            if packet.qos == 1:
                acks += puback_bytes(pid) if not code else encode(PubAck(pid, code), level)
            else:
                if code < 0x80 and store:
                    state.stored_qos2(pid)
                    if held < 0:
                        held = len(acks)
                acks += encode(PubRec(pid, code), level)
        if held >= 0 and state.expiry_interval:
            # exactly once across a crash: a PUBREC goes out only once the stored session
            # knows its packet id, else a PUBLISH re-sent after a restart is stored again
            if held:
                await self._out.send(bytes(acks[:held]))
            try:
                await self._ctx.sessions.save(state)
            except StorageError as exc:
                log.warning("mqtt %s: client %r: cannot save the session: %s", self.peer,
                            self.client_id, exc)
                raise _End(f"cannot save the session: {exc}",
                           ReasonCode.UNSPECIFIED_ERROR) from exc
            del acks[:held]
        if acks:
            await self._out.send(bytes(acks))
        else:
            await self._out.flush_replies()
        if end is not None:
            raise end
        if error is not None:
            raise error

    def _resolve_alias(self, packet: Publish) -> Publish:
        props = packet.properties
        if props.topic_alias is None:
            return packet
        topic = self._limits.resolve_topic(packet.topic, props.topic_alias)
        return replace(packet, topic=topic, properties=replace(props, topic_alias=None))

    def _refusal(self, packet: Publish, exc: Exception) -> int:
        """The reason code for a PUBLISH the core refused (MQTT 3.1.1: raise _End)."""
        v5 = self.protocol_level == MQTT_5
        if isinstance(exc, TopicNotMappable):
            if packet.topic.startswith("$"):
                log.debug("mqtt %s: dropping a publish to %r", self.peer, packet.topic)
                return ReasonCode.NO_MATCHING_SUBSCRIBERS if v5 else 0
            log.warning("mqtt %s: client %r: %s", self.peer, self.client_id, exc)
            if v5:
                return ReasonCode.TOPIC_NAME_INVALID
            raise _End(f"unmappable topic {packet.topic[:60]!r}")
        log.warning("mqtt %s: client %r: cannot store a publish to %r: %s", self.peer,
                    self.client_id, packet.topic, exc)
        if not v5:
            raise _End(f"message refused: {exc}")
        if isinstance(exc, MessageTooLarge):
            return ReasonCode.QUOTA_EXCEEDED
        return ReasonCode.IMPLEMENTATION_SPECIFIC_ERROR

    async def _on_subscribe(self, packet: Subscribe) -> None:
        assert self._state is not None and self._deliverer is not None
        state = self._state
        ids = packet.properties.subscription_identifiers
        identifier = ids[0] if ids else None
        codes: list[int] = []
        fresh: list[tuple[SubscriptionEntry, bool]] = []
        for sub in packet.subscriptions:
            entry = SubscriptionEntry(sub.topic_filter, sub.qos, sub.no_local,
                                      sub.retain_as_published, sub.retain_handling, identifier)
            existed = state.subscribe(entry)
            fresh.append((entry, existed))
            codes.append(sub.qos)
        failed = await self._deliverer.sync(refresh=any(
            isinstance(filter_core_topics(e.topic_filter), AllTopics) for e, _ in fresh))
        if failed:
            for n, (entry, _) in enumerate(fresh):
                span = filter_core_topics(entry.topic_filter)
                if isinstance(span, Concrete) and span.name in failed:
                    codes[n] = ReasonCode.UNSPECIFIED_ERROR
                    state.unsubscribe(entry.topic_filter)
            fresh = [f for n, f in enumerate(fresh) if codes[n] < 0x80]
        await self._ctx.sessions.save(state)
        await self._out.packet(SubAck(packet.packet_id, tuple(codes)))
        retained: list[tuple[str, Message, SubscriptionEntry]] = []
        for entry, existed in fresh:
            if entry.share_group is not None or entry.retain_handling == 2 or (
                    entry.retain_handling == 1 and existed):
                continue
            retained += [(topic, message, entry)
                         for topic, message in self._ctx.retained.matching(entry.topic_filter)]
        if retained:  # in a task: QoS 1/2 ones may wait for PUBACKs that this reader handles
            self._deliverer.spawn(self._send_retained, retained)

    async def _send_retained(self, retained: list[tuple[str, Message, SubscriptionEntry]]) -> None:
        for topic, message, entry in retained:
            await self._send_one_retained(topic, message, entry)

    async def _send_one_retained(
        self, topic: str, message: Message, entry: SubscriptionEntry
    ) -> None:
        assert self._state is not None and self._deliverer is not None
        now = self._ctx.wall_ms()
        if is_expired(message.headers, message.timestamp_ms, now):
            return
        try:
            core_topic, _ = mqtt_topic_to_core(topic)
        except TopicNotMappable:
            return
        qos = delivery_qos(message, entry.qos)
        pid = None
        if qos:
            await self._deliverer.acquire_slot()
            pid = self._state.start_outbound(qos, None)
        ids = () if entry.identifier is None else (entry.identifier,)
        packet = message_to_publish(message, core_topic, granted_qos=qos,
                                    protocol_level=self.protocol_level,
                                    retain_as_published=True, packet_id=pid,
                                    subscription_identifiers=ids, now_ms=now)
        await self._out.packet(replace(packet, retain=True))

    async def _on_unsubscribe(self, packet: Unsubscribe) -> None:
        assert self._state is not None and self._deliverer is not None
        codes = tuple(
            ReasonCode.SUCCESS if self._state.unsubscribe(f)
            else ReasonCode.NO_SUBSCRIPTION_EXISTED
            for f in packet.topic_filters)
        await self._deliverer.sync()
        await self._ctx.sessions.save(self._state)
        await self._out.packet(UnsubAck(packet.packet_id,
                                    codes if self.protocol_level == MQTT_5 else ()))

    def _on_disconnect(self, packet: Disconnect) -> None:
        assert self._state is not None
        expiry = packet.properties.session_expiry_interval
        if expiry is not None:
            if self._state.expiry_interval == 0 and expiry != 0:
                raise ProtocolError("session expiry set on DISCONNECT after 0 at CONNECT")
            self._state.expiry_interval = min(expiry, self._ctx.settings.max_session_expiry)
        will = packet.reason_code == ReasonCode.DISCONNECT_WITH_WILL_MESSAGE
        raise _End(f"DISCONNECT 0x{packet.reason_code:02x}", None, will=will)

