"""Subscriptions of every topic: subscribe, unsubscribe, seek, list, restore.

A subscription named ``S`` on topic ``T`` is one :class:`PartitionSubscription`
per partition of ``T`` (only the named one when ``T`` names a partition,
``T-partition-N``), grouped in a :class:`TopicSubscription`.  A consumer
attaches to each of them and receives from all of them.

The type of a subscription is the type its connected consumers use: a new
consumer asking for another one gets :class:`SubscriptionTypeConflict`; once
every consumer is gone, the next one may choose any type (Pulsar's rule).  The
type, filter and redelivery policy are not persisted; the cursor is.

Open the manager with :func:`open_subscription_manager`; it owns the nursery in
which the subscriptions' tasks run and restores every stored cursor at start.
"""

from __future__ import annotations

import itertools
import logging
import time
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import trio

from core.cursor import Cursor
from core.cursor_store import CursorStore
from core.errors import UnknownPartition
from core.names import TopicName
from core.subscriptions.consumer import DEFAULT_MAX_PERMITS, Consumer
from core.subscriptions.delayed import DEFAULT_MAX_DELAYED
from core.subscriptions.errors import (
    ConsumerBusy,
    SubscriptionBusy,
    SubscriptionTypeConflict,
    UnknownSubscription,
)
from core.subscriptions.filters import MessageFilter
from core.subscriptions.read_ahead import SharedBatchCache
from core.subscriptions.redelivery import RedeliveryPolicy, dead_letter_topic
from core.subscriptions.subscription import (
    DEFAULT_READ_AHEAD,
    DEFAULT_READ_BYTES,
    PartitionSubscription,
    SubscriptionOptions,
)
from core.subscriptions.types import (
    InitialPosition,
    StartPosition,
    SubscriptionInfo,
    SubscriptionType,
)
from core.transactions.visibility import IsolationLevel
from storage.api import StorageError

if TYPE_CHECKING:
    from core.api import Core, TopicRef

__all__ = ["SubscriptionManager", "TopicSubscription", "open_subscription_manager"]

log = logging.getLogger(__name__)
_reader_ids = itertools.count(1)


def _wall_clock_ms() -> int:
    return time.time_ns() // 1_000_000


@dataclass(eq=False)
class TopicSubscription:
    """One named subscription on a topic: its partitions and its consumers."""

    topic: TopicName
    name: str
    durable: bool
    partitions: dict[int, PartitionSubscription] = field(default_factory=dict)
    consumers: list[Consumer] = field(default_factory=list)

    @property
    def type(self) -> SubscriptionType | None:
        """The type the connected consumers use (None when there are none)."""
        return self.consumers[0].type if self.consumers else None

    async def info(self) -> SubscriptionInfo:
        """Type, backlog, unacked counts and consumers (summed over partitions)."""
        backlog = 0
        for sub in self.partitions.values():
            backlog += await sub.backlog()
        subs = self.partitions.values()
        return SubscriptionInfo(
            str(self.topic), self.name, self.type, self.durable, backlog,
            sum(s.unacked for s in subs), sum(s.waiting_redelivery for s in subs),
            tuple(c.info() for c in self.consumers),
        )


