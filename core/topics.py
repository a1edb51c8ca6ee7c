"""Topic metadata kept in the metadata store.

Key ``core/topics/<tenant>/<namespace>/<topic>``, value (JSON)::

    {"partitions": 3, "policies": {"retention_ms": null, ...}}

A topic always has at least one partition; a "non-partitioned" topic is one
with exactly one partition, 0.  Partitions can be added, never removed.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from core.errors import (
    InvalidPartitionCount,
    TopicAlreadyExists,
    UnknownNamespace,
    UnknownTopic,
)
from core.names import NamespaceName, TopicName
from core.namespaces import NAMESPACES_PREFIX, TOPICS_PREFIX, TopicPolicies, policies_from_dict
from storage.api import MetadataStore, VersionConflictError

MAX_PARTITIONS = 10_000
_CAS_ATTEMPTS = 16


@dataclass(frozen=True, slots=True)
class TopicMetadata:
    """What the metadata store keeps about one topic."""

    partitions: int
    policies: TopicPolicies = field(default_factory=TopicPolicies)

    def to_json(self) -> bytes:
        return json.dumps(
            {"partitions": self.partitions, "policies": asdict(self.policies)}, sort_keys=True
        ).encode()

    @classmethod
    def from_json(cls, data: bytes) -> TopicMetadata:
        raw: dict[str, Any] = json.loads(data)
        return cls(int(raw["partitions"]), policies_from_dict(TopicPolicies, raw["policies"]))


def check_partition_count(count: int) -> None:
    """Raise :class:`InvalidPartitionCount` unless ``1 <= count <= MAX_PARTITIONS``."""
    if isinstance(count, bool) or not isinstance(count, int) or not 1 <= count <= MAX_PARTITIONS:
        raise InvalidPartitionCount(f"partition count must be 1..{MAX_PARTITIONS}, got {count!r}")


def topic_key(topic: TopicName) -> str:
    return f"{TOPICS_PREFIX}{topic.base.metadata_path}"


class TopicStore:
    """Topic records in the metadata store (no logs: the core opens those)."""

    def __init__(self, metadata: MetadataStore) -> None:
        self._md = metadata

    async def get(self, topic: TopicName) -> TopicMetadata | None:
        record = await self._md.get(topic_key(topic))
        return None if record is None else TopicMetadata.from_json(record.value)

    async def create(self, topic: TopicName, meta: TopicMetadata) -> None:
        """Store a new topic in an existing namespace."""
        check_partition_count(meta.partitions)
        ns = topic.namespace_name
        if await self._md.get(f"{NAMESPACES_PREFIX}{ns.tenant}/{ns.namespace}") is None:
            raise UnknownNamespace(str(ns))
        try:
            await self._md.put(topic_key(topic), meta.to_json(), expected_version=0)
        except VersionConflictError:
            raise TopicAlreadyExists(str(topic.base)) from None

    async def update(
        self, topic: TopicName, change: Callable[[TopicMetadata], TopicMetadata]
    ) -> TopicMetadata:
        """Apply ``change`` with compare-and-set; return the stored result."""
        key = topic_key(topic)
        for _ in range(_CAS_ATTEMPTS):
            record = await self._md.get(key)
            if record is None:
                raise UnknownTopic(str(topic.base))
            old = TopicMetadata.from_json(record.value)
            new = change(old)
            check_partition_count(new.partitions)
            if new.partitions < old.partitions:
                raise InvalidPartitionCount("partitions can be added, not removed")
            try:
                await self._md.put(key, new.to_json(), expected_version=record.version)
            except VersionConflictError:
                continue
            return new
        raise VersionConflictError(key, None, None)

    async def set_policies(self, topic: TopicName, **values: Any) -> TopicMetadata:
        """Set some per-topic overrides (by field name), keeping the others."""
        policies_from_dict(TopicPolicies, values)
        return await self.update(
            topic, lambda old: replace(old, policies=replace(old.policies, **values))
        )

    async def delete(self, topic: TopicName) -> bool:
        return await self._md.delete(topic_key(topic))

    async def list_in(self, ns: NamespaceName) -> list[tuple[TopicName, TopicMetadata]]:
        """Topics of one namespace, sorted by name."""
        prefix = f"{TOPICS_PREFIX}{ns.tenant}/{ns.namespace}/"
        return [
            (TopicName(ns.tenant, ns.namespace, key.removeprefix(prefix)),
             TopicMetadata.from_json(rec.value))
            for key, rec in await self._md.list(prefix)
        ]

    async def list_all(self) -> list[TopicName]:
        """Every topic of every namespace."""
        out = []
        for key, _ in await self._md.list(TOPICS_PREFIX):
            tenant, namespace, local = key.removeprefix(TOPICS_PREFIX).split("/")
            out.append(TopicName(tenant, namespace, local))
        return out
