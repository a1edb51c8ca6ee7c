"""Core subscriptions → PUBLISH packets to one connected client.

How it works
------------
A session's MQTT subscriptions are served by durable core subscriptions (see
:mod:`core.subscriptions`): one per core topic a filter spans, named ``mqtt:<client id>``
(Exclusive), whatever the number of filters on that topic; a shared subscription
``$share/<group>/<filter>`` uses the Shared core subscription ``mqtt-share:<group>:<filter>``.
One :class:`Deliverer` per connection attaches one consumer to each of them and runs one task
per consumer.  Each message read is matched against *all* the session's subscriptions
(:meth:`SessionState.match`), so overlapping filters deliver it once, at the highest QoS, with
every subscription identifier.  Messages no filter matches, expired ones and QoS 0 deliveries
are acknowledged on the core at once; QoS 1/2 deliveries when the client acknowledges them
(PUBACK, or PUBREC for QoS 2).

Batching: a consumer task takes everything its consumer has queued (up to
:data:`DELIVERY_BATCH`), turns it into PUBLISH packets and hands them to the connection as one
item of its send channel (one socket write); it stops early only to wait for a Receive Maximum
slot, after sending what is ready.  Settled messages are acknowledged with one ``ack_many`` per
consumer partition (QoS 0 at once, QoS 1 per run of PUBACK packets the reader received together).
Most messages were stored by an MQTT publish without properties: for those, when the client
takes no topic aliases and the match carries no subscription identifier, the PUBLISH is written
straight to bytes (:mod:`.hot_path`), with the topic's route (MQTT topic, its encoded field,
the :class:`Match`) cached until the session's subscriptions change.  Everything else goes
through :func:`~handlers.mqtt.mapping.message_to_publish` and the encoder.

When the connection ends, the packet ids of unacknowledged QoS 1/2 deliveries are kept in the
session (:meth:`SessionState.keep_for_resend`): the core redelivers those messages to the
resumed session, which sends them again under their original ids with DUP set
(MQTT-4.4.0-1).

Flow control: each consumer holds at most :data:`WINDOW` permits, QoS 1/2 deliveries also take
a slot of the client's Receive Maximum, and bytes go to the connection's bounded send channel.
A batch of QoS 0 messages that does not fit into that channel is dropped and counted
(:attr:`dropped`); QoS 1/2 messages wait, so they stay in the log.  Nothing grows with a slow
client.

Filters whose first level is ``+`` or ``#`` span every core topic of the namespace, including
topics created later, through any protocol: the :class:`~.topic_directory.TopicDirectory`
follows the core's topic creations and wakes the deliverers (:meth:`Deliverer.sync`).

Where a new core subscription starts: at the end of the topic (``LATEST``) when the topic
existed when the filter spanning it was subscribed, so history is not replayed; at its
beginning (``EARLIEST``) when a filter subscribed earlier spans it but it has no core
subscription yet -- the topic was created (or created again) after that SUBSCRIBE, so every
message in it is new to the filter, including those written before the directory noticed the
topic, or while a persistent session was offline.  A :class:`Deliverer` remembers which
filters it has served (every filter of a resumed session was served by an earlier
connection); a ``+``/``#`` filter counts as served only after a sync that listed the topics.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence
from contextlib import suppress
from dataclasses import replace
from typing import Any, Protocol

import trio

from core.errors import CoreError
from core.headers import is_expired
from core.names import TopicName
from core.records import Message
from core.subscriptions import (
    Consumer,
    ConsumerClosed,
    InitialPosition,
    SubscriptionError,
    SubscriptionManager,
    SubscriptionType,
)
from core.subscriptions.types import Delivery

from .hot_path import plain_headers, plain_publish_parts, topic_field
from .mapping import delivery_qos, message_to_publish
from .packet_types import MQTT_5
from .packets import Publish
from .session_state import Match, SessionState
from .topic_directory import TopicDirectory
from .topic_mapping import (
    AllTopics,
    Concrete,
    TopicNotMappable,
    filter_core_topics,
    record_to_mqtt_topic,
)

__all__ = [
    "DELIVERY_BATCH",
    "FLOW_BATCH",
    "ROUTE_CACHE",
    "WINDOW",
    "Deliverer",
    "Quota",
    "Sink",
    "Token",
    "TopicDirectory",
    "core_subscription_name",
]

log = logging.getLogger(__name__)

#: permits one core consumer holds (messages read ahead for one client and core topic)
WINDOW = 256
#: settled messages whose permits are given back together (at most WINDOW)
FLOW_BATCH = 32
#: deliveries of one consumer turned into packets and queued together
DELIVERY_BATCH = 64
#: (core topic, MQTT topic) routes a deliverer remembers for plain messages
ROUTE_CACHE = 1024

#: the core ack handle of one delivery
Token = tuple[Consumer, int, int]
_Key = tuple[str, str | None]  # (core topic, shared filter or None)


def core_subscription_name(client_id: str, shared_filter: str | None = None) -> str:
    """The core subscription serving a session (or a ``$share/<group>/...`` filter)."""
    if shared_filter is None:
        return f"mqtt:{client_id}"
    group, _, rest = shared_filter[len("$share/"):].partition("/")
    return f"mqtt-share:{group}:{rest}"


class Quota:
    """The client's Receive Maximum: QoS 1/2 deliveries not yet acknowledged.

    A counter, so taking and giving back a slot (once per message each way) is an integer
    operation; only a sender that finds no slot waits, on an event the next release sets.
    Slots given back beyond the starting number are kept (as ``trio.Semaphore`` does).
    """

    __slots__ = ("_freed", "free")

    def __init__(self, slots: int) -> None:
        self.free = slots
        self._freed: trio.Event | None = None

    def acquire_nowait(self) -> None:
        """Take a slot; raises :class:`trio.WouldBlock` when none is free."""
        if self.free <= 0:
            raise trio.WouldBlock
        self.free -= 1

    async def acquire(self) -> None:
        """Take a slot, waiting for one (always a checkpoint)."""
        if self.free > 0:
            await trio.lowlevel.checkpoint()
        while self.free <= 0:
            if self._freed is None:
                self._freed = trio.Event()
            await self._freed.wait()
        self.free -= 1

    def release(self, count: int = 1) -> None:
        """Give back ``count`` slots."""
        self.free += count
        if self._freed is not None:
            self._freed.set()
            self._freed = None


class Sink(Protocol):
    """The connection side of delivery (encoding, topic aliases, the send channel)."""

    protocol_level: int

    @property
    def uses_topic_aliases(self) -> bool:
        """Whether PUBLISH packets go through topic alias assignment (no bytes fast path)."""

    async def send_publishes(
        self, packets: Sequence[Publish | bytes | tuple[bytes, ...]], *, droppable: bool
    ) -> list[bool] | None:
        """Encode ``packets`` (bytes: already encoded; a tuple: already encoded, in pieces
        to be concatenated) and queue them as one item of the send channel.

        With ``droppable`` (QoS 0 only) nothing waits: None when the channel is full
        (nothing queued).  Otherwise waits for room.  Returns, per packet, whether it was
        queued (False: it exceeds the client's Maximum Packet Size and was skipped).
        """

    def is_local(self, core_topic: str, partition: int, offset: int) -> bool:
        """Whether this connection published the message (for *no local*)."""


class Deliverer:
    """Delivery to one connection of one session (see the module docstring)."""

    def __init__(
        self,
        manager: SubscriptionManager,
        directory: TopicDirectory,
        state: SessionState[Token | None],
        sink: Sink,
        receive_maximum: int,
        *,
        wall_ms: Callable[[], int],
    ) -> None:
        self.manager = manager
        self.directory = directory
        self.namespace = directory.namespace
        self.state = state
        self.sink = sink
        self._wall_ms = wall_ms
        self._quota = Quota(receive_maximum)
        self._consumers: dict[_Key, Consumer] = {}
        self._owed: dict[int, int] = {}  # permits to give back, by consumer id
        self._sync_lock = trio.Lock()
        self._nursery: trio.Nursery | None = None
        self._resync = trio.Event()
        #: filters whose topics have been attached (those of a resumed session: all of them)
        self._served: set[str] = set(state.subscriptions)
        self._seen = -1  # the directory generation the last sync looked at
        self._routes: dict[tuple[str, str | None, bytes], tuple[str, bytes, Match | None]] = {}
        self._routes_at = -1
        #: QoS 0 messages dropped because the client did not keep up
        self.dropped = 0
        #: messages sent
        self.sent = 0

    def _topic(self, name: str) -> TopicName:
        return TopicName(self.namespace.tenant, self.namespace.namespace, name)

    # ------------------------------------------------------------ consumers

    def _wanted(self) -> tuple[set[_Key], set[str | None]]:
        keys: set[_Key] = set()
        everywhere: set[str | None] = set()
        for entry in self.state.subscriptions.values():
            shared = entry.topic_filter if entry.share_group is not None else None
            span = filter_core_topics(entry.topic_filter)
            if isinstance(span, Concrete) and self.directory.reachable(span.name):
                keys.add((span.name, shared))
            elif isinstance(span, AllTopics):
                everywhere.add(shared)
        for name in self.directory.topics:
            for shared in everywhere:
                keys.add((name, shared))
        return keys, everywhere

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Deliver until cancelled; consumers are closed on the way out."""
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                await self.sync(InitialPosition.LATEST, refresh=self.spans_all_topics())
                nursery.start_soon(self._watch_topics)
                task_status.started()
        finally:
            self._nursery = None
            self.close()

    def spawn(self, fn: Callable[..., Awaitable[None]], *args: Any) -> None:
        """Run ``fn(*args)`` as a task of this connection's delivery (ends with it)."""
        if self._nursery is not None:
            self._nursery.start_soon(fn, *args)

    def spans_all_topics(self) -> bool:
        """Whether a subscription's first level is ``+`` or ``#``."""
        return any(isinstance(filter_core_topics(f), AllTopics) for f in self.state.subscriptions)

    async def _watch_topics(self) -> None:
        while True:
            if not self.spans_all_topics():
                # nothing spans every topic: sleep until a SUBSCRIBE calls sync()
                self._resync = trio.Event()
                await self._resync.wait()
                continue
            # a topic that joined the directory since the last sync looked at it
            await self.directory.wait_changed(self._seen)
            await self.sync()

    async def sync(
        self, start: InitialPosition = InitialPosition.LATEST, *, refresh: bool = False
    ) -> set[str]:
        """Attach consumers to what the subscriptions span now; detach from the rest.

        Returns the core topics that could not be subscribed (logged; e.g. a topic that does
        not exist while the core does not auto-create topics).
        A new core subscription starts at ``start`` when only filters new to this deliverer
        span its topic, else at the earliest offset (see the module docstring).  With
        ``refresh`` the topic directory is listed first (needed when a ``+``/``#`` filter is
        new: the topics that exist now start at ``start``).
        """
        async with self._sync_lock:
            if refresh:
                await self.directory.refresh()
            self._seen = self.directory.generation
            keys, everywhere = self._wanted()
            filters = list(self.state.subscriptions)
            if everywhere:
                self._resync.set()
            for key in [k for k in self._consumers if k not in keys]:
                await self._detach(key)
            failed: set[str] = set()
            for key in keys:
                if key in self._consumers or self._nursery is None:
                    continue
                if not await self._attach(key, self._start_for(key, start)):
                    failed.add(key[0])
            # a +/# filter has been served once a sync attached every topic listed meanwhile
            self._served = {f for f in filters if f in self._served or refresh
                            or not isinstance(filter_core_topics(f), AllTopics)}
            return failed

    def _start_for(self, key: _Key, start: InitialPosition) -> InitialPosition:
        """EARLIEST when a filter served before spans ``key`` (its topic is newer than that
        filter's SUBSCRIBE, see the module docstring); else ``start``."""
        name, shared = key
        if shared is not None:
            return InitialPosition.EARLIEST if shared in self._served else start
        for f in self._served:
            entry = self.state.subscriptions.get(f)
            if entry is None or entry.share_group is not None:
                continue
            span = filter_core_topics(f)
            if isinstance(span, AllTopics) or (isinstance(span, Concrete) and span.name == name):
                return InitialPosition.EARLIEST
        return start

    async def _attach(self, key: _Key, start: InitialPosition) -> bool:
        name, shared = key
        kind = SubscriptionType.EXCLUSIVE if shared is None else SubscriptionType.SHARED
        if not self._named(name, shared):
            # found through the directory only: do not create the topic again if it was deleted
            try:
                await self.directory.core.topic_metadata(self._topic(name))
            except CoreError:
                self.directory.forget(name)
                return True
        try:
            consumer = await self.manager.subscribe(
                self._topic(name), core_subscription_name(self.state.client_id, shared), kind,
                consumer_name=self.state.client_id, initial_position=start, max_permits=WINDOW)
        except (CoreError, ValueError) as exc:
            log.warning("mqtt: client %r cannot read core topic %s: %s",
                        self.state.client_id, name, exc)
            return False
        self._consumers[key] = consumer
        self.directory.add(name)
        assert self._nursery is not None
        self._nursery.start_soon(self._deliver_from, consumer, name, shared)
        return True

    def _named(self, name: str, shared: str | None) -> bool:
        """Whether a filter serving ``(name, shared)`` names core topic ``name`` itself."""
        filters = self.state.subscriptions if shared is None else (shared,)
        for f in filters:
            if shared is None and self.state.subscriptions[f].share_group is not None:
                continue
            span = filter_core_topics(f)
            if isinstance(span, Concrete) and span.name == name:
                return True
        return False

    async def _detach(self, key: _Key) -> None:
        consumer = self._consumers.pop(key)
        consumer.close("unsubscribed")
        self._owed.pop(consumer.consumer_id, None)
        name, shared = key
        if shared is None:
            with suppress(SubscriptionError):
                await self.manager.unsubscribe(
                    self._topic(name), core_subscription_name(self.state.client_id), force=True)

    def close(self) -> None:
        """Close every consumer: unacknowledged messages go back to the core for redelivery,
        their packet ids are kept for that (:meth:`SessionState.keep_for_resend`)."""
        where = {c.consumer_id: key for key, c in self._consumers.items()}
        for flight in self.state.outbound.values():
            if flight.token is not None:
                consumer, partition, offset = flight.token
                key = where.get(consumer.consumer_id)
                if key is not None:
                    self.state.keep_for_resend((*key, partition, offset), flight.packet_id)
        for consumer in self._consumers.values():
            consumer.close("client disconnected")
        self._consumers.clear()
        self._owed.clear()
        self._quota.release(sum(1 for _ in self.state.drop_outbound()))

    # ------------------------------------------------------------ delivery

    async def _deliver_from(self, consumer: Consumer, core_topic: str, shared: str | None) -> None:
        try:
            consumer.flow(WINDOW)
            while True:
                # everything the consumer has queued goes out together (one send-channel item,
                # so one socket write), not one task switch and write per message
                batch = await consumer.receive_batch(DELIVERY_BATCH)
                await self._deliver(consumer, core_topic, shared, batch)
        except ConsumerClosed:
            key = (core_topic, shared)
            if self._consumers.get(key) is consumer:  # closed by the core: topic deleted
                del self._consumers[key]
                self.directory.forget(core_topic)
                log.info("mqtt: client %r no longer reads core topic %s: %s",
                         self.state.client_id, core_topic, consumer.close_reason)

    def _settle(self, token: Token) -> None:
        consumer, partition, offset = token
        if consumer.closed:
            return
        try:
            consumer.ack(partition, offset)
            # permits go back in batches: one wake-up of the subscription per FLOW_BATCH
            owed = self._owed.get(consumer.consumer_id, 0) + 1
            if owed >= FLOW_BATCH:
                consumer.flow(owed)
                owed = 0
            self._owed[consumer.consumer_id] = owed
        except SubscriptionError as exc:
            log.debug("mqtt: ack of %s/%d failed: %s", partition, offset, exc)

    def _settle_many(self, tokens: list[Token]) -> None:
        """Like :meth:`_settle` for each token: one ``ack_many`` per consumer partition."""
        if len(tokens) == 1:
            self._settle(tokens[0])
            return
        groups: dict[tuple[int, int], tuple[Consumer, list[int]]] = {}
        for consumer, partition, offset in tokens:
            group = groups.get((consumer.consumer_id, partition))
            if group is None:
                groups[(consumer.consumer_id, partition)] = (consumer, [offset])
            else:
                group[1].append(offset)
        for (_, partition), (consumer, offsets) in groups.items():
            if consumer.closed:
                continue
            try:
                consumer.ack_many(partition, offsets)
            except SubscriptionError:
                # one unknown offset stops ack_many: settle the group one by one
                for offset in offsets:
                    self._settle((consumer, partition, offset))
                continue
            owed = self._owed.get(consumer.consumer_id, 0) + len(offsets)
            if owed >= FLOW_BATCH:
                consumer.flow(owed)
                owed = 0
            self._owed[consumer.consumer_id] = owed

    def acknowledged_many(self, tokens: list[Token | None]) -> None:
        """Several QoS 1 deliveries acknowledged (a run of PUBACK packets)."""
        self._quota.release(len(tokens))
        self._settle_many([t for t in tokens if t is not None])

    def acknowledged(self, token: Token | None, *, release: bool = True) -> None:
        """The client acknowledged a delivery: PUBACK, or PUBREC for QoS 2.

        ``token`` is None for deliveries that are not from a core subscription (retained).
        A QoS 2 delivery keeps its Receive Maximum slot until PUBCOMP (``release=False``
        here, then :meth:`completed`).
        """
        if token is not None:
            self._settle(token)
        if release:
            self._quota.release()

    def completed(self) -> None:
        """PUBCOMP received: the QoS 2 exchange frees its Receive Maximum slot."""
        self._quota.release()

    def hold_slots(self, count: int) -> None:
        """Take ``count`` slots for QoS 2 exchanges resumed from an earlier connection."""
        for _ in range(count):
            try:
                self._quota.acquire_nowait()
            except trio.WouldBlock:
                return

    async def acquire_slot(self) -> None:
        """Wait for a free slot of the client's Receive Maximum (released by acknowledged)."""
        await self._quota.acquire()

    def _plain_route(
        self, core_topic: str, shared: str | None, raw_topic: bytes, msg: Message
    ) -> tuple[str, bytes, Match | None] | None:
        """``(MQTT topic, its PUBLISH topic field, match)`` for a message stored under the MQTT
        topic ``raw_topic`` (cached while the subscriptions stay the same); None when the
        record's topic is not that name (the general path decides)."""
        changes = self.state.subscription_changes
        if changes != self._routes_at or len(self._routes) >= ROUTE_CACHE:
            self._routes.clear()
            self._routes_at = changes
        key = (core_topic, shared, raw_topic)
        route = self._routes.get(key)
        if route is None:
            try:
                topic = record_to_mqtt_topic(core_topic, msg.key, msg.headers)
            except TopicNotMappable:
                return None
            field = topic_field(topic)
            if field[2:] != raw_topic:  # named by the key, not the header: not cacheable
                return None
            route = self._routes[key] = (topic, field, self.state.match(topic, shared))
        return route

    async def _deliver(
        self, consumer: Consumer, core_topic: str, shared: str | None, batch: list[Delivery]
    ) -> None:
        """Turn a batch of deliveries into PUBLISH packets, queued with as few sends as the
        Receive Maximum allows; QoS 0 packets are dropped (not waited for) on a full channel.

        Messages stored by an MQTT publish without properties (most of them) are encoded
        straight to bytes (:mod:`.hot_path`); the others go through :func:`message_to_publish`.
        """
        level = self.sink.protocol_level
        v5 = level == MQTT_5
        plain_ok = not self.sink.uses_topic_aliases
        now = self._wall_ms()
        packets: list[Publish | bytes | tuple[bytes, ...]] = []
        tokens: list[Token | None] = []  # None: QoS 0 (settled once queued or dropped)
        qos0: list[Token] = []
        matches: dict[str, Match | None] = {}  # messages of a batch often share a topic
        last_raw: bytes | None = None  # the route of the previous plain message
        last_route: tuple[str, bytes, Match | None] | None = None
        for d in batch:
            token: Token = (consumer, d.partition, d.offset)
            msg = d.message
            plain = plain_headers(msg.headers) if plain_ok else None
            route = None
            if plain is not None:
                if plain[0] == last_raw:
                    route = last_route
                else:
                    route = self._plain_route(core_topic, shared, plain[0], msg)
                    last_raw, last_route = (plain[0], route) if route is not None else (
                        None, None)
            if plain is not None and route is not None:
                _, field, match = route
                if match is None or (
                        match.no_local and self.sink.is_local(core_topic, d.partition, d.offset)):
                    self._settle(token)
                    continue
                if not (v5 and match.identifiers):
                    qos = min(match.qos, plain[1])
                    pid = None
                    dup = False
                    if qos:
                        try:
                            self._quota.acquire_nowait()
                        except trio.WouldBlock:
                            await self._wait_for_slot(packets, tokens, qos0)
                        if consumer.closed:
                            self._quota.release()
                            return
                        pid, dup = self._start(qos, token, core_topic, shared, d)
                    packets.append(plain_publish_parts(
                        field, msg.value if msg.value is not None else b"", qos,
                        match.retain_as_published and plain[2], dup, pid, v5))
                    if qos:
                        tokens.append(token)
                    else:
                        tokens.append(None)
                        qos0.append(token)
                    continue
            try:
                topic = record_to_mqtt_topic(core_topic, msg.key, msg.headers)
            except TopicNotMappable:
                self._settle(token)
                continue
            if topic in matches:
                match = matches[topic]
            else:
                match = matches[topic] = self.state.match(topic, shared)
            if (
                match is None
                or (match.no_local and self.sink.is_local(core_topic, d.partition, d.offset))
                or is_expired(msg.headers, msg.timestamp_ms, now)
            ):
                self._settle(token)
                continue
            qos = delivery_qos(msg, match.qos)
            pid = None
            dup = False
            if qos:
                try:
                    self._quota.acquire_nowait()
                except trio.WouldBlock:
                    await self._wait_for_slot(packets, tokens, qos0)
                if consumer.closed:
                    self._quota.release()
                    return
                pid, dup = self._start(qos, token, core_topic, shared, d)
            packet = message_to_publish(
                msg, core_topic, granted_qos=qos, protocol_level=level,
                retain_as_published=match.retain_as_published, packet_id=pid,
                subscription_identifiers=match.identifiers, now_ms=now, topic=topic)
            if dup:
                packet = replace(packet, dup=True)
            packets.append(packet)
            if qos:
                tokens.append(token)
            else:
                tokens.append(None)
                qos0.append(token)
        await self._flush(packets, tokens, qos0)

    def _start(
        self, qos: int, token: Token, core_topic: str, shared: str | None, d: Delivery
    ) -> tuple[int, bool]:
        """``(packet id, DUP)`` of a QoS 1/2 delivery: the original packet id when it is sent
        again after a reconnect, else a fresh one; DUP for every redelivery."""
        pid = None
        if self.state.resend:
            pid = self.state.resend_id((core_topic, shared, d.partition, d.offset))
        return (self.state.start_outbound(qos, token, pid),
                pid is not None or d.redelivery_count > 0)

    async def _wait_for_slot(
        self, packets: list[Publish | bytes | tuple[bytes, ...]], tokens: list[Token | None],
        qos0: list[Token],
    ) -> None:
        """The client's Receive Maximum is full: send what is ready (the lists are emptied
        for the rest of the batch), then wait for a slot."""
        await self._flush(packets, tokens, qos0)
        packets.clear()
        tokens.clear()
        qos0.clear()
        await self._quota.acquire()

    async def _flush(
        self, packets: list[Publish | bytes | tuple[bytes, ...]], tokens: list[Token | None],
        qos0: list[Token],
    ) -> None:
        if not packets:
            return
        droppable = len(qos0) == len(packets)
        queued = await self.sink.send_publishes(packets, droppable=droppable)
        if queued is None:  # QoS 0 only, and the client does not keep up
            self.dropped += len(packets)
        else:
            for token, ok in zip(tokens, queued, strict=True):
                if ok:
                    self.sent += 1
                    continue
                self.dropped += 1  # too large for the client: skipped
                if token is not None:
                    self._forget_flight(token)
                    self.acknowledged(token)
        if qos0:
            self._settle_many(qos0)

    def _forget_flight(self, token: Token) -> None:
        outbound = self.state.outbound
        for pid, flight in outbound.items():
            if flight.token is token:
                del outbound[pid]
                return
