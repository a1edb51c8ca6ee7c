"""The Kafka protocol handler: settings, cluster identity, and one session per connection.

Settings (``[handlers.kafka]`` in the configuration file)::

    advertised_host = "kafka.example.com"  # default: the listener's bound host
                                           # (127.0.0.1 when bound to 0.0.0.0 / ::)
    advertised_port = 9092                 # default: the listener's bound port
    max_request_bytes = 104857600          # larger request frames close the connection
    max_in_flight = 16                     # requests queued per connection
    namespace = "public/default"           # where Kafka topics live (default: the core's)
    num_partitions = 1                     # partitions of auto-created topics
    sasl_mechanisms = ["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"]
                                           # SASL on every Kafka listener; [] (default): off

    [handlers.kafka.listeners.NAME]        # per listener (NAME as in [[listeners]])
    sasl_mechanisms = ["PLAIN"]            # overrides the handler-wide setting

With SASL on, a connection must authenticate (SaslHandshake v0 or v1, then PLAIN or SCRAM
against ``polystream users``) before anything but ApiVersions is served
(:mod:`handlers.kafka.sasl`).

The cluster id is created once and kept in the metadata store under ``kafka/cluster-id``, so
it survives restarts (clients compare it across metadata responses).
"""

from __future__ import annotations

import base64
import logging
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from typing import Any, ClassVar

import trio

from core.errors import CoreError
from core.handler import ConnectionInfo, HandlerContext, ListenerAddress, ProtocolHandler
from core.listeners import format_host_port
from core.names import NamespaceName
from core.topics import check_partition_count
from handlers.kafka.framing import DEFAULT_MAX_REQUEST_SIZE
from handlers.kafka.groups import GroupConfig, GroupCoordinator, install_coordinator
from handlers.kafka.sasl import KafkaSaslServer, parse_mechanisms
from handlers.kafka.service import ServiceContext
from handlers.kafka.service.txn_offset_commit import install_offset_committer
from handlers.kafka.session import DEFAULT_MAX_IN_FLIGHT, KafkaSession
from storage.api import MetadataStore, VersionConflictError

__all__ = ["CLUSTER_ID_KEY", "KafkaHandler", "KafkaSettings"]

log = logging.getLogger(__name__)

CLUSTER_ID_KEY = "kafka/cluster-id"
_WILDCARD_HOSTS = frozenset({"0.0.0.0", "::", ""})


