"""The core API that protocol handlers receive (``HandlerContext.core``).

Open it with :func:`open_core`; it owns a nursery running the periodic
retention task.  Topic arguments are strings in any spelling that
:meth:`core.names.TopicName.parse` accepts (``"orders"``,
``"persistent://public/default/orders"``) or :class:`TopicName` objects;
partitions are numbered from 0.  A ``-partition-N`` suffix in a name selects
the topic (and must name an existing partition); the ``partition`` argument
of the data-path calls is what selects the partition.

The hot path (:meth:`Core.append`, :meth:`Core.read`) costs one dict lookup to
reach the partition: resolved topics are cached under the exact key the
caller passed.

Every error is a :class:`core.errors.CoreError` subclass; handlers map them to
their wire error codes.

Producers: batches carrying a producer id are deduplicated per partition
(:mod:`core.dedup`, state persisted by :mod:`core.producers`), as Kafka does for
idempotent producers, whatever the namespace's ``deduplication`` policy;
:meth:`Core.allocate_producer_id` hands out ids and :meth:`Core.open_producer`
grants access modes with fencing (:mod:`core.exclusive`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from typing import Any

import trio

from core.batch import built_batch, split_batches
from core.compaction import compact_due_topics, compactor_for
from core.config import CoreSettings
from core.entry_cache import RecentEntries
from core.errors import InvalidPartitionCount, InvalidTopicName, UnknownPartition, UnknownTopic
from core.exclusive import AccessMode, ProducerAccess, ProducerHandle
from core.names import NamespaceName, TopicName
from core.namespaces import (
    EffectivePolicies,
    NamespacePolicies,
    NamespaceStore,
    TopicPolicies,
    resolve_policies,
)
from core.partition import AppendResult, Partition, ReadEntry
from core.producers import ProducerIdAllocator, ProducerStateStore
from core.records import FreshBatches, Message, build_plain_batch
from core.subscriptions import SubscriptionManager, open_subscription_manager
from core.topics import TopicMetadata, TopicStore, check_partition_count
from core.transactions.coordinator import TransactionCoordinator, open_transactions
from core.users import UserStore
from storage.api import Storage

__all__ = [
    "AccessMode", "AppendResult", "Core", "OpenTopic", "ProducerHandle", "ReadEntry",
    "TopicInfo", "TopicRef", "open_core",
]

log = logging.getLogger(__name__)

TopicRef = str | TopicName


def wall_clock_ms() -> int:
    """Milliseconds since the epoch (the broker publish-time clock)."""
    return time.time_ns() // 1_000_000


@dataclass(frozen=True, slots=True)
class TopicInfo:
    """A topic's name, partition count and resolved policies."""

    name: TopicName
    partitions: int
    policies: EffectivePolicies


class OpenTopic:
    """A topic whose partitions are open (the value of the core's topic cache)."""

    __slots__ = ("meta", "name", "partitions", "policies")

    def __init__(
        self, name: TopicName, meta: TopicMetadata, policies: EffectivePolicies,
        partitions: list[Partition],
    ) -> None:
        self.name = name
        self.meta = meta
        self.policies = policies
        self.partitions = partitions

    @property
    def info(self) -> TopicInfo:
        return TopicInfo(self.name, len(self.partitions), self.policies)


