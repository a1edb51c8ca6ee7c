"""The trio session of one AMQP 0-9-1 connection: socket ↔ :class:`ServerConnection` ↔ broker.

How it works
------------
One nursery per connection holds:

* the **reader** (the session's main task): receives bytes, feeds the state machine and handles
  its events in order.  Consecutive ``basic.publish`` events are collected and stored together
  (one append per core topic, sharing the storage's group commit) before any other event is
  handled, so per-channel ordering holds: a ``queue.purge`` after a publish sees it stored;
* the **writer**: writes what the state machine queued whenever it is kicked;
* a **heartbeat** task when heartbeats were negotiated;
* one **consumer** task per ``basic.consume`` with a delivery pump per source exchange
  (:mod:`handlers.amqp.delivery`).

Per-batch work on the publish path: one read (up to :data:`RECEIVE_SIZE`) becomes one batch
(:mod:`handlers.amqp.publishing`).  Likewise consecutive single ``basic.ack`` frames (pika,
aio-pika and kombu ack one delivery at a time; the state machine hands a run of them over as
one :class:`~handlers.amqp.events.Acks` event) are resolved in order as they come and settled
together when the run ends, before any other event is handled: one core ``ack_many`` per core
consumer and partition, one prefetch wake-up per channel.

Memory alarm (:mod:`handlers.amqp.memory`): when a read brought a ``basic.publish`` while the
broker-wide alarm is raised, the reader stores it, sends ``connection.blocked`` (if the client
announced the capability) and stops reading the socket until the alarm clears, then sends
``connection.unblocked``.  Consumer tasks keep delivering meanwhile; the client's acks and
heartbeats wait unread in the socket, as on RabbitMQ.

Per-channel state is :class:`~handlers.amqp.channels.Channel`; publishes and publisher
confirms live in :class:`~handlers.amqp.publishing.PublishMixin`, consumers, ``basic.get`` and
acks in :class:`~handlers.amqp.delivery.DeliveryMixin`, confirm and tx mode (on the core's
transaction engine) in :class:`~handlers.amqp.tx.TxMixin`.

Timeouts all go through trio's clock: the handshake must finish within
:data:`HANDSHAKE_TIMEOUT`, a client that promised heartbeats is dropped after two silent
intervals, and a ``connection.close`` we sent waits :data:`CLOSE_TIMEOUT` for ``close-ok``.  At
broker shutdown (``HandlerContext.stopping``) the client gets ``connection.close`` 320.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from typing import Any

import trio
from pamqp import base, commands

from core.errors import CoreError
from core.handler import ConnectionInfo
from core.subscriptions import SubscriptionError
from handlers.amqp.broker.bindings import DestinationKind
from handlers.amqp.broker.consumers import Unacked
from handlers.amqp.broker.vhosts import VhostDirectory, VirtualHost
from handlers.amqp.channels import Channel
from handlers.amqp.connection import ServerConnection, ServerSettings
from handlers.amqp.errors import AMQPChannelError, AMQPConnectionError, ReplyCode
from handlers.amqp.events import (
    Acks,
    AuthenticationRequest,
    ChannelClosed,
    ChannelFlow,
    ChannelOpened,
    ConnectionClosed,
    ConnectionTuned,
    Event,
    MethodReceived,
    Publish,
    VhostRequest,
)
from handlers.amqp.memory import MemoryMonitor
from handlers.amqp.publishing import PublishMixin
from handlers.amqp.tx import TxMixin

__all__ = ["CLOSE_TIMEOUT", "HANDSHAKE_TIMEOUT", "AmqpSession"]

log = logging.getLogger(__name__)

HANDSHAKE_TIMEOUT = 10.0
CLOSE_TIMEOUT = 5.0
#: bytes asked for per read; a read that fills it means a backlog, and the next read asks for
#: up to :data:`RECEIVE_SIZE_BACKLOG` (capped by the connection's receive buffer): a bigger read
#: is a bigger append, and the per-append costs (group commit, thread hand-off) are per read.
#: (Not always the big size: asking for more than ~128 KiB costs an mmap per read.)
RECEIVE_SIZE = 64 * 1024
RECEIVE_SIZE_BACKLOG = 256 * 1024
_connection_ids = iter(range(1, 2**62))


class AmqpSession(PublishMixin, TxMixin):
    """One AMQP connection (see the module docstring)."""

    def __init__(
        self,
        stream: trio.abc.Stream,
        info: ConnectionInfo,
        vhosts: VhostDirectory,
        settings: ServerSettings,
        stopping: trio.Event | None = None,
        *,
        memory: MemoryMonitor | None = None,
    ) -> None:
        self.stream = stream
        self.info = info
        self.vhosts = vhosts
        self.core = vhosts.core
        self.conn = ServerConnection(settings)
        self._receive_max = max(RECEIVE_SIZE, min(RECEIVE_SIZE_BACKLOG,
                                                  settings.max_receive_buffer))
        self.id = next(_connection_ids)
        self.peer = f"{info.peer_host}:{info.peer_port}"
        self._stopping = stopping
        self._vhost: VirtualHost | None = None
        self._channels: dict[int, Channel] = {}
        self._kick = trio.Event()
        self._written = trio.Event()
        self._flush_requests = 0
        self._flushed = 0
        self._writing = False
        self._last_sent = 0.0
        self._nursery: trio.Nursery | None = None
        self._publishes: list[Publish] = []
        self._acks: dict[Channel, list[Unacked]] = {}
        self._memory = memory
        self._published = False

    # ------------------------------------------------------------------ lifecycle

    async def run(self) -> None:
        """Serve the connection until it closes."""
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                nursery.start_soon(self._writer)
                if self._stopping is not None:
                    nursery.start_soon(self._watch_stopping, self._stopping)
                try:
                    closed = await self._read_loop()
                    log.info("amqp %s: closed (%s %s)", self.peer, closed.reply_code,
                             closed.reply_text)
                finally:
                    nursery.cancel_scope.cancel()
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            log.info("amqp %s: connection lost (%s)", self.peer, exc)
        finally:
            with trio.CancelScope(shield=True):
                await self._cleanup()

    async def _cleanup(self) -> None:
        if self._acks:  # acks read before the connection broke count
            self._settle_acks()
        for chan in list(self._channels.values()):
            await self._drop_channel(chan)
        self._channels.clear()
        if self._vhost is not None:
            try:
                await self._vhost.delete_owned_by(self.id)
            except (CoreError, SubscriptionError):
                log.warning("amqp %s: could not delete exclusive queues", self.peer,
                            exc_info=True)

    async def _watch_stopping(self, stopping: trio.Event) -> None:
        await stopping.wait()
        self.conn.close(ReplyCode.CONNECTION_FORCED, "broker shutting down")
        await self._flush()

    def _receive_timeout(self) -> float:
        state = self.conn.state.value
        if state == "closing":
            return CLOSE_TIMEOUT
        if state != "open":
            return HANDSHAKE_TIMEOUT
        if self.conn.expects_heartbeats:
            return 2.0 * self.conn.heartbeat_interval
        return math.inf

    async def _read_loop(self) -> ConnectionClosed:
        size = RECEIVE_SIZE
        while True:
            with trio.move_on_after(self._receive_timeout()) as scope:
                data = await self.stream.receive_some(size)
            if scope.cancelled_caught:
                self.conn.timer_expired()
            else:
                size = self._receive_max if len(data) >= size else RECEIVE_SIZE
                self.conn.receive_data(bytes(data))
            closed = await self._handle_events()
            await self._flush()
            if closed is not None:
                return closed
            if self._published and self._memory is not None and self._memory.alarmed:
                await self._blocked(self._memory)
            self._published = False

    async def _blocked(self, memory: MemoryMonitor) -> None:
        """Stop reading until the memory alarm clears (or the broker stops)."""
        told = self.conn.send_blocked("low on memory")
        await self._flush()
        log.info("amqp %s: blocked by the memory alarm%s", self.peer,
                 "" if told else " (client lacks the connection.blocked capability)")
        async with trio.open_nursery() as nursery:

            async def wait(event: Callable[[], Any]) -> None:
                await event()
                nursery.cancel_scope.cancel()

            nursery.start_soon(wait, memory.wait_cleared)
            if self._stopping is not None:
                nursery.start_soon(wait, self._stopping.wait)
        if not memory.alarmed:
            log.info("amqp %s: unblocked", self.peer)
            self.conn.send_unblocked()
            await self._flush()

    async def _flush(self) -> None:
        """Return once everything queued so far has been written by the writer task.

        Only the writer touches the socket, so a task cancelled while it waits here (a
        cancelled consumer, say) never loses bytes that other tasks queued.
        """
        if not self._writing and not self.conn.has_data_to_send:
            await trio.lowlevel.checkpoint()
            return  # nothing queued, nothing being written: spare the writer a wake-up
        self._flush_requests += 1
        wanted = self._flush_requests
        self._kick.set()
        while self._flushed < wanted:
            await self._written.wait()

    def _wake_writer(self) -> None:
        self._kick.set()

    async def _writer(self) -> None:
        while True:
            await self._kick.wait()
            self._kick = trio.Event()
            upto = self._flush_requests
            data = self.conn.data_to_send()
            if data:
                self._writing = True
                try:
                    await self.stream.send_all(data)
                finally:
                    self._writing = False
                self._last_sent = trio.current_time()
            self._flushed = upto
            written, self._written = self._written, trio.Event()
            written.set()

    async def _heartbeats(self, interval: int) -> None:
        while True:
            await trio.sleep(interval / 2)
            if trio.current_time() - self._last_sent >= interval / 2:
                self.conn.send_heartbeat()
                await self._flush()

    # ------------------------------------------------------------------ events

    async def _handle_events(self) -> ConnectionClosed | None:
        acks = self._acks
        while True:
            event = self.conn.next_event()
            if event is None:
                break
            if isinstance(event, Publish):
                if acks:
                    self._settle_acks()
                self._publishes.append(event)
                self._published = True
                continue
            if self._publishes:
                await self._store_publishes()
            if type(event) is Acks:
                if self._take_acks(event.channel, event.tags):
                    continue
                await self._acks_one_by_one(event.channel, event.tags)
                continue
            if (type(event) is MethodReceived and type(event.method) is commands.Basic.Ack
                    and not event.method.multiple
                    and self._take_acks(event.channel, [event.method.delivery_tag])):
                continue
            if acks:
                self._settle_acks()
            if isinstance(event, ConnectionClosed):
                return event
            await self._handle(event)
        if acks:
            self._settle_acks()
        if self._publishes:
            await self._store_publishes()
        return None

    def _take_acks(self, number: int, tags: list[int]) -> bool:
        """Collect single ``basic.ack`` tags of a non-transactional channel for
        :meth:`_settle_acks`.

        Consecutive acks (pika, aio-pika and kombu ack one delivery at a time) settle together:
        one core ``ack_many`` per core consumer and partition and one prefetch wake-up per
        channel, at the end of the run, before the session handles any other event or waits
        for anything.  The tags are resolved here, in order.  False (nothing taken) when the
        channel is transactional or gone, or a tag is not unacked (a channel error): then
        :meth:`_acks_one_by_one` handles them.
        """
        chan = self._channels.get(number)
        if chan is None or chan.closed or chan.tx is not None:
            return False
        deliveries = chan.deliveries
        if not deliveries.all_unacked(tags):
            return False
        taken = deliveries.take_tags(tags)
        items = self._acks.get(chan)
        if items is None:
            self._acks[chan] = taken
        else:
            items += taken
        return True

    async def _acks_one_by_one(self, number: int, tags: list[int]) -> None:
        """Acks the fast path refused: each as its own ``basic.ack``, as received."""
        for tag in tags:
            chan = self._channels.get(number)
            if chan is None or chan.closed:
                return  # closed by an earlier tag: the rest is discarded, as on a closing channel
            if chan.tx is None and self._take_acks(number, [tag]):
                continue
            if self._acks:
                self._settle_acks()
            await self._method(number, commands.Basic.Ack(delivery_tag=tag, multiple=False))

    def _settle_acks(self) -> None:
        """Settle the acks :meth:`_take_acks` collected, channel by channel."""
        acks = self._acks
        runs = list(acks.items())
        acks.clear()
        for chan, items in runs:
            self._settle(chan, items, "ack")

    async def _handle(self, event: Event) -> None:
        if isinstance(event, AuthenticationRequest):
            await self._authenticate(event)
        elif isinstance(event, ConnectionTuned):
            if event.heartbeat and self._nursery is not None:
                self._nursery.start_soon(self._heartbeats, event.heartbeat)
        elif isinstance(event, VhostRequest):
            vhost = await self.vhosts.open(event.vhost)
            if vhost is None:
                log.info("amqp %s: refused unknown vhost %r", self.peer, event.vhost)
                self.conn.reject_vhost(
                    f"access to vhost '{event.vhost}' refused for user '{self.conn.username}'")
            else:
                self._vhost = vhost
                self.conn.accept_vhost()
        elif isinstance(event, ChannelOpened):
            self._channels[event.channel] = Channel(event.channel)
        elif isinstance(event, ChannelClosed):
            chan = self._channels.pop(event.channel, None)
            if chan is not None:
                await self._drop_channel(chan)
        elif isinstance(event, ChannelFlow):
            chan = self._channels.get(event.channel)
            if chan is not None:
                chan.deliveries.active = event.active
                chan.credit_changed()
        elif isinstance(event, MethodReceived):
            await self._method(event.channel, event.method)

    async def _authenticate(self, request: AuthenticationRequest) -> None:
        result = await self.core.users.authenticate_plain(
            request.username, request.password, peer_is_loopback=self.info.peer_is_loopback)
        if result.ok:
            self.conn.accept_auth()
            return
        log.info("amqp %s: login of %r refused: %s", self.peer, request.username,
                 result.outcome.value)
        self.conn.reject_auth(
            f"ACCESS_REFUSED - Login was refused using authentication mechanism "
            f"{request.mechanism}. For details see the broker logfile.")

    async def _method(self, number: int, method: base.Frame) -> None:
        chan = self._channels.get(number)
        handler = _METHODS.get(type(method))
        if isinstance(method, commands.Connection.UpdateSecret):
            self.conn.send_method(0, commands.Connection.UpdateSecretOk())
            return
        if chan is None or handler is None:
            return
        try:
            await handler(self, chan, method)
        except AMQPChannelError as exc:
            log.info("amqp %s: channel %d: %s", self.peer, number, exc)
            self.conn.close_channel(number, exc.reply_code, exc.reply_text, exc.class_id,
                                    exc.method_id)
            await self._drop_channel(chan)
        except AMQPConnectionError as exc:
            log.info("amqp %s: %s", self.peer, exc)
            self.conn.close(exc.reply_code, exc.reply_text)
        except (CoreError, SubscriptionError) as exc:
            log.warning("amqp %s: channel %d: %s failed: %s", self.peer, number, method.name,
                        exc)
            self.conn.close(ReplyCode.INTERNAL_ERROR, f"{method.name} failed: {exc}")

    def _reply(self, chan: Channel, method: base.Frame, nowait: bool = False) -> None:
        if not nowait:
            self.conn.send_method(chan.number, method)

    @property
    def vhost(self) -> VirtualHost:
        assert self._vhost is not None
        return self._vhost

    # ------------------------------------------------------------------ exchanges

    async def _exchange_declare(self, chan: Channel, m: commands.Exchange.Declare) -> None:
        await self.vhost.declare_exchange(
            m.exchange, m.exchange_type, durable=bool(m.durable),
            auto_delete=bool(m.auto_delete), internal=bool(m.internal),
            arguments=dict(m.arguments or {}), passive=bool(m.passive))
        self._reply(chan, commands.Exchange.DeclareOk(), m.nowait)

    async def _exchange_delete(self, chan: Channel, m: commands.Exchange.Delete) -> None:
        await self.vhost.delete_exchange(m.exchange, bool(m.if_unused))
        self._reply(chan, commands.Exchange.DeleteOk(), m.nowait)

    async def _exchange_bind(self, chan: Channel, m: commands.Exchange.Bind) -> None:
        await self.vhost.bind(DestinationKind.EXCHANGE, m.destination, m.source, m.routing_key,
                              dict(m.arguments or {}), self.id)
        self._reply(chan, commands.Exchange.BindOk(), m.nowait)

    async def _exchange_unbind(self, chan: Channel, m: commands.Exchange.Unbind) -> None:
        await self.vhost.unbind(DestinationKind.EXCHANGE, m.destination, m.source,
                                m.routing_key, dict(m.arguments or {}), self.id)
        self._reply(chan, commands.Exchange.UnbindOk(), m.nowait)

    # ------------------------------------------------------------------ queues

    async def _queue_declare(self, chan: Channel, m: commands.Queue.Declare) -> None:
        status = await self.vhost.declare_queue(
            m.queue, durable=bool(m.durable), exclusive=bool(m.exclusive),
            auto_delete=bool(m.auto_delete), arguments=dict(m.arguments or {}),
            passive=bool(m.passive), connection_id=self.id)
        self._reply(chan, commands.Queue.DeclareOk(
            queue=status.name, message_count=status.message_count,
            consumer_count=status.consumer_count), m.nowait)

    async def _queue_bind(self, chan: Channel, m: commands.Queue.Bind) -> None:
        await self.vhost.bind(DestinationKind.QUEUE, m.queue, m.exchange, m.routing_key,
                              dict(m.arguments or {}), self.id)
        self._reply(chan, commands.Queue.BindOk(), m.nowait)

    async def _queue_unbind(self, chan: Channel, m: commands.Queue.Unbind) -> None:
        await self.vhost.unbind(DestinationKind.QUEUE, m.queue, m.exchange, m.routing_key,
                                dict(m.arguments or {}), self.id)
        self._reply(chan, commands.Queue.UnbindOk())

    async def _queue_purge(self, chan: Channel, m: commands.Queue.Purge) -> None:
        count = await self.vhost.purge_queue(m.queue, self.id)
        self._reply(chan, commands.Queue.PurgeOk(message_count=count), m.nowait)

    async def _queue_delete(self, chan: Channel, m: commands.Queue.Delete) -> None:
        count = await self.vhost.delete_queue(
            m.queue, if_unused=bool(m.if_unused), if_empty=bool(m.if_empty),
            connection_id=self.id)
        await self._flush()  # consumer cancel notifications first
        self._reply(chan, commands.Queue.DeleteOk(message_count=count), m.nowait)

    # ------------------------------------------------------------------ channel end

    async def _drop_channel(self, chan: Channel) -> None:
        """The channel is closing or closed: stop its consumers, requeue its unacked."""
        if chan.closed:
            return
        chan.closed = True
        await self._abort_tx(chan)
        chan.credit_changed()
        for consumer in list(chan.deliveries.consumers.values()):
            self._stop_consumer(chan, consumer)
        unacked = chan.deliveries.take_all()
        self._settle(chan, unacked, "requeue")
        for consumer in list(chan.deliveries.consumers.values()):
            for core in consumer.sources.values():
                core.close("channel closed")
        for item in unacked:
            item.core.close("channel closed")
        for core in chan.getters.values():
            core.close("channel closed")
        chan.getters.clear()
        chan.get_buffers.clear()
        chan.deliveries.consumers.clear()


_Handler = Callable[[AmqpSession, Channel, Any], Any]

_METHODS: dict[type[base.Frame], _Handler] = {
    commands.Exchange.Declare: AmqpSession._exchange_declare,
    commands.Exchange.Delete: AmqpSession._exchange_delete,
    commands.Exchange.Bind: AmqpSession._exchange_bind,
    commands.Exchange.Unbind: AmqpSession._exchange_unbind,
    commands.Queue.Declare: AmqpSession._queue_declare,
    commands.Queue.Bind: AmqpSession._queue_bind,
    commands.Queue.Unbind: AmqpSession._queue_unbind,
    commands.Queue.Purge: AmqpSession._queue_purge,
    commands.Queue.Delete: AmqpSession._queue_delete,
    commands.Basic.Qos: AmqpSession._basic_qos,
    commands.Basic.Consume: AmqpSession._basic_consume,
    commands.Basic.Cancel: AmqpSession._basic_cancel,
    commands.Basic.Get: AmqpSession._basic_get,
    commands.Basic.Ack: AmqpSession._basic_ack,
    commands.Basic.Nack: AmqpSession._basic_nack,
    commands.Basic.Reject: AmqpSession._basic_reject,
    commands.Basic.Recover: AmqpSession._basic_recover,
    commands.Basic.RecoverAsync: AmqpSession._basic_recover_async,
    commands.Confirm.Select: AmqpSession._confirm_select,
    commands.Tx.Select: AmqpSession._tx_select,
    commands.Tx.Commit: AmqpSession._tx_commit,
    commands.Tx.Rollback: AmqpSession._tx_rollback,
}
