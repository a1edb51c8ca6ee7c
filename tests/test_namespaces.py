"""Tenants, namespaces and policies in the metadata store."""

from __future__ import annotations

import json

import pytest

from core.config import CoreSettings
from core.errors import (
    InvalidName,
    InvalidPolicy,
    NamespaceAlreadyExists,
    NamespaceNotEmpty,
    TenantAlreadyExists,
    TenantNotEmpty,
    UnknownNamespace,
    UnknownTenant,
    UnknownTopic,
)
from core.names import NamespaceName, TopicName
from core.namespaces import (
    NamespacePolicies,
    NamespaceStore,
    TopicPolicies,
    resolve_policies,
)
from core.topics import TopicMetadata, TopicStore
from storage.api import RetentionPolicy
from storage.memory import MemoryMetadataStore

NS = NamespaceName("acme", "prod")


async def store() -> NamespaceStore:
    s = NamespaceStore(MemoryMetadataStore())
    await s.ensure_defaults(CoreSettings())
    return s


async def test_defaults_exist_and_ensure_is_idempotent() -> None:
    md = MemoryMetadataStore()
    s = NamespaceStore(md)
    await s.ensure_defaults(CoreSettings())
    await s.ensure_defaults(CoreSettings())
    assert await s.list_tenants() == ["public"]
    assert await s.list_namespaces("public") == [NamespaceName("public", "default")]
    assert await s.get_policies(NamespaceName("public", "default")) == NamespacePolicies()
    record = await md.get("core/namespaces/public/default")
    assert record is not None and json.loads(record.value)["deduplication"] is False


async def test_tenant_and_namespace_lifecycle() -> None:
    s = await store()
    await s.create_tenant("acme")
    with pytest.raises(TenantAlreadyExists):
        await s.create_tenant("acme")
    await s.create_namespace(NS, NamespacePolicies(retention_ms=1000))
    with pytest.raises(NamespaceAlreadyExists):
        await s.create_namespace(NS)
    await s.create_namespace(NamespaceName("acme", "dev"))
    assert await s.list_tenants() == ["acme", "public"]
    assert await s.list_namespaces("acme") == [NamespaceName("acme", "dev"), NS]
    assert (await s.get_policies(NS)).retention_ms == 1000
    with pytest.raises(TenantNotEmpty):
        await s.delete_tenant("acme")
    await s.delete_namespace(NamespaceName("acme", "dev"))
    await s.delete_namespace(NS)
    with pytest.raises(UnknownNamespace):
        await s.delete_namespace(NS)
    await s.delete_tenant("acme")
    assert await s.list_tenants() == ["public"]
    with pytest.raises(UnknownTenant):
        await s.delete_tenant("acme")


async def test_unknown_and_invalid() -> None:
    s = await store()
    with pytest.raises(UnknownTenant):
        await s.create_namespace(NS)
    with pytest.raises(UnknownTenant):
        await s.list_namespaces("nope")
    with pytest.raises(UnknownNamespace):
        await s.get_policies(NS)
    with pytest.raises(InvalidName):
        await s.create_tenant("bad tenant")


async def test_namespace_with_topics_is_not_deleted() -> None:
    md = MemoryMetadataStore()
    s = NamespaceStore(md)
    await s.create_tenant("acme")
    await s.create_namespace(NS)
    topics = TopicStore(md)
    await topics.create(TopicName("acme", "prod", "t"), TopicMetadata(2))
    with pytest.raises(NamespaceNotEmpty):
        await s.delete_namespace(NS)
    # a namespace whose name is a prefix of another is still empty
    await s.create_namespace(NamespaceName("acme", "pro"))
    await s.delete_namespace(NamespaceName("acme", "pro"))
    assert await topics.delete(TopicName("acme", "prod", "t"))
    await s.delete_namespace(NS)


async def test_set_policies_uses_cas_and_keeps_other_fields() -> None:
    md = MemoryMetadataStore()
    s = NamespaceStore(md)
    await s.ensure_defaults(CoreSettings())
    ns = NamespaceName("public", "default")
    await s.set_policies(ns, retention_ms=5000, deduplication=True)
    updated = await s.set_policies(ns, max_message_bytes=100)
    assert updated == NamespacePolicies(
        retention_ms=5000, deduplication=True, max_message_bytes=100
    )
    record = await md.get("core/namespaces/public/default")
    assert record is not None and record.version == 3
    with pytest.raises(InvalidPolicy):
        await s.set_policies(ns, retention_ms=-2)
    with pytest.raises(InvalidPolicy):
        await s.set_policies(ns, colour="blue")
    with pytest.raises(InvalidPolicy):
        await s.set_policies(ns, deduplication="yes")
    with pytest.raises(UnknownNamespace):
        await s.set_policies(NS, retention_ms=1)


async def test_concurrent_policy_updates_do_not_lose_writes() -> None:
    import trio

    s = await store()
    ns = NamespaceName("public", "default")

    async def bump(field: str, value: int) -> None:
        await s.set_policies(ns, **{field: value})

    async with trio.open_nursery() as nursery:
        nursery.start_soon(bump, "retention_ms", 11)
        nursery.start_soon(bump, "retention_bytes", 22)
        nursery.start_soon(bump, "message_ttl_ms", 33)
    p = await s.get_policies(ns)
    assert (p.retention_ms, p.retention_bytes, p.message_ttl_ms) == (11, 22, 33)


def test_policy_resolution_order() -> None:
    settings = CoreSettings(retention_ms=1000, retention_bytes=-1, max_message_bytes=500)
    base = resolve_policies(settings, NamespacePolicies())
    assert base.retention == RetentionPolicy(max_age_ms=1000, max_bytes=None)
    assert base.max_message_bytes == 500
    assert base.message_ttl_ms is None and not base.deduplication
    ns = NamespacePolicies(retention_ms=-1, retention_bytes=10, message_ttl_ms=7,
                           deduplication=True, max_message_bytes=300)
    mid = resolve_policies(settings, ns)
    assert mid.retention == RetentionPolicy(max_age_ms=None, max_bytes=10)
    assert (mid.max_message_bytes, mid.message_ttl_ms, mid.deduplication) == (300, 7, True)
    top = resolve_policies(settings, ns, TopicPolicies(retention_ms=5, max_message_bytes=200))
    assert top.retention == RetentionPolicy(max_age_ms=5, max_bytes=10)
    assert top.max_message_bytes == 200


async def test_topic_store_partitions_and_overrides() -> None:
    md = MemoryMetadataStore()
    await NamespaceStore(md).ensure_defaults(CoreSettings())
    topics = TopicStore(md)
    name = TopicName("public", "default", "t")
    with pytest.raises(UnknownNamespace):
        await topics.create(TopicName("x", "y", "t"), TopicMetadata(1))
    await topics.create(name, TopicMetadata(3))
    meta = await topics.set_policies(name, retention_bytes=100)
    assert meta == TopicMetadata(3, TopicPolicies(retention_bytes=100))
    assert await topics.get(name.with_partition(1)) == meta
    assert [n for n, _ in await topics.list_in(name.namespace_name)] == [name]
    assert await topics.list_all() == [name]
    with pytest.raises(UnknownTopic):
        await topics.set_policies(TopicName("public", "default", "nope"), retention_ms=1)