class Core:
    """Topics, namespaces and the append/read path; see the module docstring."""

    #: subscriptions and consumers of every topic (set by :func:`open_core`)
    subscriptions: SubscriptionManager
    #: the transaction coordinator (set by :func:`open_core`)
    transactions: TransactionCoordinator

    def __init__(
        self, storage: Storage, settings: CoreSettings, clock_ms: Callable[[], int] = wall_clock_ms
    ) -> None:
        self.storage = storage
        self.settings = settings
        self.users = UserStore(storage.metadata, settings.guest_loopback_only)
        self.namespaces = NamespaceStore(storage.metadata)
        self.topics = TopicStore(storage.metadata)
        self._clock_ms = clock_ms
        self._cache: dict[TopicRef, OpenTopic] = {}
        self._open: dict[TopicName, OpenTopic] = {}
        self._load_lock = trio.Lock()
        self.producer_states = ProducerStateStore(storage.metadata)
        self._producer_ids = ProducerIdAllocator(storage.metadata)
        self._producer_access = ProducerAccess(storage.metadata)
        #: recently appended plain messages, so that subscriptions skip decoding them
        self.fresh = FreshBatches()
        #: recently appended log entries as readers see them (no metadata decode)
        self.recent_entries: RecentEntries[ReadEntry] = RecentEntries()
        self._topic_generation = 0
        self._topics_changed = trio.Event()

    # ---------------------------------------------------------------- names

    def parse_topic(self, topic: TopicRef) -> TopicName:
        """Resolve any accepted spelling in the default tenant/namespace."""
        if isinstance(topic, TopicName):
            return topic
        return TopicName.parse(
            topic, self.settings.default_tenant, self.settings.default_namespace
        )

    def _parse_namespace(self, ns: str | NamespaceName | None) -> NamespaceName:
        if ns is None:
            return NamespaceName(self.settings.default_tenant, self.settings.default_namespace)
        return ns if isinstance(ns, NamespaceName) else NamespaceName.parse(ns)

    # ---------------------------------------------------------------- topics

    async def _topic(self, topic: TopicRef, create: bool = False) -> OpenTopic:
        found = self._cache.get(topic)
        if found is not None:
            return found
        parsed = self.parse_topic(topic)
        name = parsed.base
        async with self._load_lock:
            opened = self._open.get(name)
            if opened is None:
                opened = await self._load(name, create)
            if parsed.partition is not None and parsed.partition >= len(opened.partitions):
                raise UnknownPartition(f"{name} has no partition {parsed.partition}")
            self._cache[topic] = opened
            return opened

    async def _load(self, name: TopicName, create: bool) -> OpenTopic:
        meta = await self.topics.get(name)
        if meta is None:
            if not (create and self.settings.auto_create_topics):
                raise UnknownTopic(str(name))
            return await self._create(name, TopicMetadata(1))
        return await self._open_topic(name, meta)

    async def _create(self, name: TopicName, meta: TopicMetadata) -> OpenTopic:
        await self.topics.create(name, meta)
        # a crash during an earlier delete may have left logs behind: start empty
        for n in range(meta.partitions):
            await self.storage.delete_log(name.log_name(n))
            await self.producer_states.delete(name.log_name(n))
        await compactor_for(self).drop(name, meta.partitions)
        opened = await self._open_topic(name, meta)
        self._topic_list_changed()
        return opened

    async def _open_topic(self, name: TopicName, meta: TopicMetadata) -> OpenTopic:
        ns_policies = await self.namespaces.get_policies(name.namespace_name)
        policies = resolve_policies(self.settings, ns_policies, meta.policies)
        partitions = [
            await Partition.open(name, n, await self.storage.open_log(name.log_name(n)),
                                 self.producer_states, self.storage.metadata)
            for n in range(meta.partitions)
        ]
        for p in partitions:
            p.fresh = self.fresh
            p.recent = self.recent_entries
        opened = self._open[name] = OpenTopic(name, meta, policies, partitions)
        return opened

    async def _partition(self, topic: TopicRef, partition: int) -> Partition:
        found = self._cache.get(topic)
        if found is None:
            found = await self._topic(topic)
        if 0 <= partition < len(found.partitions):
            return found.partitions[partition]
        raise UnknownPartition(f"{found.name} has no partition {partition}")

    async def create_topic(
        self, topic: TopicRef, partitions: int = 1, policies: TopicPolicies | None = None
    ) -> TopicInfo:
        """Create a topic with ``partitions`` partitions (raises TopicAlreadyExists)."""
        name = self.parse_topic(topic)
        if name.partition is not None:
            raise InvalidTopicName(f"cannot create a partition on its own: {name}")
        check_partition_count(partitions)
        meta = TopicMetadata(partitions, policies or TopicPolicies())
        async with self._load_lock:
            return (await self._create(name, meta)).info

    async def topic_metadata(
        self, topic: TopicRef, *, create_if_missing: bool = False
    ) -> TopicInfo:
        """Partitions and policies of a topic.

        With ``create_if_missing`` and ``CoreSettings.auto_create_topics``, a
        missing topic is created with one partition; otherwise :class:`UnknownTopic`.
        """
        return (await self._topic(topic, create_if_missing)).info

    async def list_topics(self, namespace: str | NamespaceName | None = None) -> list[TopicInfo]:
        """Topics of a namespace (default: the default namespace)."""
        ns = self._parse_namespace(namespace)
        ns_policies = await self.namespaces.get_policies(ns)
        return [
            TopicInfo(name, meta.partitions, resolve_policies(self.settings, ns_policies,
                                                              meta.policies))
            for name, meta in await self.topics.list_in(ns)
        ]

    async def add_partitions(self, topic: TopicRef, total: int) -> TopicInfo:
        """Grow a topic to ``total`` partitions (never shrinks)."""
        opened = await self._topic(topic)
        if total < len(opened.partitions):
            raise InvalidPartitionCount("partitions can be added, not removed")
        async with self._load_lock:
            meta = await self.topics.update(opened.name, lambda m: replace(m, partitions=total))
            for n in range(len(opened.partitions), meta.partitions):
                log_ = await self.storage.open_log(opened.name.log_name(n))
                added = await Partition.open(opened.name, n, log_, self.producer_states)
                added.fresh = self.fresh
                added.recent = self.recent_entries
                opened.partitions.append(added)
            opened.meta = meta
            return opened.info

    async def delete_topic(self, topic: TopicRef) -> None:
        """Delete a topic, its partitions' logs and data; waiters get UnknownTopic."""
        name = self.parse_topic(topic).base
        async with self._load_lock:
            meta = await self.topics.get(name)
            if meta is None:
                raise UnknownTopic(str(name))
            opened = self._open.pop(name, None)
            self._forget(name)
            if opened is not None:
                for p in opened.partitions:
                    p.close()
            # logs first: a crash in between leaves an empty topic, not orphaned data
            for n in range(meta.partitions):
                await self.storage.delete_log(name.log_name(n))
                await self.producer_states.delete(name.log_name(n))
            await compactor_for(self).drop(name, meta.partitions)
            await self.subscriptions.forget_topic(name, meta.partitions)
            await self.topics.delete(name)
            self._topic_list_changed()
            log.info("deleted topic %s (%d partitions)", name, meta.partitions)

    @property
    def topic_generation(self) -> int:
        """A counter that grows each time a topic is created or deleted (in any namespace)."""
        return self._topic_generation

    async def wait_topics_changed(self, after_generation: int) -> int:
        """Wait until a topic was created or deleted since :attr:`topic_generation` was
        ``after_generation``; return the generation now.

        Read the generation *before* looking at the topics (e.g. :meth:`list_topics`) and pass
        it here: a change made in between is not missed.  Wrap in ``move_on_after`` to bound it.
        """
        while self._topic_generation <= after_generation:
            await self._topics_changed.wait()
        return self._topic_generation

    def _topic_list_changed(self) -> None:
        self._topic_generation += 1
        self._topics_changed.set()
        self._topics_changed = trio.Event()

    def _forget(self, name: TopicName) -> None:
        for key in [k for k, v in self._cache.items() if v.name == name]:
            del self._cache[key]

    # ---------------------------------------------------------------- policies

    async def set_topic_policies(self, topic: TopicRef, **values: Any) -> TopicInfo:
        """Set per-topic overrides: ``retention_ms``, ``retention_bytes``, ``max_message_bytes``."""
        opened = await self._topic(topic)
        meta = await self.topics.set_policies(opened.name, **values)
        ns_policies = await self.namespaces.get_policies(opened.name.namespace_name)
        opened.meta = meta
        opened.policies = resolve_policies(self.settings, ns_policies, meta.policies)
        return opened.info

    async def set_namespace_policies(
        self, namespace: str | NamespaceName, **values: Any
    ) -> NamespacePolicies:
        """Set namespace policies by field name (see :class:`NamespacePolicies`)."""
        ns = self._parse_namespace(namespace)
        new = await self.namespaces.set_policies(ns, **values)
        for opened in self._open.values():
            if opened.name.namespace_name == ns:
                opened.policies = resolve_policies(self.settings, new, opened.meta.policies)
        return new

    async def namespace_policies(self, namespace: str | NamespaceName) -> NamespacePolicies:
        return await self.namespaces.get_policies(self._parse_namespace(namespace))

    async def create_tenant(self, tenant: str) -> None:
        await self.namespaces.create_tenant(tenant)

    async def delete_tenant(self, tenant: str) -> None:
        """Delete a tenant without namespaces (TenantNotEmpty otherwise)."""
        await self.namespaces.delete_tenant(tenant)

    async def list_tenants(self) -> list[str]:
        return await self.namespaces.list_tenants()

    async def create_namespace(
        self, namespace: str | NamespaceName, policies: NamespacePolicies | None = None
    ) -> NamespaceName:
        ns = self._parse_namespace(namespace)
        await self.namespaces.create_namespace(ns, policies)
        return ns

    async def delete_namespace(self, namespace: str | NamespaceName) -> None:
        """Delete a namespace without topics (NamespaceNotEmpty otherwise)."""
        async with self._load_lock:
            await self.namespaces.delete_namespace(self._parse_namespace(namespace))

    async def list_namespaces(self, tenant: str) -> list[NamespaceName]:
        return await self.namespaces.list_namespaces(tenant)

    # ---------------------------------------------------------------- data path

    async def append(
        self, topic: TopicRef, partition: int, batches: bytes | bytearray | memoryview,
        *, allow_control: bool = False,
    ) -> AppendResult:
        """Validate and append one or more v2 record batches (a concatenation).

        Returns once the entries are durable per the storage policy.  Invalid
        input raises (CorruptBatch, MessageTooLarge, ...) and stores nothing.
        """
        found = self._cache.get(topic)
        if found is None:
            found = await self._topic(topic)
        if not 0 <= partition < len(found.partitions):
            raise UnknownPartition(f"{found.name} has no partition {partition}")
        validated = split_batches(batches, found.policies.max_message_bytes,
                                  allow_control=allow_control)
        return await found.partitions[partition].append(validated, self._clock_ms())

    async def _append_checked(
        self, topic: TopicRef, partition: int, batches: bytes | bytearray | memoryview,
        check: Callable[[], None],
    ) -> AppendResult:
        """:meth:`append` that calls ``check`` with no checkpoint before offset assignment."""
        found = self._cache.get(topic)
        if found is None:
            found = await self._topic(topic)
        if not 0 <= partition < len(found.partitions):
            raise UnknownPartition(f"{found.name} has no partition {partition}")
        check()
        validated = split_batches(batches, found.policies.max_message_bytes)
        return await found.partitions[partition].append(validated, self._clock_ms())

    async def append_messages(
        self, topic: TopicRef, partition: int, messages: Iterable[Message], compression: int = 0
    ) -> AppendResult:
        """Encode neutral messages as one batch and append it (AMQP/MQTT publish path)."""
        listed = list(messages)  # ours: the caller may reuse its list
        batch, plain = build_plain_batch(listed, compression)
        found = self._cache.get(topic)
        if found is None:
            found = await self._topic(topic)
        if not 0 <= partition < len(found.partitions):
            raise UnknownPartition(f"{found.name} has no partition {partition}")
        validated = built_batch(batch, found.policies.max_message_bytes)
        return await found.partitions[partition].append(
            validated, self._clock_ms(), messages=listed if plain else None
        )

    async def read(
        self, topic: TopicRef, partition: int, offset: int, max_bytes: int
    ) -> list[ReadEntry]:
        """Stored batches from the one holding ``offset`` while they fit ``max_bytes``.

        Returns at least one entry when ``offset`` is below the high watermark;
        ``[]`` at the high watermark; raises :class:`OffsetOutOfRange` otherwise.
        """
        return await (await self._partition(topic, partition)).read(offset, max_bytes)

    async def wait_for_data(self, topic: TopicRef, partition: int, offset: int) -> None:
        """Return once the high watermark is above ``offset``; wrap in ``move_on_after``."""
        await (await self._partition(topic, partition)).wait_for_data(offset)

    async def earliest_offset(self, topic: TopicRef, partition: int) -> int:
        """First offset still stored (the high watermark when nothing is)."""
        return await (await self._partition(topic, partition)).earliest_offset()

    async def latest_offset(self, topic: TopicRef, partition: int) -> int:
        """The high watermark: one past the last acknowledged offset."""
        return (await self._partition(topic, partition)).high_watermark

    async def offset_for_timestamp(
        self, topic: TopicRef, partition: int, timestamp_ms: int
    ) -> int | None:
        """First offset of the first batch published at or after ``timestamp_ms``.

        Uses the broker publish time, not the records' own timestamps.  None when
        no such batch exists.
        """
        return await (await self._partition(topic, partition)).offset_for_timestamp(timestamp_ms)

    # ---------------------------------------------------------------- producers

    async def allocate_producer_id(self) -> int:
        """A producer id never handed out before, by this broker or an earlier run."""
        return await self._producer_ids.allocate()

    @asynccontextmanager
    async def open_producer(
        self, topic: TopicRef, access_mode: AccessMode = AccessMode.SHARED,
        name: str | None = None,
    ) -> AsyncIterator[ProducerHandle]:
        """Open a producer on an existing topic with an access mode (see :mod:`core.exclusive`).

        Raises ProducerBusy when the mode cannot be granted; ``WAIT_FOR_EXCLUSIVE``
        waits instead (bound it with ``trio.move_on_after``).  Access is released
        on exit; appends through the handle raise ProducerFenced once fenced.
        """
        opened = await self._topic(topic)
        handle = ProducerHandle(self, self._producer_access, opened.name, topic, access_mode,
                                name or f"producer-{await self.allocate_producer_id()}")
        await self._producer_access.acquire(handle)
        try:
            yield handle
        finally:
            self._producer_access.release(handle)

    # ---------------------------------------------------------------- retention

    async def apply_retention(self) -> int:
        """Apply every topic's retention policy once; return entries dropped."""
        dropped = 0
        now = self._clock_ms()
        for name in await self.topics.list_all():
            try:
                opened = await self._topic(name)
            except UnknownTopic:
                continue  # deleted meanwhile
            for p in list(opened.partitions):
                dropped += await p.apply_retention(opened.policies.retention, now)
        return dropped

    async def _retention_loop(self) -> None:
        interval = self.settings.retention_check_interval_ms / 1000
        while True:
            await trio.sleep(interval)
            try:
                # compaction first: retention may drop records the view has not taken yet
                await compact_due_topics(self)
                dropped = await self.apply_retention()
            except Exception:
                log.exception("retention pass failed")
            else:
                if dropped:
                    log.info("retention dropped %d entries", dropped)

    async def _close(self) -> None:
        for opened in self._open.values():
            for p in opened.partitions:
                p.close()
        self._open.clear()
        self._cache.clear()
        await self.storage.metadata.flush()


@asynccontextmanager
async def open_core(
    storage: Storage, settings: CoreSettings, *, clock_ms: Callable[[], int] = wall_clock_ms
) -> AsyncIterator[Core]:
    """Open the core on ``storage``: defaults created, retention task running.

    ``clock_ms`` is the broker publish-time clock (epoch ms); tests pass a fake.
    """
    core = Core(storage, settings, clock_ms)
    await core.namespaces.ensure_defaults(settings)
    await core.users.ensure_default_guest()
    async with trio.open_nursery() as nursery:
        if settings.retention_check_interval_ms > 0:
            nursery.start_soon(core._retention_loop)
        try:
            async with open_subscription_manager(core, clock_ms=clock_ms) as subscriptions:
                core.subscriptions = subscriptions
                async with open_transactions(core) as transactions:
                    core.transactions = transactions
                    yield core
        finally:
            nursery.cancel_scope.cancel()
            with trio.CancelScope(shield=True):
                await core._close()