class SubscriptionManager:
    """Every subscription of the core (see the module docstring)."""

    def __init__(
        self,
        core: Core,
        nursery: trio.Nursery,
        store: CursorStore | None = None,
        *,
        clock_ms: Callable[[], int] | None = None,
        read_ahead: int = DEFAULT_READ_AHEAD,
        read_bytes: int = DEFAULT_READ_BYTES,
        max_delayed: int = DEFAULT_MAX_DELAYED,
    ) -> None:
        self.core = core
        self.clock_ms = clock_ms or _wall_clock_ms
        self.store = store if store is not None else CursorStore(core.storage.metadata)
        self._nursery = nursery
        self._read_ahead = read_ahead
        self._read_bytes = read_bytes
        self._max_delayed = max_delayed
        self._subs: dict[tuple[TopicName, str], TopicSubscription] = {}
        self._lock = trio.Lock()
        #: decoded batches shared by every subscription's read-ahead (see :mod:`.read_ahead`)
        self.batches = SharedBatchCache(fresh=core.fresh)

    # ------------------------------------------------------------ lookup

    def get(self, topic: TopicRef, subscription: str) -> TopicSubscription | None:
        """The subscription, or None when it does not exist."""
        return self._subs.get((self.core.parse_topic(topic).base, subscription))

    def _require(self, topic: TopicRef, subscription: str) -> TopicSubscription:
        found = self.get(topic, subscription)
        if found is None:
            raise UnknownSubscription(f"no subscription {subscription!r} on {topic}")
        return found

    async def list_subscriptions(self, topic: TopicRef) -> list[SubscriptionInfo]:
        """Every subscription of ``topic`` (durable ones and readers), sorted by name."""
        base = self.core.parse_topic(topic).base
        found = sorted((s for (t, _), s in self._subs.items() if t == base), key=lambda s: s.name)
        return [await s.info() for s in found]

    # ------------------------------------------------------------ subscribe

    async def subscribe(
        self,
        topic: TopicRef,
        subscription: str,
        type: SubscriptionType = SubscriptionType.EXCLUSIVE,
        *,
        consumer_name: str | None = None,
        priority: int = 0,
        initial_position: StartPosition = InitialPosition.LATEST,
        filter: MessageFilter | None = None,
        redelivery: RedeliveryPolicy | None = None,
        message_ttl_ms: int | None = None,
        honour_expiry: bool = True,
        dead_letter_expired: bool = False,
        durable: bool = True,
        max_permits: int = DEFAULT_MAX_PERMITS,
        isolation: IsolationLevel = IsolationLevel.READ_COMMITTED,
    ) -> Consumer:
        """Attach a new consumer, creating the subscription when it does not exist.

        ``initial_position`` only matters for a new subscription.  ``filter``,
        ``redelivery``, ``message_ttl_ms`` (default: the topic's
        ``message_ttl_ms`` policy), ``honour_expiry``, ``dead_letter_expired`` and
        ``isolation`` (transactional data) take effect when the subscription has
        no consumers yet (see :class:`SubscriptionOptions`).
        The consumer starts with no permits: call ``flow``.  Raises
        :class:`SubscriptionTypeConflict`, :class:`ConsumerBusy` (Exclusive),
        :class:`core.errors.UnknownTopic` / ``UnknownPartition``,
        :class:`core.errors.InvalidTopicName` (a bad dead letter topic); nothing
        changes then.
        """
        if not subscription:
            raise ValueError("empty subscription name")
        name = self.core.parse_topic(topic)
        meta = await self.core.topic_metadata(name.base, create_if_missing=True)
        numbers = range(meta.partitions) if name.partition is None else [name.partition]
        if name.partition is not None and name.partition >= meta.partitions:
            raise UnknownPartition(f"{name.base} has no partition {name.partition}")
        if message_ttl_ms is None:
            message_ttl_ms = meta.policies.message_ttl_ms
        if redelivery is not None and redelivery.dead_letters:
            dead_letter_topic(name, subscription, redelivery)  # raises InvalidTopicName
        options = SubscriptionOptions(
            filter, redelivery or RedeliveryPolicy(), message_ttl_ms, honour_expiry,
            dead_letter_expired, isolation,
        )
        async with self._lock:
            group = self._subs.get((name.base, subscription))
            if group is not None:
                self._check_compatible(group, type, durable)
            consumer = Consumer(str(name.base), subscription, type, consumer_name, priority,
                                max_permits)
            new_group = group is None
            if group is None:
                group = TopicSubscription(name.base, subscription, durable)
            for n in numbers:
                if n not in group.partitions:
                    group.partitions[n] = await self._open_partition(
                        name.base, n, subscription, initial_position, durable
                    )
            if new_group:
                self._subs[(name.base, subscription)] = group
            for n in numbers:
                group.partitions[n].add_consumer(consumer, type, options)
            group.consumers.append(consumer)
            consumer.on_close = lambda c: self._consumer_closed(group, c)
            return consumer

    @staticmethod
    def _check_compatible(group: TopicSubscription, type: SubscriptionType, durable: bool) -> None:
        if group.durable != durable:
            kind = "durable" if group.durable else "non-durable"
            raise SubscriptionTypeConflict(f"subscription {group.name!r} is {kind}")
        if not group.consumers:
            return
        current = group.type
        if current is not type:
            assert current is not None
            raise SubscriptionTypeConflict(
                f"subscription {group.name!r} is {current.value}, not {type.value}"
            )
        if type is SubscriptionType.EXCLUSIVE:
            raise ConsumerBusy(f"exclusive subscription {group.name!r} already has a consumer")

    async def open_reader(
        self,
        topic: TopicRef,
        start: StartPosition = InitialPosition.EARLIEST,
        *,
        filter: MessageFilter | None = None,
        max_permits: int = DEFAULT_MAX_PERMITS,
    ) -> Consumer:
        """A non-durable reader: an exclusive subscription whose cursor is never stored.

        It disappears when the consumer closes.
        """
        name = f"__reader-{next(_reader_ids)}"
        return await self.subscribe(
            topic, name, SubscriptionType.EXCLUSIVE, initial_position=start, filter=filter,
            durable=False, max_permits=max_permits,
        )

    async def _open_partition(
        self, topic: TopicName, partition: int, name: str, start: StartPosition, durable: bool
    ) -> PartitionSubscription:
        log_name = topic.log_name(partition)
        cursor = await self.store.load(log_name, name) if durable else None
        if cursor is None:
            cursor = Cursor(await self._resolve(topic, partition, start))
            if durable:
                await self.store.save_now(log_name, name, cursor)
        return self._make(topic, partition, name, cursor, durable)

    def _make(
        self, topic: TopicName, partition: int, name: str, cursor: Cursor, durable: bool
    ) -> PartitionSubscription:
        sub = PartitionSubscription(
            self.core, topic, partition, name, cursor,
            store=self.store if durable else None, nursery=self._nursery,
            clock_ms=self.clock_ms, read_ahead=self._read_ahead, read_bytes=self._read_bytes,
            max_delayed=self._max_delayed, shared_batches=self.batches,
        )
        sub.on_gone = self._topic_gone
        return sub

    def _topic_gone(self, sub: PartitionSubscription) -> None:
        """The topic was deleted: forget the subscription and its stored cursors."""
        self.batches.forget(sub.log_name)
        group = self._subs.pop((sub.topic, sub.name), None)
        if group is None:
            return
        for other in group.partitions.values():
            other.close("topic deleted")
        if group.durable:
            self._nursery.start_soon(self._delete_cursors, group)

    async def _delete_cursors(self, group: TopicSubscription) -> None:
        for n in group.partitions:
            try:
                await self.store.delete(group.topic.log_name(n), group.name)
            except StorageError:
                log.warning("could not delete cursor %s on %s", group.name, group.topic,
                            exc_info=True)

    async def _resolve(self, topic: TopicName, partition: int, start: StartPosition) -> int:
        earliest = await self.core.earliest_offset(topic, partition)
        latest = await self.core.latest_offset(topic, partition)
        if start is InitialPosition.EARLIEST:
            return earliest
        if start is InitialPosition.LATEST:
            return latest
        assert isinstance(start, int)
        return min(max(start, earliest), latest)

    def _consumer_closed(self, group: TopicSubscription, consumer: Consumer) -> None:
        if consumer in group.consumers:
            group.consumers.remove(consumer)
        if not group.durable and not group.consumers:
            for sub in group.partitions.values():
                sub.close("reader closed")
            self._subs.pop((group.topic, group.name), None)

    # ------------------------------------------------------------ unsubscribe, seek

    async def unsubscribe(self, topic: TopicRef, subscription: str, *, force: bool = False) -> None:
        """Delete the subscription and its stored cursors.

        Raises :class:`SubscriptionBusy` while it has consumers, unless ``force``
        (then they are closed).
        """
        async with self._lock:
            group = self._require(topic, subscription)
            if group.consumers and not force:
                raise SubscriptionBusy(
                    f"subscription {subscription!r} has {len(group.consumers)} consumer(s)"
                )
            for c in list(group.consumers):
                c.close("unsubscribed")
            del self._subs[(group.topic, group.name)]
            for sub in group.partitions.values():
                sub.close("unsubscribed")
                if group.durable:
                    await self.store.delete(sub.log_name, group.name)

    async def seek(
        self, topic: TopicRef, subscription: str, position: StartPosition,
        partitions: Iterable[int] | None = None,
    ) -> dict[int, int]:
        """Move the cursor of every partition (or of ``partitions``) to ``position``.

        Acks above it are forgotten; undelivered messages queued at consumers
        are taken back.  Returns the offset used per partition (clamped to the
        stored range).
        """
        async with self._lock:
            group = self._require(topic, subscription)
            out: dict[int, int] = {}
            for n in self._select(group, partitions):
                sub = group.partitions[n]
                out[n] = await sub.reset(await self._resolve(group.topic, n, position))
            return out

    async def seek_timestamp(
        self, topic: TopicRef, subscription: str, timestamp_ms: int,
        partitions: Iterable[int] | None = None,
    ) -> dict[int, int]:
        """Seek each partition to the first message published at or after ``timestamp_ms``
        (the end when there is none)."""
        async with self._lock:
            group = self._require(topic, subscription)
            out: dict[int, int] = {}
            for n in self._select(group, partitions):
                found = await self.core.offset_for_timestamp(group.topic, n, timestamp_ms)
                if found is None:
                    found = await self.core.latest_offset(group.topic, n)
                out[n] = await group.partitions[n].reset(found)
            return out

    def set_filter(
        self, topic: TopicRef, subscription: str, filter: MessageFilter | None
    ) -> None:
        """Change the filter of a subscription with consumers (see
        :meth:`PartitionSubscription.set_filter`); an idle subscription takes the
        filter its next first consumer passes."""
        group = self._require(topic, subscription)
        for sub in group.partitions.values():
            if sub.dispatcher is not None:
                sub.set_filter(filter)

    async def purge(self, topic: TopicRef, subscription: str) -> int:
        """Drop every ready message on every partition; return how many
        (see :meth:`PartitionSubscription.purge`)."""
        async with self._lock:
            group = self._require(topic, subscription)
            return sum([await sub.purge() for sub in group.partitions.values()])

    async def drop_head(self, topic: TopicRef, subscription: str, keep: int) -> int:
        """Keep at most ``keep`` ready messages per partition, dropping the oldest;
        return how many went (see :meth:`PartitionSubscription.drop_head`)."""
        async with self._lock:
            group = self._require(topic, subscription)
            return sum([await sub.drop_head(keep) for sub in group.partitions.values()])

    @staticmethod
    def _select(group: TopicSubscription, partitions: Iterable[int] | None) -> list[int]:
        chosen = sorted(group.partitions) if partitions is None else sorted(set(partitions))
        missing = [n for n in chosen if n not in group.partitions]
        if missing:
            raise UnknownSubscription(f"{group.name!r} has no cursor on partitions {missing}")
        return chosen

    async def forget_topic(self, topic: TopicRef, partitions: int) -> int:
        """Close every subscription of a topic being deleted and delete its stored cursors
        on partitions ``0 .. partitions - 1`` (also those never loaded); return how many
        cursors were deleted.  For :meth:`core.api.Core.delete_topic`."""
        # No manager lock: the core calls this holding its own topic lock, which a
        # subscribe holding the manager lock may be waiting for.
        base = self.core.parse_topic(topic).base
        for key in [k for k in self._subs if k[0] == base]:
            group = self._subs.pop(key)
            for c in list(group.consumers):
                c.close("topic deleted")
            for sub in group.partitions.values():
                sub.close("topic deleted")
        deleted = 0
        for n in range(partitions):
            deleted += await self.store.delete_all(base.log_name(n))
        return deleted

    # ------------------------------------------------------------ restore, flush

    async def restore(self) -> int:
        """Load every stored cursor of every topic; return how many subscriptions."""
        async with self._lock:
            for topic in await self.core.topics.list_all():
                meta = await self.core.topics.get(topic)
                if meta is None:
                    continue
                for n in range(meta.partitions):
                    cursors = await self.store.load_all(topic.log_name(n))
                    for name, cursor in cursors.items():
                        group = self._subs.get((topic, name))
                        if group is None:
                            group = self._subs[(topic, name)] = TopicSubscription(
                                topic, name, True
                            )
                        if n not in group.partitions:
                            group.partitions[n] = self._make(topic, n, name, cursor, True)
            return len(self._subs)

    async def flush(self) -> None:
        """Wait until every cursor change so far is durable (see the package docstring).

        Every ack, nack-to-dead-letter or purge made before the call survives a
        crash of the process once this returns.
        """
        for group in list(self._subs.values()):
            if group.durable:
                for sub in group.partitions.values():
                    sub.persist()
        await self.store.flush()

    def close_all(self, reason: str = "shutting down") -> None:
        """Close every consumer (broker shutdown)."""
        for group in list(self._subs.values()):
            for c in list(group.consumers):
                c.close(reason)