@dataclass(frozen=True, slots=True)
class KafkaSettings:
    """The handler's settings (see the module docstring); :meth:`parse` validates them."""

    advertised_host: str | None = None
    advertised_port: int | None = None
    max_request_bytes: int = DEFAULT_MAX_REQUEST_SIZE
    max_in_flight: int = DEFAULT_MAX_IN_FLIGHT
    namespace: str | None = None
    num_partitions: int = 1
    sasl_mechanisms: tuple[str, ...] = ()
    listeners: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    """Listener name -> its own ``sasl_mechanisms``."""
    group_initial_rebalance_delay_ms: int = 0
    group_min_session_timeout_ms: int = 100
    group_max_session_timeout_ms: int = 1_800_000
    group_max_size: int = 1000

    def group_config(self) -> GroupConfig:
        """The consumer-group coordinator's limits (Kafka's ``group.*`` broker settings)."""
        return GroupConfig(
            min_session_timeout_ms=self.group_min_session_timeout_ms,
            max_session_timeout_ms=self.group_max_session_timeout_ms,
            initial_rebalance_delay_ms=self.group_initial_rebalance_delay_ms,
            max_members=self.group_max_size)

    def sasl_for(self, listener: str) -> tuple[str, ...]:
        """The SASL mechanisms enabled on ``listener`` (empty: SASL off)."""
        return self.listeners.get(listener, self.sasl_mechanisms)

    @classmethod
    def parse(cls, raw: dict[str, Any]) -> KafkaSettings:
        """Build settings from the ``[handlers.kafka]`` table; ValueError names a bad key."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(raw) - known)
        if unknown:
            raise ValueError(f"unknown kafka handler settings: {', '.join(unknown)}")
        for key in ("advertised_host", "namespace"):
            if key in raw and not isinstance(raw[key], str):
                raise ValueError(f"handlers.kafka.{key}: expected a string, got {raw[key]!r}")
        limits = {"advertised_port": (1, 65535), "max_request_bytes": (1, 0x7FFFFFFF),
                  "max_in_flight": (1, 10_000), "num_partitions": (1, 10_000),
                  "group_initial_rebalance_delay_ms": (0, 3_600_000),
                  "group_min_session_timeout_ms": (1, 3_600_000),
                  "group_max_session_timeout_ms": (1, 3_600_000),
                  "group_max_size": (1, 1_000_000)}
        for key, (low, high) in limits.items():
            if key not in raw:
                continue
            value = raw[key]
            if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
                raise ValueError(f"handlers.kafka.{key}: expected an integer in {low}..{high}, "
                                 f"got {value!r}")
        raw = dict(raw)
        if "sasl_mechanisms" in raw:
            raw["sasl_mechanisms"] = parse_mechanisms(raw["sasl_mechanisms"],
                                                      "handlers.kafka.sasl_mechanisms")
        if "listeners" in raw:
            raw["listeners"] = _parse_listener_settings(raw["listeners"])
        settings = cls(**raw)
        if settings.namespace is not None:
            NamespaceName.parse(settings.namespace)  # raises InvalidName (a ValueError)
        check_partition_count(settings.num_partitions)
        settings.group_config()  # raises ValueError for inconsistent group limits
        return settings


def _parse_listener_settings(raw: object) -> dict[str, tuple[str, ...]]:
    if not isinstance(raw, dict):
        raise ValueError(f"handlers.kafka.listeners: expected a table, got {raw!r}")
    out = {}
    for name, table in raw.items():
        where = f"handlers.kafka.listeners.{name}"
        if not isinstance(table, dict) or set(table) - {"sasl_mechanisms"}:
            raise ValueError(f"{where}: expected a table with only sasl_mechanisms, "
                             f"got {table!r}")
        out[str(name)] = parse_mechanisms(table.get("sasl_mechanisms", []),
                                          f"{where}.sasl_mechanisms")
    return out


class KafkaHandler(ProtocolHandler):
    """Serves the Kafka wire protocol: the APIs in :data:`handlers.kafka.apis.SUPPORTED_APIS`.

    Start-up installs the consumer-group coordinator for the core and runs its sweeper (session
    expiry of groups nobody talks to) in the handler's nursery.
    """

    name: ClassVar[str] = "kafka"
    default_port: ClassVar[int] = 9092

    def __init__(self) -> None:
        self.settings = KafkaSettings()
        self._context: HandlerContext | None = None
        self._base: ServiceContext | None = None
        self._by_listener: dict[str, ServiceContext] = {}

    async def start(self, context: HandlerContext) -> None:
        """Validate settings, load (or create) the cluster id, prepare the service context."""
        self.settings = settings = KafkaSettings.parse(context.settings)
        core = context.core
        namespace = settings.namespace or (
            f"{core.settings.default_tenant}/{core.settings.default_namespace}")
        try:
            await core.namespace_policies(namespace)
        except CoreError as exc:
            log.warning("kafka: namespace %s is not usable (%s): Kafka topics cannot be "
                        "created until it exists", namespace, exc)
        cluster_id = await load_cluster_id(core.storage.metadata)
        coordinator = GroupCoordinator(core.storage.metadata, settings.group_config())
        install_coordinator(core, coordinator)
        install_offset_committer(core)  # transactional offset commits go through the groups
        context.nursery.start_soon(coordinator.run)
        host, port = self._advertised(context.listeners[0] if context.listeners else None)
        self._context = context
        self._base = ServiceContext(
            core=core, namespace=namespace, cluster_id=cluster_id, advertised_host=host,
            advertised_port=port, num_partitions=settings.num_partitions,
            stopping=context.stopping)
        self._by_listener = {}
        for listener in context.listeners:
            if listener.name not in self._by_listener:  # a listener's first socket
                host, port = self._advertised(listener)
                self._by_listener[listener.name] = replace(
                    self._base, advertised_host=host, advertised_port=port)
        for name, ctx in self._by_listener.items():
            sasl = settings.sasl_for(name)
            log.info("kafka listener %s advertises %s (cluster id %s, namespace %s, SASL %s)",
                     name, format_host_port(ctx.advertised_host, ctx.advertised_port),
                     cluster_id, namespace, ", ".join(sasl) if sasl else "off")

    def _advertised(self, listener: ListenerAddress | None) -> tuple[str, int]:
        host = self.settings.advertised_host
        port = self.settings.advertised_port
        if host is None:
            bound = listener.host if listener is not None else "127.0.0.1"
            host = "127.0.0.1" if bound in _WILDCARD_HOSTS else bound
        if port is None:
            port = listener.port if listener is not None else self.default_port
        return host, port

    async def serve(self, stream: trio.abc.Stream, conn: ConnectionInfo) -> None:
        """Run a :class:`KafkaSession` on the connection until it ends."""
        if self._base is None:
            raise RuntimeError("KafkaHandler.serve() before start()")
        ctx = replace(self._by_listener.get(conn.listener, self._base), peer_host=conn.peer_host)
        mechanisms = self.settings.sasl_for(conn.listener)
        sasl = (KafkaSaslServer(mechanisms, peer_is_loopback=conn.peer_is_loopback)
                if mechanisms else None)
        session = KafkaSession(
            stream, ctx, peer=format_host_port(conn.peer_host, conn.peer_port),
            max_request_bytes=self.settings.max_request_bytes,
            max_in_flight=self.settings.max_in_flight, sasl=sasl)
        await session.run()


async def load_cluster_id(metadata: MetadataStore) -> str:
    """The cluster id stored under :data:`CLUSTER_ID_KEY`, created on first use.

    A new id is 16 random bytes in URL-safe base64 without padding (22 characters), the form
    Apache Kafka uses.
    """
    for _ in range(4):
        found = await metadata.get(CLUSTER_ID_KEY)
        if found is not None:
            return found.value.decode("ascii")
        new = base64.urlsafe_b64encode(uuid.uuid4().bytes).rstrip(b"=")
        try:
            await metadata.put(CLUSTER_ID_KEY, new, expected_version=0)
        except VersionConflictError:
            continue  # created concurrently: read it back
        return new.decode("ascii")
    raise RuntimeError(f"could not read or create {CLUSTER_ID_KEY}")
