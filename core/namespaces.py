"""Tenants, namespaces and their policies, kept in the metadata store.

Metadata keys (values are JSON objects, updated with compare-and-set)::

    core/tenants/<tenant>                 {}
    core/namespaces/<tenant>/<namespace>  NamespacePolicies as JSON

The ``public`` tenant and the ``public/default`` namespace (or whatever
``CoreSettings.default_tenant``/``default_namespace`` name) always exist: they are
created at core start when missing.

A policy set to ``None`` inherits: topic override -> namespace policy ->
``CoreSettings``.  For retention, ``-1`` means unlimited.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields, replace
from typing import Any, TypeVar

from core.config import CoreSettings
from core.errors import (
    InvalidPolicy,
    NamespaceAlreadyExists,
    NamespaceNotEmpty,
    TenantAlreadyExists,
    TenantNotEmpty,
    UnknownNamespace,
    UnknownTenant,
)
from core.names import NamespaceName, check_tenant
from storage.api import MetadataStore, RetentionPolicy, VersionConflictError

TENANTS_PREFIX = "core/tenants/"
NAMESPACES_PREFIX = "core/namespaces/"
TOPICS_PREFIX = "core/topics/"
_CAS_ATTEMPTS = 16
T = TypeVar("T")


def _check_int(name: str, value: Any, minimum: int) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise InvalidPolicy(f"{name} must be an integer >= {minimum}, got {value!r}")


@dataclass(frozen=True, slots=True)
class NamespacePolicies:
    """Policies of one namespace; ``None`` inherits from ``CoreSettings``.

    ``retention_ms``/``retention_bytes``: -1 keeps data forever / unbounded.
    ``message_ttl_ms``: unacknowledged messages older than this are expired by
    subscriptions (0 or None: never).  ``deduplication``: idempotent-producer
    dedup on by default for the namespace's topics.  ``max_message_bytes``: the
    largest entry (record batch) accepted.  ``compacted``: the periodic task keeps a
    compacted view (latest value per key, see :mod:`core.compaction`) of the topics.
    """

    retention_ms: int | None = None
    retention_bytes: int | None = None
    message_ttl_ms: int | None = None
    deduplication: bool = False
    max_message_bytes: int | None = None
    compacted: bool = False

    def __post_init__(self) -> None:
        _check_int("retention_ms", self.retention_ms, -1)
        _check_int("retention_bytes", self.retention_bytes, -1)
        _check_int("message_ttl_ms", self.message_ttl_ms, 0)
        _check_int("max_message_bytes", self.max_message_bytes, 1)
        if not isinstance(self.deduplication, bool):
            raise InvalidPolicy(f"deduplication must be a boolean, got {self.deduplication!r}")
        if not isinstance(self.compacted, bool):
            raise InvalidPolicy(f"compacted must be a boolean, got {self.compacted!r}")

    def to_json(self) -> bytes:
        return json.dumps(asdict(self), sort_keys=True).encode()

    @classmethod
    def from_json(cls, data: bytes) -> NamespacePolicies:
        return _from_json(cls, data)


@dataclass(frozen=True, slots=True)
class TopicPolicies:
    """Per-topic overrides; ``None`` inherits from the namespace."""

    retention_ms: int | None = None
    retention_bytes: int | None = None
    max_message_bytes: int | None = None
    compacted: bool | None = None

    def __post_init__(self) -> None:
        _check_int("retention_ms", self.retention_ms, -1)
        _check_int("retention_bytes", self.retention_bytes, -1)
        _check_int("max_message_bytes", self.max_message_bytes, 1)
        if self.compacted is not None and not isinstance(self.compacted, bool):
            raise InvalidPolicy(f"compacted must be a boolean, got {self.compacted!r}")


def _from_json(cls: type[T], data: bytes | dict[str, Any]) -> T:
    raw = json.loads(data) if isinstance(data, bytes | bytearray) else data
    if not isinstance(raw, dict):
        raise InvalidPolicy(f"policies must be a JSON object, got {raw!r}")
    known = {f.name for f in fields(cls)}  # type: ignore[arg-type]
    return cls(**{k: v for k, v in raw.items() if k in known})


def policies_from_dict(cls: type[T], raw: dict[str, Any]) -> T:
    """Build ``cls`` (a policies class) from a dict, rejecting unknown keys."""
    known = {f.name for f in fields(cls)}  # type: ignore[arg-type]
    unknown = set(raw) - known
    if unknown:
        raise InvalidPolicy(f"unknown policies: {', '.join(sorted(unknown))}")
    return cls(**raw)


@dataclass(frozen=True, slots=True)
class EffectivePolicies:
    """The resolved policies of one topic."""

    retention: RetentionPolicy
    max_message_bytes: int
    message_ttl_ms: int | None
    deduplication: bool
    compacted: bool = False


def resolve_policies(
    settings: CoreSettings, namespace: NamespacePolicies, topic: TopicPolicies | None = None
) -> EffectivePolicies:
    """Combine topic overrides, namespace policies and core defaults."""
    topic = topic or TopicPolicies()

    def pick(topic_value: int | None, ns_value: int | None, default: int) -> int:
        if topic_value is not None:
            return topic_value
        return ns_value if ns_value is not None else default

    retention_ms = pick(topic.retention_ms, namespace.retention_ms, settings.retention_ms)
    retention_bytes = pick(
        topic.retention_bytes, namespace.retention_bytes, settings.retention_bytes
    )
    return EffectivePolicies(
        retention=RetentionPolicy(
            max_age_ms=None if retention_ms < 0 else retention_ms,
            max_bytes=None if retention_bytes < 0 else retention_bytes,
        ),
        max_message_bytes=pick(
            topic.max_message_bytes, namespace.max_message_bytes, settings.max_message_bytes
        ),
        message_ttl_ms=namespace.message_ttl_ms or None,
        deduplication=namespace.deduplication,
        compacted=namespace.compacted if topic.compacted is None else topic.compacted,
    )


def _tenant_key(tenant: str) -> str:
    return f"{TENANTS_PREFIX}{tenant}"


def _namespace_key(ns: NamespaceName) -> str:
    return f"{NAMESPACES_PREFIX}{ns.tenant}/{ns.namespace}"


class NamespaceStore:
    """Create, list, delete and update tenants and namespaces in the metadata store."""

    def __init__(self, metadata: MetadataStore) -> None:
        self._md = metadata

    async def ensure_defaults(self, settings: CoreSettings) -> None:
        """Create the default tenant and namespace when they do not exist."""
        ns = NamespaceName(settings.default_tenant, settings.default_namespace)
        with contextlib.suppress(TenantAlreadyExists):
            await self.create_tenant(ns.tenant)
        with contextlib.suppress(NamespaceAlreadyExists):
            await self.create_namespace(ns)

    # tenants

    async def create_tenant(self, tenant: str) -> None:
        """Create a tenant; raise :class:`TenantAlreadyExists` if it exists."""
        check_tenant(tenant)
        try:
            await self._md.put(_tenant_key(tenant), b"{}", expected_version=0)
        except VersionConflictError:
            raise TenantAlreadyExists(tenant) from None

    async def tenant_exists(self, tenant: str) -> bool:
        return await self._md.get(_tenant_key(tenant)) is not None

    async def list_tenants(self) -> list[str]:
        return [k.removeprefix(TENANTS_PREFIX) for k, _ in await self._md.list(TENANTS_PREFIX)]

    async def delete_tenant(self, tenant: str) -> None:
        """Delete an empty tenant (:class:`TenantNotEmpty` while it has namespaces)."""
        if not await self.tenant_exists(tenant):
            raise UnknownTenant(tenant)
        if await self._md.list(f"{NAMESPACES_PREFIX}{tenant}/"):
            raise TenantNotEmpty(f"tenant {tenant!r} still has namespaces")
        await self._md.delete(_tenant_key(tenant))

    # namespaces

    async def create_namespace(
        self, ns: NamespaceName, policies: NamespacePolicies | None = None
    ) -> None:
        """Create a namespace in an existing tenant."""
        if not await self.tenant_exists(ns.tenant):
            raise UnknownTenant(ns.tenant)
        value = (policies or NamespacePolicies()).to_json()
        try:
            await self._md.put(_namespace_key(ns), value, expected_version=0)
        except VersionConflictError:
            raise NamespaceAlreadyExists(str(ns)) from None

    async def list_namespaces(self, tenant: str) -> list[NamespaceName]:
        if not await self.tenant_exists(tenant):
            raise UnknownTenant(tenant)
        prefix = f"{NAMESPACES_PREFIX}{tenant}/"
        records = await self._md.list(prefix)
        return [NamespaceName(tenant, k.removeprefix(prefix)) for k, _ in records]

    async def get_policies(self, ns: NamespaceName) -> NamespacePolicies:
        """The namespace's policies; :class:`UnknownNamespace` when it does not exist."""
        record = await self._md.get(_namespace_key(ns))
        if record is None:
            raise UnknownNamespace(str(ns))
        return NamespacePolicies.from_json(record.value)

    async def update_policies(
        self, ns: NamespaceName, change: Callable[[NamespacePolicies], NamespacePolicies]
    ) -> NamespacePolicies:
        """Apply ``change`` to the stored policies with compare-and-set; return the result."""
        key = _namespace_key(ns)
        for _ in range(_CAS_ATTEMPTS):
            record = await self._md.get(key)
            if record is None:
                raise UnknownNamespace(str(ns))
            new = change(NamespacePolicies.from_json(record.value))
            try:
                await self._md.put(key, new.to_json(), expected_version=record.version)
            except VersionConflictError:
                continue
            return new
        raise VersionConflictError(key, None, None)

    async def set_policies(self, ns: NamespaceName, **values: Any) -> NamespacePolicies:
        """Set some policies (by field name), keeping the others."""
        policies_from_dict(NamespacePolicies, values)  # validates names and values
        return await self.update_policies(ns, lambda old: replace(old, **values))

    async def delete_namespace(self, ns: NamespaceName) -> None:
        """Delete a namespace that holds no topics (:class:`NamespaceNotEmpty` otherwise)."""
        record = await self._md.get(_namespace_key(ns))
        if record is None:
            raise UnknownNamespace(str(ns))
        if await self._md.list(f"{TOPICS_PREFIX}{ns.tenant}/{ns.namespace}/"):
            raise NamespaceNotEmpty(f"namespace {ns} still has topics")
        await self._md.delete(_namespace_key(ns), expected_version=record.version)
