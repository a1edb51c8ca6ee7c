"""The MQTT 3.1.1 / 5.0 protocol handler: settings, shared services, one session per connection.

Settings (``[handlers.mqtt]`` in the configuration file)::

    namespace = "public/default"   # where MQTT topics live (default: the core's default)
    max_packet_size = 2097152      # largest packet accepted (and advertised in CONNACK)
    receive_maximum = 100          # QoS 1/2 publications a client may have in flight to us
    topic_alias_maximum = 16       # inbound topic aliases per connection (0: none)
    max_session_expiry = 604800    # cap on the session expiry interval, seconds; also the
                                   # lifetime of a 3.1.1 "clean session = 0" session
    max_keepalive = 3600           # server keep alive cap, seconds (0: the client's value)
    allow_anonymous = false        # without it, CONNECT needs a user of ``polystream users``
                                   # (guest/guest works from loopback)
    connect_timeout = 10.0         # seconds to wait for CONNECT on a new connection
    topic_scan_interval = 2.0      # fallback rescan for + / # filters (new topics are announced)
    max_retained = 100000          # retained messages kept
    retained_store = "log"         # "log": a compacted core topic; "metadata": metadata store

MQTT topic ``a/b/c`` is stored in core topic ``a`` of the namespace with key ``a/b/c``
(``handlers.mqtt.topic_mapping``; topics are created on first publish when the core allows).
A publish is acknowledged only after the durable append.  See :mod:`handlers.mqtt.session`
for one connection, :mod:`handlers.mqtt.delivery` for subscriptions and
:mod:`handlers.mqtt.sessions` for persistent sessions.
"""

from __future__ import annotations

import logging
import time
import zlib
from collections.abc import Callable
from contextlib import suppress
from dataclasses import dataclass, fields
from typing import Any, ClassVar, NamedTuple, cast

import trio

from core.api import Core
from core.errors import CoreError, MessageTooLarge, UnknownTopic
from core.handler import ConnectionInfo, HandlerContext, ProtocolHandler
from core.names import NamespaceName, TopicName
from core.records import Message
from core.subscriptions import SubscriptionError, SubscriptionManager

from .delivery import TopicDirectory, core_subscription_name
from .framing import ABSOLUTE_MAX_PACKET_SIZE
from .mapping import publish_to_message
from .packets import Publish
from .retained import (
    DEFAULT_MAX_RETAINED,
    RETAINED_TOPIC,
    CompactedRetainedStore,
    MetadataRetainedStore,
    RetainedStore,
)
from .session import MqttSession
from .session_state import SessionState
from .sessions import NEVER_EXPIRES, SessionRegistry
from .topic_mapping import (
    AllTopics,
    Concrete,
    TopicNotMappable,
    filter_core_topics,
    mqtt_topic_to_core,
)
from .will import WillScheduler

__all__ = ["MqttContext", "MqttHandler", "MqttSettings", "StoredAt"]

log = logging.getLogger(__name__)


def _wall_ms() -> int:
    return time.time_ns() // 1_000_000


