"""Virtual hosts: vhost → core namespace, and the broker operations of one vhost.

Mapping (fixed, see DESIGN.md): ``/`` (and the empty name) is the core's default namespace
(``public/default``); ``tenant/ns`` names that namespace; any other name ``v`` is the namespace
``<default tenant>/v``.  A vhost whose namespace does not exist (or whose name is not a valid
namespace) is refused with 530 NOT_ALLOWED, as RabbitMQ refuses an unknown vhost.

:class:`VirtualHost` ties the in-memory :class:`~handlers.amqp.broker.registry.Registry` to the
metadata store (durable entities, :mod:`handlers.amqp.broker.metadata`) and to the core:

* exchange ``X`` is backed by the core topic ``X`` of the namespace (names outside the core's
  topic alphabet are escaped, ``=`` + two hex digits per UTF-8 byte: ``a b`` → ``a=20b``, see
  :mod:`handlers.amqp.broker.topics`); the default exchange has no topic;
* queue ``Q`` has its own topic ``amq.queue.Q`` (the default exchange's copy) and one durable
  subscription ``amqp-queue:Q`` per source exchange it is bound to (see
  :mod:`handlers.amqp.broker.queues`).  The subscription of a binding is created when the
  first binding from that exchange is made, at the end of the exchange's log, so a queue sees
  exactly the messages published after it was bound;
* deleting an exchange keeps its topic (and data, for Kafka readers; retention applies);
  deleting a queue deletes its subscriptions and its own topic.

Changes are serialised by one lock per vhost; they are rare compared with publishes, which
take no lock.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import trio
from pamqp import common

from core.api import Core, wall_clock_ms
from core.errors import CoreError, TopicAlreadyExists, UnknownTopic
from core.names import NamespaceName, TopicName
from core.records import Message
from core.subscriptions import (
    Consumer,
    InitialPosition,
    MessageFilter,
    RedeliveryPolicy,
    SubscriptionError,
    SubscriptionManager,
    SubscriptionType,
)
from handlers.amqp.broker.bindings import Binding, DestinationKind
from handlers.amqp.broker.exchanges import Exchange, Matcher, make_matcher
from handlers.amqp.broker.metadata import AmqpMetadata
from handlers.amqp.broker.queues import (
    SUBSCRIPTION_PREFIX,
    Queue,
    QueueArguments,
    server_generated_name,
)
from handlers.amqp.broker.registry import DEFAULT_EXCHANGE, Registry, Route
from handlers.amqp.broker.topics import (
    QUEUE_TOPIC_PREFIX,
    TopicNames,
    exchange_topic_name,
    namespace_for_vhost,
)
from handlers.amqp.deadletter import rewriter
from handlers.amqp.errors import AMQPChannelError, ReplyCode

__all__ = [
    "QUEUE_TOPIC_PREFIX",
    "QueueListener",
    "VirtualHost",
    "exchange_topic_name",
    "namespace_for_vhost",
]

log = logging.getLogger(__name__)

MAX_RETIRED = 64
#: requeued messages come back at once (AMQP), not after Pulsar's nack backoff
REQUEUE_NOW = RedeliveryPolicy(nack_delay_s=0.0, nack_max_delay_s=0.0)


async def _boundary_ms() -> int:
    """The first millisecond after now, once the clock has reached it.

    Binding changes take effect at this boundary: every message stamped before the
    change has a smaller timestamp, and every message published after the reply
    (which is sent only once the clock reached the boundary) has one at least as
    large, so a publish in the same millisecond as a bind/unbind is never misrouted.
    """
    boundary = wall_clock_ms() + 1
    # the wall clock is not trio's clock: sleep to the tick, then check (bounded)
    for _ in range(20):
        if wall_clock_ms() >= boundary:
            break
        await trio.sleep(0.001 - (time.time_ns() % 1_000_000) / 1e9)
    return boundary


class QueueListener(Protocol):
    """What a queue's consumer (owned by a session) hears from the vhost."""

    def source_added(self, source: str) -> None:
        """The queue got its first binding from exchange ``source``: consume from it too."""

    def queue_deleted(self) -> None:
        """The queue is gone: cancel the consumer (and notify the client)."""


@dataclass(frozen=True, slots=True)
class QueueStatus:
    """What ``queue.declare-ok`` reports."""

    name: str
    message_count: int
    consumer_count: int


