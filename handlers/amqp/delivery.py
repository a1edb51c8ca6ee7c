"""Consumers, ``basic.get`` and acknowledgements of an AMQP session (a mixin of the session).

How delivery works
------------------
``basic.consume`` starts one task per consumer holding a nursery with one **pump** per source
exchange of the queue (a queue bound to several exchanges reads several core topics).  A pump
takes a message from its core consumer, waits until the channel's prefetch allows one more and
encodes ``basic.deliver``; then it keeps encoding whatever the core consumer already holds while
prefetch allows (up to :data:`DELIVERY_BATCH`), and only then asks the writer to flush and
grants the core as many permits as it took.  So a burst costs one socket write and one
``flow`` call, not one per message, and the client never holds more unacked messages than it
asked for.

Deliveries are encoded by a :class:`~handlers.amqp.frames.DeliverEncoder` per pump straight
into frame bytes (no pamqp object per message; properties encoded once per distinct header
set, :func:`~handlers.amqp.mapping.delivery_fields`).  Acks outside a transaction settle at
once on the core consumer, a ``multiple`` ack with one ``ack_many`` per core consumer and
partition; inside a transaction (``tx.select``) an ack is an ``ack_in_txn`` of the core's
transaction engine and a nack/reject is held by :class:`~handlers.amqp.tx.ChannelTx` until commit.

A queue with ``x-max-priority`` gets a lookahead of extra core permits and a reordering buffer
between the core consumer and the client (:mod:`handlers.amqp.priority`).
"""

from __future__ import annotations

import contextlib
import logging
from typing import TYPE_CHECKING

import trio
from pamqp import base, commands

from core.api import wall_clock_ms
from core.errors import CoreError
from core.subscriptions import Consumer, ConsumerClosed, Delivery, SubscriptionError
from core.transactions import TransactionError
from handlers.amqp.broker.consumers import AmqpConsumer, Unacked
from handlers.amqp.broker.queues import Queue
from handlers.amqp.channels import Channel
from handlers.amqp.connection import ServerConnection
from handlers.amqp.deadletter import dead_letter
from handlers.amqp.errors import AMQPChannelError, AMQPConnectionError, ReplyCode
from handlers.amqp.frames import DeliverEncoder
from handlers.amqp.mapping import delivery_fields, message_to_amqp
from handlers.amqp.priority import PRIORITY_LOOKAHEAD, PriorityBuffer

if TYPE_CHECKING:
    from handlers.amqp.broker.vhosts import VirtualHost

__all__ = ["DELIVERY_BATCH", "GET_PRIORITY_WINDOW", "GET_WAIT", "UNLIMITED_PERMITS",
           "DeliveryMixin"]

log = logging.getLogger(__name__)

#: permits a consumer without prefetch limit asks the core for, per source exchange
UNLIMITED_PERMITS = 256
#: most deliveries a pump encodes before it flushes them to the socket
DELIVERY_BATCH = 128
#: how long ``basic.get`` waits for the core to hand over a message it knows is there
GET_WAIT = 0.5
#: messages a channel's ``basic.get`` may hold per source exchange of a priority queue, to hand
#: out the highest priority among them first
GET_PRIORITY_WINDOW = 32
_GET_POLL = 0.01

#: core consumer names sort in registration order, so that the first AMQP consumer of a
#: single-active-consumer queue is the active one (the core's Failover picks the lowest name)
_consumer_seq = iter(range(1, 2**62))


class Listener:
    """A consumer as its queue sees it (see :class:`~handlers.amqp.broker.vhosts.QueueListener`)."""

    def __init__(self, session: DeliveryMixin, chan: Channel, consumer: AmqpConsumer,
                 queue: Queue) -> None:
        self.session = session
        self.chan = chan
        self.consumer = consumer
        self.queue = queue

    def source_added(self, source: str) -> None:
        nursery = self.chan.nurseries.get(self.consumer.tag)
        if nursery is not None and not self.consumer.cancelled:
            nursery.start_soon(self.session._pump, self.chan, self.consumer, self.queue, source)

    def queue_deleted(self) -> None:
        self.session._server_cancel(self.chan, self.consumer)