@dataclass(frozen=True, slots=True)
class MqttSettings:
    """The handler's settings (see the module docstring); :meth:`parse` validates them."""

    namespace: str | None = None
    max_packet_size: int = 2 * 1024 * 1024
    receive_maximum: int = 100
    topic_alias_maximum: int = 16
    max_session_expiry: int = 7 * 24 * 3600
    max_keepalive: int = 3600
    allow_anonymous: bool = False
    connect_timeout: float = 10.0
    topic_scan_interval: float = 2.0
    max_retained: int = DEFAULT_MAX_RETAINED
    retained_store: str = "log"

    @classmethod
    def parse(cls, raw: dict[str, Any]) -> MqttSettings:
        """Build settings from the ``[handlers.mqtt]`` table; ValueError names a bad key."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(raw) - known)
        if unknown:
            raise ValueError(f"unknown mqtt handler settings: {', '.join(unknown)}")
        if "namespace" in raw:
            if not isinstance(raw["namespace"], str):
                raise ValueError("handlers.mqtt.namespace: expected a string")
            NamespaceName.parse(raw["namespace"])
        if raw.get("retained_store", "log") not in ("log", "metadata"):
            raise ValueError("handlers.mqtt.retained_store: expected \"log\" or \"metadata\"")
        if "allow_anonymous" in raw and not isinstance(raw["allow_anonymous"], bool):
            raise ValueError("handlers.mqtt.allow_anonymous: expected true or false")
        ints = {"max_packet_size": (16, ABSOLUTE_MAX_PACKET_SIZE),
                "receive_maximum": (1, 65535), "topic_alias_maximum": (0, 65535),
                "max_session_expiry": (0, NEVER_EXPIRES), "max_keepalive": (0, 65535),
                "max_retained": (0, 10_000_000)}
        for key, (low, high) in ints.items():
            value = raw.get(key, low)
            if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
                raise ValueError(f"handlers.mqtt.{key}: expected an integer in {low}..{high}, "
                                 f"got {value!r}")
        for key in ("connect_timeout", "topic_scan_interval"):
            value = raw.get(key, 1.0)
            if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
                raise ValueError(f"handlers.mqtt.{key}: expected a positive number")
        return cls(**raw)


class StoredAt(NamedTuple):
    """Where an MQTT publish was stored (a tuple: one is built per message)."""

    core_topic: str
    partition: int
    offset: int


class MqttContext:
    """The services every MQTT connection of one handler shares."""

    def __init__(
        self,
        core: Core,
        namespace: NamespaceName,
        settings: MqttSettings,
        manager: SubscriptionManager,
        retained: RetainedStore,
        nursery: trio.Nursery,
        stopping: trio.Event,
        *,
        wall_ms: Callable[[], int] = _wall_ms,
    ) -> None:
        self.core = core
        self.namespace = namespace
        self.settings = settings
        self.manager = manager
        self.retained = retained
        self.stopping = stopping
        self.wall_ms = wall_ms
        self.directory = TopicDirectory(core, namespace, settings.topic_scan_interval)
        self.sessions = SessionRegistry(core.storage.metadata, nursery, self._discard,
                                        wall_ms=wall_ms)
        self.wills = WillScheduler(nursery, self._publish_will)
        #: QoS 0 messages dropped for slow clients (connections that ended)
        self.dropped_qos0 = 0
        self._names: dict[str, TopicName] = {}
        self._partitions: dict[str, int] = {}
        nursery.start_soon(self.directory.run)

    def topic_name(self, core_topic: str) -> TopicName:
        """The core topic ``core_topic`` of the MQTT namespace."""
        found = self._names.get(core_topic)
        if found is None:
            if len(self._names) > 100_000:
                self._names.clear()
            found = self._names[core_topic] = TopicName(
                self.namespace.tenant, self.namespace.namespace, core_topic)
        return found

    async def _partition_of(self, core_topic: str, key: bytes | None) -> tuple[TopicName, int]:
        name = self.topic_name(core_topic)
        partitions = self._partitions.get(core_topic)
        if partitions is None:
            info = await self.core.topic_metadata(name, create_if_missing=True)
            partitions = self._partitions[core_topic] = info.partitions
            self.directory.add(core_topic)
        return name, 0 if partitions == 1 else zlib.crc32(key or b"") % partitions

    async def store(self, publish: Publish) -> StoredAt:
        """Append an accepted PUBLISH to its core topic (durable on return); update retained.

        Raises :class:`~handlers.mqtt.topic_mapping.TopicNotMappable` and
        :class:`core.errors.CoreError`.
        """
        result = (await self.store_many([publish]))[0]
        if isinstance(result, Exception):
            raise result
        return result

    async def store_many(self, publishes: list[Publish]) -> list[StoredAt | Exception]:
        """Store several PUBLISH packets, one append per core partition (a shared fsync).

        Returns, per packet, where it was stored or the error that refused it
        (:class:`~handlers.mqtt.topic_mapping.TopicNotMappable`,
        :class:`core.errors.CoreError`); an append refused as a whole is retried one message
        at a time so that only the bad messages fail.
        """
        now = self.wall_ms()
        results: list[StoredAt | Exception | None] = [None] * len(publishes)
        groups: dict[tuple[str, int], tuple[TopicName, list[tuple[int, Message]]]] = {}
        built: dict[int, Message] = {}
        mapped: dict[str, tuple[str, bytes]] = {}  # a run of publishes often shares a topic
        for i, publish in enumerate(publishes):
            try:
                core_and_key = mapped.get(publish.topic)
                if core_and_key is None:
                    core_and_key = mapped[publish.topic] = mqtt_topic_to_core(publish.topic)
                core_topic, message = publish_to_message(publish, now, core_and_key)
                if core_topic == RETAINED_TOPIC:
                    raise TopicNotMappable(f"{RETAINED_TOPIC} is reserved for retained messages")
                if publish.retain:
                    built[i] = message
                if self._partitions.get(core_topic) == 1:  # no await on the hot path
                    partition = 0
                    group = groups.get((core_topic, 0))
                    if group is not None:
                        group[1].append((i, message))
                        continue
                    name = self.topic_name(core_topic)
                else:
                    name, partition = await self._partition_of(core_topic, message.key)
            except (TopicNotMappable, CoreError) as exc:
                results[i] = exc
                continue
            group = groups.get((core_topic, partition))
            if group is None:
                groups[(core_topic, partition)] = (name, [(i, message)])
            else:
                group[1].append((i, message))
        for (core_topic, partition), (name, items) in groups.items():
            await self._append(core_topic, name, partition, items, results)
        for i, message in built.items():
            result = results[i]
            if isinstance(result, StoredAt):
                await self.retained.set(publishes[i].topic, message)
        return cast("list[StoredAt | Exception]", results)  # every slot is filled by now

    async def _append(
        self, core_topic: str, name: TopicName, partition: int,
        items: list[tuple[int, Message]], results: list[StoredAt | Exception | None],
    ) -> None:
        messages = [m for _, m in items]
        try:
            try:
                appended = await self.core.append_messages(name, partition, messages)
            except UnknownTopic:  # deleted since we looked (partition counts may change too)
                self._partitions.pop(core_topic, None)
                self.directory.forget(core_topic)
                retry_name, retry_partition = await self._partition_of(
                    core_topic, messages[0].key)
                if (retry_name, retry_partition) != (name, partition):
                    raise
                appended = await self.core.append_messages(name, partition, messages)
        except CoreError as exc:
            if len(items) == 1:
                results[items[0][0]] = exc
                return
            if isinstance(exc, MessageTooLarge):
                # too big together: halves, so that only a message too big alone fails (one
                # append per message here would cost an fsync each)
                half = len(items) // 2
                await self._append(core_topic, name, partition, items[:half], results)
                await self._append(core_topic, name, partition, items[half:], results)
                return
            for item in items:
                await self._append(core_topic, name, partition, [item], results)
            return
        for n, (i, _) in enumerate(items):
            results[i] = StoredAt(core_topic, partition, appended.base_offset + n)

    async def _publish_will(self, client_id: str, publish: Publish) -> None:
        await self.store(publish)

    async def _discard(self, state: SessionState[Any]) -> None:
        """A session ended: publish its pending will, delete its core subscriptions."""
        self.wills.session_ended(state.client_id)
        topics: set[str] = set()
        if any(isinstance(filter_core_topics(f), AllTopics) for f in state.subscriptions):
            await self.directory.refresh()
            topics |= self.directory.topics
        for f in state.subscriptions:
            span = filter_core_topics(f)
            if isinstance(span, Concrete):
                topics.add(span.name)
        name = core_subscription_name(state.client_id)
        for topic in topics:
            ref = self.topic_name(topic)
            if self.manager.get(ref, name) is not None:
                with suppress(SubscriptionError, CoreError):
                    await self.manager.unsubscribe(ref, name, force=True)


class MqttHandler(ProtocolHandler):
    """Serves MQTT 3.1.1 and 5.0 clients on the core."""

    name: ClassVar[str] = "mqtt"
    default_port: ClassVar[int] = 1883

    def __init__(self) -> None:
        self.settings = MqttSettings()
        self.context: MqttContext | None = None

    async def start(self, context: HandlerContext) -> None:
        """Validate settings; open the subscription manager, retained store and sessions."""
        self.settings = MqttSettings.parse(context.settings)
        self.context = await context.nursery.start(self._run_services, context)

    async def _run_services(
        self, context: HandlerContext, *, task_status: trio.TaskStatus[MqttContext]
    ) -> None:
        core = context.core
        settings = self.settings
        namespace = NamespaceName.parse(settings.namespace or (
            f"{core.settings.default_tenant}/{core.settings.default_namespace}"))
        try:
            await core.namespace_policies(namespace)
        except CoreError as exc:
            log.warning("mqtt: namespace %s is not usable (%s)", namespace, exc)
        retained: RetainedStore
        if settings.retained_store == "metadata":
            retained = MetadataRetainedStore(core.storage.metadata, settings.max_retained)
        else:
            topic = TopicName(namespace.tenant, namespace.namespace, RETAINED_TOPIC)
            retained = CompactedRetainedStore(core, topic, settings.max_retained)
        async with trio.open_nursery() as nursery:
            ctx = MqttContext(core, namespace, settings, core.subscriptions, retained, nursery,
                              context.stopping)
            count = await retained.load()
            sessions = await ctx.sessions.load()
            log.info("mqtt: namespace %s, %d retained message(s), %d stored session(s)",
                     namespace, count, sessions)
            task_status.started(ctx)
            await trio.sleep_forever()

    async def serve(self, stream: trio.abc.Stream, conn: ConnectionInfo) -> None:
        """Run one :class:`~handlers.mqtt.session.MqttSession` until the connection ends."""
        if self.context is None:
            raise RuntimeError("MqttHandler.serve() before start()")
        await MqttSession(stream, self.context, conn).run()