@asynccontextmanager
async def open_subscription_manager(
    core: Core,
    store: CursorStore | None = None,
    *,
    clock_ms: Callable[[], int] | None = None,
    read_ahead: int = DEFAULT_READ_AHEAD,
    read_bytes: int = DEFAULT_READ_BYTES,
    max_delayed: int = DEFAULT_MAX_DELAYED,
) -> AsyncIterator[SubscriptionManager]:
    """A :class:`SubscriptionManager` with its tasks' nursery, restored from ``store``.

    ``clock_ms`` is the epoch-millisecond clock message expiry is judged by
    (pass the core's publish-time clock; default: the wall clock);
    ``read_ahead`` (messages) and ``read_bytes`` bound each subscription's
    read-ahead; ``max_delayed`` caps the delayed messages each subscription holds
    per partition (:mod:`core.subscriptions.delayed`).  On exit every consumer is
    closed and cursors are flushed.
    """
    async with trio.open_nursery() as nursery:
        manager = SubscriptionManager(
            core, nursery, store, clock_ms=clock_ms, read_ahead=read_ahead,
            read_bytes=read_bytes, max_delayed=max_delayed,
        )
        await manager.restore()
        try:
            yield manager
        finally:
            manager.close_all()
            nursery.cancel_scope.cancel()
            with trio.CancelScope(shield=True):
                await manager.flush()