class DeliveryMixin:
    """``basic.qos/consume/cancel/get/ack/nack/reject/recover`` of :class:`AmqpSession`."""

    conn: ServerConnection
    id: int
    peer: str
    _nursery: trio.Nursery | None

    if TYPE_CHECKING:
        @property
        def vhost(self) -> VirtualHost: ...

        async def _flush(self) -> None: ...

        def _wake_writer(self) -> None: ...

        def _reply(self, chan: Channel, method: base.Frame, nowait: bool = False) -> None: ...

    # ------------------------------------------------------------------ consume

    async def _basic_qos(self, chan: Channel, m: commands.Basic.Qos) -> None:
        chan.deliveries.qos(m.prefetch_count or 0, bool(m.global_))
        chan.credit_changed()
        self._reply(chan, commands.Basic.QosOk())

    async def _basic_consume(self, chan: Channel, m: commands.Basic.Consume) -> None:
        vhost = self.vhost
        queue = vhost.registry.queue(m.queue, 60, 20)
        vhost.check_exclusive(queue, self.id, 20)
        if not m.consumer_tag:
            chan.tag_seq += 1
        tag = m.consumer_tag or f"amq.ctag-{self.id}-{chan.number}-{chan.tag_seq}"
        if tag in chan.deliveries.consumers:
            raise AMQPConnectionError(
                ReplyCode.NOT_ALLOWED, f"attempt to reuse consumer tag '{tag}'", 60, 20)
        listeners = vhost.listeners.get(queue.name, [])
        if m.exclusive and listeners:
            raise AMQPChannelError(
                ReplyCode.ACCESS_REFUSED,
                f"queue '{queue.name}' in vhost '{vhost.name}' in exclusive use", 60, 20)
        if any(isinstance(x, Listener) and x.consumer.exclusive for x in listeners):
            raise AMQPChannelError(
                ReplyCode.ACCESS_REFUSED,
                f"queue '{queue.name}' in vhost '{vhost.name}' in exclusive use", 60, 20)
        consumer = AmqpConsumer(tag, queue.name, chan.number, bool(m.no_ack), bool(m.exclusive),
                                chan.deliveries.prefetch_consumer)
        chan.deliveries.consumers[tag] = consumer
        listener = Listener(self, chan, consumer, queue)
        vhost.add_listener(queue, listener)
        self._reply(chan, commands.Basic.ConsumeOk(consumer_tag=tag), m.nowait)
        await self._flush()  # consume-ok before the first delivery
        scope = trio.CancelScope()
        chan.scopes[tag] = scope
        assert self._nursery is not None
        self._nursery.start_soon(self._run_consumer, chan, consumer, queue, listener, scope)

    async def _run_consumer(self, chan: Channel, consumer: AmqpConsumer, queue: Queue,
                            listener: Listener, scope: trio.CancelScope) -> None:
        with scope:
            async with trio.open_nursery() as nursery:
                chan.nurseries[consumer.tag] = nursery
                for source in self.vhost.sources(queue.name):
                    nursery.start_soon(self._pump, chan, consumer, queue, source)
        chan.nurseries.pop(consumer.tag, None)
        with trio.CancelScope(shield=True):
            await self.vhost.consumer_gone(queue.name, listener)

    @staticmethod
    def _permits(chan: Channel, consumer: AmqpConsumer) -> int:
        limits = [n for n in (consumer.prefetch, chan.deliveries.prefetch_channel) if n]
        if consumer.no_ack or not limits:
            return UNLIMITED_PERMITS
        return min(min(limits), UNLIMITED_PERMITS)

    async def _pump(self, chan: Channel, consumer: AmqpConsumer, queue: Queue,
                    source: str) -> None:
        """Deliver one source exchange's messages of ``queue`` to ``consumer``."""
        permits = self._permits(chan, consumer)
        if queue.parsed.max_priority:
            permits += PRIORITY_LOOKAHEAD
        try:
            core = await self.vhost.attach(
                queue, source, f"{next(_consumer_seq):016d}-{consumer.tag}", permits)
        except (CoreError, SubscriptionError) as exc:
            log.warning("amqp %s: consumer %r cannot read %r from exchange %r: %s", self.peer,
                        consumer.tag, queue.name, source, exc)
            return
        consumer.sources[source] = core
        if queue.parsed.max_priority:
            await self._priority_pump(chan, consumer, core, source, queue.parsed.max_priority,
                                      permits)
            return
        deliveries = chan.deliveries
        encoder = DeliverEncoder(chan.number, consumer.tag)
        conn = self.conn
        try:
            core.flow(permits)
            while True:
                delivery = await core.receive()
                while not deliveries.has_credit(consumer):
                    await chan.credit.wait()
                out = [self._deliver(chan, consumer, core, delivery, source, encoder)]
                while (len(out) < DELIVERY_BATCH and core.queued
                       and deliveries.has_credit(consumer)):
                    out.append(
                        self._deliver(chan, consumer, core, core.receive_nowait(), source,
                                      encoder))
                sent = len(out)
                conn.send_encoded_contents(chan.number, out)
                await self._flush()
                if not core.closed:
                    core.flow(sent)
        except ConsumerClosed:
            return
        finally:
            if consumer.no_ack or consumer.unacked == 0 or chan.closed:
                core.close("consumer cancelled")

    async def _priority_pump(self, chan: Channel, consumer: AmqpConsumer, core: Consumer,
                             source: str, max_priority: int, permits: int) -> None:
        """:meth:`_pump` for a priority queue: the highest priority held goes out first."""
        buffer = PriorityBuffer(max_priority)
        deliveries = chan.deliveries
        encoder = DeliverEncoder(chan.number, consumer.tag)
        try:
            core.flow(permits)
            while True:
                if not buffer:
                    buffer.push(await core.receive())
                    await trio.lowlevel.checkpoint()  # the core may hand over more
                while core.queued:
                    buffer.push(core.receive_nowait())
                while not deliveries.has_credit(consumer):
                    await chan.credit.wait()
                while core.queued:  # arrived while waiting for credit
                    buffer.push(core.receive_nowait())
                sent = 0
                out = []
                while buffer and sent < DELIVERY_BATCH and deliveries.has_credit(consumer):
                    out.append(self._deliver(chan, consumer, core, buffer.pop(), source, encoder))
                    sent += 1
                self.conn.send_encoded_contents(chan.number, out)
                await self._flush()
                if not core.closed:
                    core.flow(sent)
        except ConsumerClosed:
            return
        finally:
            for held in buffer.drain():  # back to the queue
                with contextlib.suppress(ConsumerClosed, SubscriptionError):
                    core.nack(held.partition, held.offset)
            if consumer.no_ack or consumer.unacked == 0 or chan.closed:
                core.close("consumer cancelled")

    def _deliver(self, chan: Channel, consumer: AmqpConsumer, core: Consumer,
                 delivery: Delivery, source: str, encoder: DeliverEncoder) -> bytes:
        """Record one delivery and return its frames (for ``send_encoded_contents``)."""
        message = delivery.message
        routing_key, properties, body = delivery_fields(message)
        if consumer.no_ack:
            tag = chan.deliveries.next_tag()
            core.ack(delivery.partition, delivery.offset)
        else:
            tag = chan.deliveries.delivered(core, delivery.partition, delivery.offset,
                                            consumer.queue, consumer, message, source)
        return encoder.encode(tag, delivery.redelivery_count > 0, source, routing_key,
                              properties, body, self.conn.frame_max)

    async def _basic_cancel(self, chan: Channel, m: commands.Basic.Cancel) -> None:
        consumer = chan.deliveries.consumers.pop(m.consumer_tag or "", None)
        if consumer is not None:
            self._stop_consumer(chan, consumer)
        self._reply(chan, commands.Basic.CancelOk(consumer_tag=m.consumer_tag), m.nowait)

    @staticmethod
    def _stop_consumer(chan: Channel, consumer: AmqpConsumer) -> None:
        consumer.cancelled = True
        scope = chan.scopes.pop(consumer.tag, None)
        if scope is not None:
            scope.cancel()

    def _server_cancel(self, chan: Channel, consumer: AmqpConsumer) -> None:
        """The queue was deleted: cancel and tell the client if it understands it."""
        if chan.deliveries.consumers.pop(consumer.tag, None) is None:
            return
        self._stop_consumer(chan, consumer)
        for core in consumer.sources.values():
            core.close("queue deleted")
        caps = self.conn.client_properties.get("capabilities")
        if isinstance(caps, dict) and caps.get("consumer_cancel_notify"):
            self.conn.send_method(chan.number, commands.Basic.Cancel(
                consumer_tag=consumer.tag, nowait=True))
            self._wake_writer()

    # ------------------------------------------------------------------ get

    async def _basic_get(self, chan: Channel, m: commands.Basic.Get) -> None:
        vhost = self.vhost
        queue = vhost.registry.queue(m.queue, 60, 70)
        vhost.check_exclusive(queue, self.id, 70)
        vhost.touch(queue)
        if queue.parsed.max_priority:
            found = await self._get_prioritized(chan, queue, queue.parsed.max_priority)
        else:
            found = await self._get_one(chan, queue)
        if found is None:
            self._reply(chan, commands.Basic.GetEmpty())
            return
        core, delivery, source = found
        out = message_to_amqp(delivery.message)
        # counted before a no-ack get acks it: the count includes this message either way
        remaining = max(0, await vhost.message_count(queue) - 1)
        if m.no_ack:
            tag = chan.deliveries.next_tag()
            core.ack(delivery.partition, delivery.offset)
        else:
            tag = chan.deliveries.delivered(core, delivery.partition, delivery.offset,
                                            queue.name, None, delivery.message, source)
        self.conn.send_content(chan.number, commands.Basic.GetOk(
            delivery_tag=tag, redelivered=delivery.redelivery_count > 0, exchange=source,
            routing_key=out.routing_key, message_count=remaining), out.properties, out.body)

    async def _get_one(self, chan: Channel, queue: Queue
                       ) -> tuple[Consumer, Delivery, str] | None:
        """One message of ``queue`` for ``basic.get``, or None.

        Each channel keeps one single-permit core consumer per (queue, source) until it
        closes: a get grants the permit and waits up to :data:`GET_WAIT` for the core to hand
        over a message the queue is known to hold.  A message that arrives after that waits
        in the consumer for the channel's next get (at most one per source).
        """
        vhost = self.vhost
        getters: list[tuple[str, Consumer]] = []
        for source in vhost.sources(queue.name):
            key = (queue.name, source)
            core = chan.getters.get(key)
            if core is None or core.closed:
                core = await vhost.attach(queue, source, f"get-{self.id}-{chan.number}", 1)
                chan.getters[key] = core
            getters.append((source, core))
        for source, core in getters:
            if core.queued:
                return core, core.receive_nowait(), source
        if await vhost.message_count(queue) == 0:
            return None
        for _, core in getters:
            core.flow(1)
        with trio.move_on_after(GET_WAIT):
            while True:
                for source, core in getters:
                    if core.queued:
                        return core, core.receive_nowait(), source
                await trio.sleep(_GET_POLL)
        return None

    async def _get_prioritized(self, chan: Channel, queue: Queue, max_priority: int
                               ) -> tuple[Consumer, Delivery, str] | None:
        """:meth:`_get_one` for a priority queue: the highest priority first.

        The channel's core consumer per (queue, source) may hold up to
        :data:`GET_PRIORITY_WINDOW` messages in a :class:`PriorityBuffer`; a get tops the window
        up while the queue holds more than the channel has, waits (up to :data:`GET_WAIT`)
        until the core stops handing messages over, and returns the highest priority held
        (publish order among equals).  The others stay with the channel for its next get, and
        go back to the queue (flagged redelivered) when it closes.
        """
        vhost = self.vhost
        getters: list[tuple[str, Consumer, PriorityBuffer]] = []
        for source in vhost.sources(queue.name):
            key = (queue.name, source)
            core = chan.getters.get(key)
            buffer = chan.get_buffers.get(key)
            if core is None or core.closed or buffer is None:
                core = await vhost.attach(queue, source, f"get-{self.id}-{chan.number}",
                                          GET_PRIORITY_WINDOW)
                chan.getters[key] = core
                chan.get_buffers[key] = buffer = PriorityBuffer(max_priority)
            getters.append((source, core, buffer))

        def held() -> int:
            for _, core, buffer in getters:
                while core.queued:
                    buffer.push(core.receive_nowait())
            return sum(len(buffer) for _, _, buffer in getters)

        have = held()
        wanted = min(await vhost.message_count(queue), GET_PRIORITY_WINDOW * len(getters))
        if wanted > have:  # the core may hold more (or better) for us: top the window up
            for _, core, buffer in getters:
                room = GET_PRIORITY_WINDOW - len(buffer) - core.permits
                if room > 0:
                    core.flow(room)
            with trio.move_on_after(GET_WAIT):
                while True:
                    await trio.sleep(_GET_POLL)
                    before, have = have, held()
                    if have >= wanted or (have and have == before):
                        break  # all there, or the core handed over nothing more meanwhile
        have = held()
        best: tuple[str, Consumer, PriorityBuffer] | None = None
        for getter in getters:
            buffer = getter[2]
            if buffer and (best is None or buffer.top_priority() > best[2].top_priority()):
                best = getter
        if best is None:
            return None
        source, core, buffer = best
        return core, buffer.pop(), source

    # ------------------------------------------------------------------ acks

    async def _basic_ack(self, chan: Channel, m: commands.Basic.Ack) -> None:
        items = chan.deliveries.take(m.delivery_tag, bool(m.multiple), 80)
        if chan.tx is None:
            self._settle(chan, items, "ack")
            return
        try:
            await chan.tx.ack(items)
        except TransactionError as exc:
            raise AMQPChannelError(ReplyCode.PRECONDITION_FAILED,
                                   f"ack in transaction failed: {exc}", 60, 80) from exc
        chan.credit_changed()

    async def _basic_nack(self, chan: Channel, m: commands.Basic.Nack) -> None:
        items = chan.deliveries.take(m.delivery_tag, bool(m.multiple), 120)
        self._settle_or_hold(chan, items, "requeue" if m.requeue else "drop")

    async def _basic_reject(self, chan: Channel, m: commands.Basic.Reject) -> None:
        items = chan.deliveries.take(m.delivery_tag or 0, False, 90)
        self._settle_or_hold(chan, items, "requeue" if m.requeue else "drop")

    async def _basic_recover(self, chan: Channel, m: commands.Basic.Recover) -> None:
        self._settle(chan, chan.deliveries.take_all(), "requeue")
        self._reply(chan, commands.Basic.RecoverOk())

    async def _basic_recover_async(self, chan: Channel, m: commands.Basic.RecoverAsync) -> None:
        self._settle(chan, chan.deliveries.take_all(), "requeue")

    def _settle_or_hold(self, chan: Channel, items: list[Unacked], how: str) -> None:
        """A nack or reject: at once, or at commit on a transactional channel."""
        if chan.tx is not None:
            chan.tx.hold(items, how)
            chan.credit_changed()
        else:
            self._settle(chan, items, how)

    def _settle(self, chan: Channel, items: list[Unacked], how: str) -> None:
        """Ack (``"ack"``), requeue (``"requeue"``) or drop/dead-letter (``"drop"``) now."""
        if how == "ack" and len(items) > 1:
            self._ack_many(items)
            self._release_owners(items)
            chan.credit_changed()
            return
        letters = {id(item) for item in self._dead_letters(items)} if how == "drop" else set()
        for item in items:
            try:
                if how == "requeue":
                    item.core.nack(item.partition, item.offset)
                elif how == "drop" and id(item) in letters:
                    continue  # dead-lettered through its DLX by _store_dead_letters
                elif how == "drop":  # dead-lettered by the core when the queue has a DLX
                    item.core.reject(item.partition, item.offset)
                else:
                    item.core.ack(item.partition, item.offset)
            except (ConsumerClosed, SubscriptionError):
                pass  # the consumer is gone: the message was handed back already
        self._release_owners(items)
        chan.credit_changed()

    def _dead_letters(self, items: list[Unacked]) -> list[Unacked]:
        """The rejected items the session dead-letters itself (with ``x-death``), in the
        background; the rest go to the core."""
        if self._nursery is None:
            return []
        letters = []
        for item in items:
            queue = self.vhost.registry.queues.get(item.queue)
            if (item.message is not None and queue is not None
                    and queue.parsed.dead_letter_exchange is not None):
                letters.append(item)
        if letters:
            self._nursery.start_soon(self._store_dead_letters, letters)
        return letters

    async def _store_dead_letters(self, items: list[Unacked]) -> None:
        """Route rejected messages through their queue's DLX, then ack them (the core
        dead-letters them instead when that fails)."""
        vhost = self.vhost
        now = wall_clock_ms()
        routed = []
        for item in items:
            assert item.message is not None
            queue = vhost.registry.queues.get(item.queue)
            dlx = None if queue is None else queue.parsed.dead_letter_exchange
            if queue is None or dlx is None or dlx not in vhost.registry.exchanges:
                continue  # RabbitMQ drops a dead letter whose DLX does not exist
            message = dead_letter(item.message, queue=item.queue, reason="rejected",
                                  exchange=item.exchange, now_ms=now,
                                  routing_key=queue.parsed.dead_letter_routing_key)
            routed.append((message, vhost.route(dlx, message)))
        ok = True
        with trio.CancelScope(shield=True):
            try:
                await vhost.store(routed)
                await vhost.trim([route for _, route in routed])
            except (CoreError, SubscriptionError) as exc:
                ok = False
                log.warning("amqp %s: dead-lettering %d message(s) failed: %s", self.peer,
                            len(routed), exc)
        for item in items:
            with contextlib.suppress(ConsumerClosed, SubscriptionError):
                if ok:
                    item.core.ack(item.partition, item.offset)
                else:
                    item.core.reject(item.partition, item.offset)

    @staticmethod
    def _ack_many(items: list[Unacked]) -> None:
        """Ack a ``multiple`` batch with one core call per (core consumer, partition)."""
        groups: dict[tuple[int, int], tuple[Consumer, list[int]]] = {}
        for item in items:
            group = groups.get((id(item.core), item.partition))
            if group is None:
                groups[(id(item.core), item.partition)] = (item.core, [item.offset])
            else:
                group[1].append(item.offset)
        for (_, partition), (core, offsets) in groups.items():
            try:
                core.ack_many(partition, offsets)
            except ConsumerClosed:
                pass  # the consumer is gone: the messages were handed back already
            except SubscriptionError:
                # ack_many stops at the first offset it cannot ack; ack the rest one by one
                for offset in offsets:
                    with contextlib.suppress(SubscriptionError):
                        core.ack(partition, offset)

    @staticmethod
    def _release_owners(items: list[Unacked]) -> None:
        """Close the core consumers of cancelled AMQP consumers with nothing left unacked."""
        for item in items:
            owner = item.consumer
            if owner is not None and owner.cancelled and owner.unacked == 0:
                for core in owner.sources.values():
                    core.close("consumer cancelled")