def _key_text(message: Message) -> str:
    return message.key.decode("utf-8", "replace") if message.key else ""


class VirtualHost:
    """Exchanges, queues and bindings of one vhost on the core (see the module docstring)."""

    def __init__(
        self, name: str, namespace: NamespaceName, core: Core, subs: SubscriptionManager,
        nursery: trio.Nursery | None = None,
    ) -> None:
        self.name = name
        self.nursery = nursery
        self.namespace = namespace
        self.core = core
        self.subs = subs
        self.registry = Registry(name)
        self.metadata = AmqpMetadata(core.storage.metadata, namespace)
        self.listeners: dict[str, list[QueueListener]] = {}
        self._lock = trio.Lock()
        self._topics: set[TopicName] = set()
        self.names = TopicNames(namespace)
        #: when a binding was added to an existing subscription (publish-time semantics)
        self._since: dict[Binding, int] = {}
        #: removed bindings whose subscription lives on: (matcher, since, until) per queue/source
        self._retired: dict[tuple[str, str], deque[tuple[Matcher, int, int]]] = {}

    # ------------------------------------------------------------ names

    def exchange_topic(self, exchange: str) -> TopicName:
        """The core topic of an exchange."""
        return self.names.exchange_topic(exchange)

    def queue_topic(self, queue: str) -> TopicName:
        """The core topic of a queue's default-exchange messages."""
        return self.names.queue_topic(queue)

    def source_topic(self, queue: str, source: str) -> TopicName:
        """The topic a queue's subscription for ``source`` reads."""
        return self.queue_topic(queue) if source == DEFAULT_EXCHANGE else self.exchange_topic(
            source)

    async def _ensure_topic(self, topic: TopicName) -> None:
        if topic in self._topics:
            return
        with contextlib.suppress(TopicAlreadyExists):
            await self.core.create_topic(topic)
        self._topics.add(topic)

    # ------------------------------------------------------------ load

    async def load(self) -> None:
        """Bring back the durable exchanges, queues and bindings."""
        stored = await self.metadata.load()
        for ex in stored.exchanges:
            self.registry.exchanges[ex.name] = ex
        for q in stored.queues:
            self.registry.add_queue(q)
            self._watch_expiry(q)
        for b in stored.bindings:
            if b.source in self.registry.exchanges and (
                b.destination in self.registry.queues
                if b.kind is DestinationKind.QUEUE
                else b.destination in self.registry.exchanges
            ):
                self.registry.add_binding(b)
        log.info("amqp vhost %r (%s): %d exchanges, %d queues, %d bindings restored", self.name,
                 self.namespace, len(stored.exchanges), len(stored.queues), len(stored.bindings))
        await self._sweep()

    async def _sweep(self) -> None:
        """Drop what transient queues left behind at the last stop: their own topics and their
        subscriptions on exchange topics (only durable queues come back)."""
        wanted = {self.queue_topic(name) for name in self.registry.queues}
        for info in await self.core.list_topics(self.namespace):
            name = info.name
            if name.local.startswith(QUEUE_TOPIC_PREFIX) and name not in wanted:
                with contextlib.suppress(CoreError, SubscriptionError):
                    await self.subs.forget_topic(name, info.partitions)
                    await self.core.delete_topic(name)
                continue
            for sub in await self.subs.list_subscriptions(name):
                queue = sub.name.removeprefix(SUBSCRIPTION_PREFIX)
                if sub.name.startswith(SUBSCRIPTION_PREFIX) and queue not in self.registry.queues:
                    await self._drop_subscription(sub.name, name)

    # ------------------------------------------------------------ exchanges

    async def declare_exchange(
        self, name: str, type_name: str, *, durable: bool, auto_delete: bool, internal: bool,
        arguments: common.FieldTable, passive: bool,
    ) -> Exchange:
        """``exchange.declare``."""
        async with self._lock:
            exchange, created = self.registry.declare_exchange(
                name, type_name, durable=durable, auto_delete=auto_delete, internal=internal,
                arguments=arguments, passive=passive,
            )
            if created:
                try:
                    await self._ensure_topic(self.exchange_topic(name))
                    if durable:
                        await self.metadata.save_exchange(exchange)
                except BaseException:
                    self.registry.exchanges.pop(name, None)
                    self.registry.forget_routes()
                    raise
            return exchange

    async def delete_exchange(self, name: str, if_unused: bool) -> None:
        """``exchange.delete`` (the topic and its data stay)."""
        async with self._lock:
            exchange = self.registry.exchanges.get(name)
            removed = self.registry.delete_exchange(name, if_unused)
            if exchange is None:
                return
            for b in removed:
                await self._binding_removed(b)
            if exchange.durable:
                await self.metadata.delete_exchange(name)

    # ------------------------------------------------------------ queues

    def check_exclusive(self, queue: Queue, connection_id: int, method_id: int = 0) -> None:
        """405 RESOURCE_LOCKED when another connection owns the exclusive queue."""
        if queue.owner is not None and queue.owner != connection_id:
            raise AMQPChannelError(
                ReplyCode.RESOURCE_LOCKED,
                f"cannot obtain exclusive access to locked queue '{queue.name}' in vhost "
                f"'{self.name}'. It could be originally declared on another connection or the "
                "exclusive property value does not match that of the original declaration.",
                50, method_id,
            )

    async def declare_queue(
        self, name: str, *, durable: bool, exclusive: bool, auto_delete: bool,
        arguments: common.FieldTable, passive: bool, connection_id: int,
    ) -> QueueStatus:
        """``queue.declare``; an empty name gets a server-generated one."""
        async with self._lock:
            if passive:
                queue = self.registry.queue(name, 50, 10)
                self.check_exclusive(queue, connection_id, 10)
                self.touch(queue)
                return await self._status(queue)
            if not name:
                name = server_generated_name()
            found = self.registry.queues.get(name)
            if found is not None:
                self.check_exclusive(found, connection_id, 10)
                for arg, got, cur in (
                    ("durable", durable, found.durable),
                    ("exclusive", exclusive, found.exclusive),
                    ("auto_delete", auto_delete, found.auto_delete),
                ):
                    if got != cur:
                        raise AMQPChannelError(
                            ReplyCode.PRECONDITION_FAILED,
                            f"inequivalent arg '{arg}' for queue '{name}' in vhost "
                            f"'{self.name}': received '{got}' but current is '{cur}'", 50, 10,
                        )
                for key in set(arguments) | set(found.arguments):
                    if key.startswith("x-") and arguments.get(key) != found.arguments.get(key):
                        raise AMQPChannelError(
                            ReplyCode.PRECONDITION_FAILED,
                            f"inequivalent arg '{key}' for queue '{name}' in vhost "
                            f"'{self.name}': received {arguments.get(key)!r} but current is "
                            f"{found.arguments.get(key)!r}", 50, 10,
                        )
                self.touch(found)
                return await self._status(found)
            queue = Queue(
                name, durable=durable, auto_delete=auto_delete,
                owner=connection_id if exclusive else None, arguments=dict(arguments),
                parsed=QueueArguments.parse(arguments),
            )
            topic = self.queue_topic(name)
            await self._ensure_topic(topic)
            await self._create_subscription(queue, DEFAULT_EXCHANGE)
            if durable:
                await self.metadata.save_queue(queue)
            self.registry.add_queue(queue)
            self.touch(queue)
            self._watch_expiry(queue)
            return QueueStatus(name, 0, 0)

    async def _status(self, queue: Queue) -> QueueStatus:
        return QueueStatus(queue.name, await self.message_count(queue),
                           len(self.listeners.get(queue.name, ())))

    async def message_count(self, queue: Queue) -> int:
        """Messages ready or unacked in the queue.

        Exact for messages that came through the default exchange; for other sources, messages
        the binding filter will skip count until a consumer's read passes them.
        """
        total = 0
        for source in self._sources(queue.name):
            group = self.subs.get(self.source_topic(queue.name, source), queue.subscription)
            if group is not None:
                total += (await group.info()).backlog
        return total

    def _sources(self, queue: str) -> list[str]:
        sources = {DEFAULT_EXCHANGE}
        sources.update(b.source for b in self.registry.bindings_to(DestinationKind.QUEUE, queue))
        return sorted(sources)

    def sources(self, queue: str) -> list[str]:
        """Exchanges a queue reads from ("" for its own topic)."""
        return self._sources(queue)

    async def purge_queue(self, name: str, connection_id: int) -> int:
        """``queue.purge``: drop every ready message (not the unacked); returns how many."""
        async with self._lock:
            queue = self.registry.queue(name, 50, 30)
            self.check_exclusive(queue, connection_id, 30)
            count = 0
            for source in self._sources(name):
                topic = self.source_topic(name, source)
                if self.subs.get(topic, queue.subscription) is not None:
                    count += await self.subs.purge(topic, queue.subscription)
                    await self._save_idle(topic, queue.subscription)
            return count

    async def _save_idle(self, topic: TopicName, subscription: str) -> None:
        """Store the cursor of a subscription without consumers after purge/drop-head.

        Workaround: the core persists cursor changes from the subscription's task, which only
        runs while it has consumers (reported to the core's owner).
        """
        group = self.subs.get(topic, subscription)
        if group is None or group.consumers:
            return
        for sub in group.partitions.values():
            await self.subs.store.save_now(sub.log_name, sub.name, sub.cursor)

    async def delete_queue(
        self, name: str, *, if_unused: bool, if_empty: bool, connection_id: int | None
    ) -> int:
        """``queue.delete``; returns the messages it held.  Unknown queues: 0 (RabbitMQ)."""
        async with self._lock:
            queue = self.registry.queues.get(name)
            if queue is None:
                return 0
            if connection_id is not None:
                self.check_exclusive(queue, connection_id, 40)
            if if_unused and self.listeners.get(name):
                raise AMQPChannelError(
                    ReplyCode.PRECONDITION_FAILED,
                    f"queue '{name}' in vhost '{self.name}' in use", 50, 40,
                )
            count = await self.message_count(queue)
            if if_empty and count:
                raise AMQPChannelError(
                    ReplyCode.PRECONDITION_FAILED,
                    f"queue '{name}' in vhost '{self.name}' is not empty", 50, 40,
                )
            await self._delete_queue(queue)
            return count

    async def _delete_queue(self, queue: Queue) -> None:
        for listener in self.listeners.pop(queue.name, []):
            listener.queue_deleted()
        sources = self._sources(queue.name)
        removed = self.registry.remove_queue(queue.name)
        for source in sources:
            await self._drop_subscription(queue.subscription, self.source_topic(queue.name,
                                                                                 source))
        for b in removed:
            await self._after_unbind(b)
        with contextlib.suppress(UnknownTopic):
            await self.core.delete_topic(self.queue_topic(queue.name))
        self._topics.discard(self.queue_topic(queue.name))
        if queue.durable:
            await self.metadata.delete_queue(queue.name)

    async def delete_owned_by(self, connection_id: int) -> None:
        """Delete the exclusive queues of a connection that closed."""
        async with self._lock:
            for queue in [q for q in self.registry.queues.values() if q.owner == connection_id]:
                await self._delete_queue(queue)

    def add_listener(self, queue: Queue, listener: QueueListener) -> None:
        """A consumer started on ``queue``."""
        self.listeners.setdefault(queue.name, []).append(listener)
        queue.had_consumers = True
        self.touch(queue)

    @staticmethod
    def touch(queue: Queue) -> None:
        """The queue was used (declare, get, consumer change): restart its ``x-expires``."""
        queue.last_used = trio.current_time()

    def _watch_expiry(self, queue: Queue) -> None:
        if queue.parsed.expires_ms is not None and self.nursery is not None:
            self.nursery.start_soon(self._expire_when_unused, queue)

    async def _expire_when_unused(self, queue: Queue) -> None:
        """``x-expires``: delete the queue once it has been unused that long."""
        assert queue.parsed.expires_ms is not None
        ttl = queue.parsed.expires_ms / 1000
        if not queue.last_used:
            self.touch(queue)
        while self.registry.queues.get(queue.name) is queue:
            wait = queue.last_used + ttl - trio.current_time()
            if wait > 0:
                await trio.sleep(wait)
                continue
            if self.listeners.get(queue.name):
                self.touch(queue)  # in use: check again one period later
                continue
            async with self._lock:
                if self.registry.queues.get(queue.name) is queue:
                    log.info("amqp vhost %r: queue %r expired (x-expires)", self.name,
                             queue.name)
                    with trio.CancelScope(shield=True):
                        await self._delete_queue(queue)
            return

    # ------------------------------------------------------------ x-max-length

    def _limited(self, route: Route) -> list[Queue]:
        """The queues of ``route`` with ``x-max-length``, by name (runs per publish)."""
        queues = self.registry.queues
        found: dict[str, Queue] = {}
        for name in route.queues:
            q = queues.get(name)
            if q is not None and q.parsed.max_length is not None:
                found[name] = q
        if route.direct_queue is not None:
            q = queues.get(route.direct_queue)
            if q is not None and q.parsed.max_length is not None:
                found[q.name] = q
        if len(found) < 2:
            return list(found.values())
        return [found[name] for name in sorted(found)]

    async def refuses(self, route: Route, pending: dict[str, int]) -> bool:
        """Whether a queue the message routes to is full with ``x-overflow=reject-publish``.

        ``pending`` counts messages of the same batch already accepted per queue (updated).
        """
        limited = self._limited(route)
        for q in limited:
            assert q.parsed.max_length is not None
            if q.parsed.overflow != "drop-head" and (
                    await self.message_count(q) + pending.get(q.name, 0) >= q.parsed.max_length):
                return True
        for q in limited:
            pending[q.name] = pending.get(q.name, 0) + 1
        return False

    async def trim(self, routes: Sequence[Route]) -> None:
        """``x-max-length`` with ``drop-head``: drop the oldest ready messages of full queues."""
        seen: set[str] = set()
        for route in routes:
            for q in self._limited(route):
                if q.name in seen or q.parsed.overflow != "drop-head":
                    continue
                seen.add(q.name)
                assert q.parsed.max_length is not None
                for source in self._sources(q.name):
                    topic = self.source_topic(q.name, source)
                    if self.subs.get(topic, q.subscription) is not None:
                        await self.subs.drop_head(topic, q.subscription, q.parsed.max_length)
                        await self._save_idle(topic, q.subscription)

    async def consumer_gone(self, queue_name: str, listener: QueueListener) -> None:
        """A consumer was cancelled: auto-delete the queue after its last consumer."""
        async with self._lock:
            found = self.listeners.get(queue_name, [])
            if listener in found:
                found.remove(listener)
            queue = self.registry.queues.get(queue_name)
            if queue is not None:
                self.touch(queue)
            if queue is not None and queue.auto_delete and queue.had_consumers and not found:
                await self._delete_queue(queue)

    # ------------------------------------------------------------ bindings

    async def bind(
        self, kind: DestinationKind, destination: str, source: str, routing_key: str,
        arguments: common.FieldTable, connection_id: int,
    ) -> None:
        """``queue.bind`` / ``exchange.bind``."""
        class_id, method_id = (50, 20) if kind is DestinationKind.QUEUE else (40, 30)
        async with self._lock:
            if source == DEFAULT_EXCHANGE:
                raise AMQPChannelError(
                    ReplyCode.ACCESS_REFUSED,
                    "operation not permitted on the default exchange", class_id, method_id)
            if kind is DestinationKind.QUEUE:
                queue = self.registry.queue(destination, class_id, method_id)
                self.check_exclusive(queue, connection_id, method_id)
                durable_dest = queue.durable
            else:
                durable_dest = self.registry.exchange(destination, class_id, method_id).durable
            src = self.registry.exchange(source, class_id, method_id)
            binding = Binding.create(source, kind, destination, routing_key, arguments)
            first_from_source = kind is DestinationKind.QUEUE and not self.registry.queue_bindings(
                destination, source)
            if not self.registry.add_binding(binding):
                return
            try:
                if kind is DestinationKind.QUEUE:
                    if first_from_source:
                        await self._create_subscription(queue, source)
                    else:
                        self._since[binding] = await _boundary_ms()
                        self._refresh_filter(destination, source)
                if src.durable and durable_dest:
                    await self.metadata.save_binding(binding)
            except BaseException:
                self.registry.remove_binding(binding)
                raise
            if first_from_source:
                for listener in list(self.listeners.get(destination, [])):
                    listener.source_added(source)

    async def unbind(
        self, kind: DestinationKind, destination: str, source: str, routing_key: str,
        arguments: common.FieldTable, connection_id: int,
    ) -> None:
        """``queue.unbind`` / ``exchange.unbind`` (unknown bindings: success)."""
        class_id, method_id = (50, 50) if kind is DestinationKind.QUEUE else (40, 40)
        async with self._lock:
            if kind is DestinationKind.QUEUE:
                queue = self.registry.queue(destination, class_id, method_id)
                self.check_exclusive(queue, connection_id, method_id)
            else:
                self.registry.exchange(destination, class_id, method_id)
            self.registry.exchange(source, class_id, method_id)
            binding = Binding.create(source, kind, destination, routing_key, arguments)
            if not self.registry.remove_binding(binding):
                return
            await self._binding_removed(binding)

    async def _binding_removed(self, binding: Binding) -> None:
        if binding.kind is DestinationKind.QUEUE:
            queue = self.registry.queues.get(binding.destination)
            if queue is not None:
                if self.registry.queue_bindings(queue.name, binding.source):
                    self._retire(binding, await _boundary_ms())
                    self._refresh_filter(queue.name, binding.source)
                else:
                    self._retired.pop((queue.name, binding.source), None)
                    await self._drop_subscription(queue.subscription,
                                                  self.exchange_topic(binding.source))
        await self._after_unbind(binding)

    async def _after_unbind(self, binding: Binding) -> None:
        with trio.CancelScope(shield=True):
            await self.metadata.delete_binding(binding)
        source = self.registry.exchanges.get(binding.source)
        if source is not None and source.auto_delete and not self.registry.bindings_from(
                source.name):
            self.registry.delete_exchange(source.name, False)
            if source.durable:
                await self.metadata.delete_exchange(source.name)

    # ------------------------------------------------------------ subscriptions

    def queue_filter(self, queue: str, source: str) -> MessageFilter | None:
        """The filter of a queue's subscription on ``source`` (None: everything).

        Routing is decided when the subscription reads a message, so bindings are given the
        publish-time meaning of AMQP through the record timestamp (the broker's receive time
        for AMQP publishes): a binding added to a live subscription only matches messages
        published after it, and a removed one keeps matching those published before its
        removal (at most :data:`MAX_RETIRED` removed bindings are remembered per queue and
        exchange; they are forgotten at restart).
        """
        if source == DEFAULT_EXCHANGE:
            return None
        exchange = self.registry.exchanges.get(source)
        bindings = self.registry.queue_bindings(queue, source)
        if exchange is None or not bindings:
            return lambda message: False
        current = [(make_matcher(exchange.type, b.routing_key, b.arguments),
                    self._since.get(b, 0)) for b in bindings]
        retired = list(self._retired.get((queue, source), ()))

        def check(message: Message) -> bool:
            key = _key_text(message)
            at = message.timestamp_ms
            return any(at >= since and m(key, message.headers) for m, since in current) or any(
                since <= at < until and m(key, message.headers) for m, since, until in retired)

        return check

    def _retire(self, binding: Binding, until_ms: int) -> None:
        exchange = self.registry.exchanges.get(binding.source)
        if exchange is None:
            return
        matcher = make_matcher(exchange.type, binding.routing_key, binding.arguments)
        found = self._retired.setdefault((binding.destination, binding.source),
                                         deque(maxlen=MAX_RETIRED))
        found.append((matcher, self._since.pop(binding, 0), until_ms))

    def subscription_type(self, queue: Queue) -> SubscriptionType:
        return (SubscriptionType.FAILOVER if queue.parsed.single_active_consumer
                else SubscriptionType.SHARED)

    async def _create_subscription(self, queue: Queue, source: str) -> None:
        topic = self.source_topic(queue.name, source)
        await self._ensure_topic(topic)
        if self.subs.get(topic, queue.subscription) is not None:
            self._refresh_filter(queue.name, source)
            return
        consumer = await self.attach(queue, source, "amqp-declare", 1)
        consumer.close("binding created")

    def _refresh_filter(self, queue: str, source: str) -> None:
        topic = self.source_topic(queue, source)
        if self.subs.get(topic, SUBSCRIPTION_PREFIX + queue) is not None:
            self.subs.set_filter(topic, SUBSCRIPTION_PREFIX + queue,
                                 self.queue_filter(queue, source))

    async def _drop_subscription(self, subscription: str, topic: TopicName) -> None:
        with contextlib.suppress(SubscriptionError, CoreError):
            await self.subs.unsubscribe(topic, subscription, force=True)

    async def attach(
        self, queue: Queue, source: str, consumer_name: str, max_permits: int
    ) -> Consumer:
        """A core consumer of ``queue``'s subscription on ``source``.

        The queue's arguments become the subscription's options: ``x-message-ttl``, and
        ``x-dead-letter-exchange``/``-routing-key`` as the dead letter topic and key (used
        for rejected, expired and drop-head messages), whose dead letters carry RabbitMQ's
        ``x-death`` (:func:`handlers.amqp.deadletter.rewriter`).
        """
        topic = self.source_topic(queue.name, source)
        await self._ensure_topic(topic)
        dead_letters = self._dead_letter_topic(queue)
        policy = REQUEUE_NOW
        if dead_letters is not None:
            key = queue.parsed.dead_letter_routing_key
            policy = dataclasses.replace(
                REQUEUE_NOW, dead_letter_topic=str(dead_letters),
                dead_letter_key=None if key is None else key.encode("utf-8"),
                dead_letter_rewrite=rewriter(queue=queue.name, exchange=source,
                                             routing_key=key, clock_ms=self.subs.clock_ms))
            await self._ensure_topic(dead_letters)
        return await self.subs.subscribe(
            topic, queue.subscription, self.subscription_type(queue),
            consumer_name=consumer_name, initial_position=InitialPosition.LATEST,
            filter=self.queue_filter(queue.name, source), redelivery=policy,
            message_ttl_ms=queue.parsed.message_ttl_ms,
            dead_letter_expired=dead_letters is not None, max_permits=max_permits,
        )

    def _dead_letter_topic(self, queue: Queue) -> TopicName | None:
        """Where the queue's dead letters are appended (None: they are dropped).

        A dead-letter exchange ``X`` means X's topic, where X's queues pick them up by key;
        the default exchange needs ``x-dead-letter-routing-key`` (it names the target queue).
        """
        exchange = queue.parsed.dead_letter_exchange
        if exchange is None:
            return None
        if exchange == DEFAULT_EXCHANGE:
            key = queue.parsed.dead_letter_routing_key
            return None if not key else self.queue_topic(key)
        return self.exchange_topic(exchange)

    # ------------------------------------------------------------ publish

    def route(self, exchange: str, message: Message) -> Route:
        """Route one message (see :meth:`Registry.route`)."""
        return self.registry.route(exchange, _key_text(message), message.headers)

    async def per_topic(
        self, routed: Sequence[tuple[Message, Route]]
    ) -> dict[TopicName, list[Message]]:
        """The messages each topic their routes name receives, in order (topics created)."""
        per_topic: dict[TopicName, list[Message]] = {}
        # routes are mostly shared (the registry caches them): map each one to its lists once
        targets: dict[int, list[list[Message]]] = {}
        for message, route in routed:
            lists = targets.get(id(route))
            if lists is None:
                lists = [per_topic.setdefault(self.exchange_topic(name), [])
                         for name in route.exchanges]
                if route.direct_queue is not None:
                    lists.append(per_topic.setdefault(self.queue_topic(route.direct_queue), []))
                targets[id(route)] = lists
            for found in lists:
                found.append(message)
        for topic in per_topic:
            await self._ensure_topic(topic)
        return per_topic

    async def store(self, routed: Sequence[tuple[Message, Route]]) -> None:
        """Append messages to every topic their routes name, one batch per topic, in order."""
        for topic, messages in (await self.per_topic(routed)).items():
            await self.core.append_messages(topic, 0, messages)



class VhostDirectory:
    """Every vhost a client has opened so far, loaded on first use."""

    def __init__(
        self, core: Core, subs: SubscriptionManager, nursery: trio.Nursery | None = None
    ) -> None:
        self.core = core
        self.subs = subs
        self.nursery = nursery
        self._default = NamespaceName(core.settings.default_tenant,
                                      core.settings.default_namespace)
        self._vhosts: dict[NamespaceName, VirtualHost] = {}
        self._lock = trio.Lock()

    async def open(self, vhost: str) -> VirtualHost | None:
        """The vhost, or None when its namespace does not exist."""
        namespace = namespace_for_vhost(vhost, self._default)
        if namespace is None:
            return None
        async with self._lock:
            found = self._vhosts.get(namespace)
            if found is not None:
                return found
            try:
                await self.core.namespace_policies(namespace)
            except CoreError:
                return None
            found = VirtualHost(vhost or "/", namespace, self.core, self.subs, self.nursery)
            await found.load()
            self._vhosts[namespace] = found
            return found
