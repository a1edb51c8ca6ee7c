"""Kafka topic and broker configs <-> the core's topic and namespace policies.

Kafka clients see topic configs by their Kafka names; the core keeps policies.  The mapping:

* ``retention.ms`` -> ``TopicPolicies.retention_ms`` (``-1``: keep forever);
* ``retention.bytes`` -> ``TopicPolicies.retention_bytes`` (per partition, ``-1``: unlimited);
* ``max.message.bytes`` -> ``TopicPolicies.max_message_bytes`` (the largest record batch the
  core accepts; a larger one gets ``MESSAGE_TOO_LARGE``);
* ``cleanup.policy`` (``delete``, ``compact`` or both) has no core policy yet: this module keeps
  it under the metadata key ``kafka/topic-configs/<tenant>/<namespace>/<topic>`` and reports
  it, but the core does not compact logs yet.

Core policies take effect at once (:meth:`core.api.Core.set_topic_policies`).
A topic config that is not overridden inherits, like the core's policies do: the namespace's
policy, else the core setting (``[core]`` in the configuration file).  Other Kafka topic configs
are refused with ``INVALID_CONFIG`` rather than silently ignored.

The broker resource (``ResourceType`` 4) is read-only: it reports the core's defaults under
Kafka's broker config names (``log.retention.ms``, ``message.max.bytes``, ...).

Everything here is pure (no I/O) except :func:`load_topic_overrides` and
:func:`store_topic_overrides`, which read and write the core and the metadata store.
"""

from __future__ import annotations

import enum
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, Final

from core.errors import UnknownTopic
from core.namespaces import NamespacePolicies

if TYPE_CHECKING:
    from core.api import Core
    from core.config import CoreSettings
    from core.names import TopicName

__all__ = [
    "CLEANUP_POLICIES",
    "CONFIGS_PREFIX",
    "TOPIC_CONFIG_NAMES",
    "ConfigEntry",
    "ConfigOperation",
    "ConfigSource",
    "ConfigType",
    "InvalidConfig",
    "ResourceType",
    "TopicOverrides",
    "apply_incremental",
    "broker_configs",
    "delete_topic_overrides",
    "load_topic_overrides",
    "parse_topic_configs",
    "store_topic_overrides",
    "topic_configs",
]

CONFIGS_PREFIX: Final = "kafka/topic-configs/"
"""Metadata key prefix of the Kafka-only topic configs (``cleanup.policy``)."""

RETENTION_MS: Final = "retention.ms"
RETENTION_BYTES: Final = "retention.bytes"
MAX_MESSAGE_BYTES: Final = "max.message.bytes"
CLEANUP_POLICY: Final = "cleanup.policy"

TOPIC_CONFIG_NAMES: Final = (CLEANUP_POLICY, MAX_MESSAGE_BYTES, RETENTION_BYTES, RETENTION_MS)
"""The topic configs served, in the order DescribeConfigs lists them."""

CLEANUP_POLICIES: Final = frozenset({"delete", "compact"})

_INT64_MAX: Final = (1 << 63) - 1
_INT32_MAX: Final = (1 << 31) - 1


class ResourceType(enum.IntEnum):
    """DescribeConfigs/AlterConfigs resource types (the ones we know)."""

    UNKNOWN = 0
    TOPIC = 2
    BROKER = 4
    BROKER_LOGGER = 8


class ConfigSource(enum.IntEnum):
    """DescribeConfigs ``ConfigSource`` values."""

    UNKNOWN = 0
    DYNAMIC_TOPIC_CONFIG = 1
    DYNAMIC_BROKER_CONFIG = 2
    DYNAMIC_DEFAULT_BROKER_CONFIG = 3
    STATIC_BROKER_CONFIG = 4
    DEFAULT_CONFIG = 5


class ConfigType(enum.IntEnum):
    """DescribeConfigs ``ConfigType`` values (v3+)."""

    UNKNOWN = 0
    BOOLEAN = 1
    STRING = 2
    INT = 3
    SHORT = 4
    LONG = 5
    DOUBLE = 6
    LIST = 7


class ConfigOperation(enum.IntEnum):
    """IncrementalAlterConfigs operations."""

    SET = 0
    DELETE = 1
    APPEND = 2
    SUBTRACT = 3


class InvalidConfig(ValueError):
    """A config name or value the gateway does not accept (Kafka's ``INVALID_CONFIG``)."""


@dataclass(frozen=True, slots=True)
class TopicOverrides:
    """A topic's own config values (``None``: not set, inherited)."""

    retention_ms: int | None = None
    retention_bytes: int | None = None
    max_message_bytes: int | None = None
    cleanup_policy: tuple[str, ...] | None = None

    def policies(self) -> dict[str, int | None]:
        """The core ``TopicPolicies`` fields these overrides set (``None`` resets)."""
        return {"retention_ms": self.retention_ms, "retention_bytes": self.retention_bytes,
                "max_message_bytes": self.max_message_bytes}


@dataclass(frozen=True, slots=True)
class ConfigEntry:
    """One config as DescribeConfigs reports it."""

    name: str
    value: str | None
    source: ConfigSource
    config_type: ConfigType
    read_only: bool = False
    synonyms: tuple[tuple[str, str | None, ConfigSource], ...] = ()
    documentation: str | None = None


_FIELDS: Final[Mapping[str, str]] = {
    RETENTION_MS: "retention_ms",
    RETENTION_BYTES: "retention_bytes",
    MAX_MESSAGE_BYTES: "max_message_bytes",
    CLEANUP_POLICY: "cleanup_policy",
}

_DOCS: Final[Mapping[str, str]] = {
    RETENTION_MS: "How long entries are kept (whole segments are dropped); -1 keeps them forever.",
    RETENTION_BYTES: "Bytes kept per partition before old segments are dropped; -1: unlimited.",
    MAX_MESSAGE_BYTES: "The largest record batch accepted (larger ones get MESSAGE_TOO_LARGE).",
    CLEANUP_POLICY: "delete and/or compact; compact is stored and reported, but the gateway "
                    "does not compact logs yet.",
}


# -- parsing -----------------------------------------------------------------------------------


def _parse_long(name: str, value: str, minimum: int, maximum: int = _INT64_MAX) -> int:
    try:
        number = int(value.strip(), 10)
    except ValueError:
        raise InvalidConfig(f"Invalid value {value} for configuration {name}: "
                            "not a number") from None
    if not minimum <= number <= maximum:
        raise InvalidConfig(f"Invalid value {value} for configuration {name}: "
                            f"must be in {minimum}..{maximum}")
    return number


def _parse_cleanup_policy(value: str) -> tuple[str, ...]:
    items = [item.strip() for item in value.split(",") if item.strip()]
    if not items:
        raise InvalidConfig(f"Invalid value {value!r} for configuration {CLEANUP_POLICY}: "
                            "empty list")
    unknown = [item for item in items if item not in CLEANUP_POLICIES]
    if unknown:
        raise InvalidConfig(f"Invalid value {value} for configuration {CLEANUP_POLICY}: "
                            f"String must be one of: compact, delete (got {unknown[0]!r})")
    return tuple(sorted(set(items), key=items.index))


def _check_name(name: str) -> str:
    if name not in _FIELDS:
        raise InvalidConfig(f"Unknown or unsupported topic config name: {name} (supported: "
                            f"{', '.join(TOPIC_CONFIG_NAMES)})")
    return _FIELDS[name]


def parse_value(name: str, value: str | None) -> int | tuple[str, ...] | None:
    """The override value of topic config ``name`` (``None`` value: back to the default)."""
    _check_name(name)
    if value is None:
        return None
    if name == CLEANUP_POLICY:
        return _parse_cleanup_policy(value)
    if name == MAX_MESSAGE_BYTES:
        return _parse_long(name, value, 1, _INT32_MAX)
    return _parse_long(name, value, -1)


def _with(overrides: TopicOverrides, field_name: str, value: object) -> TopicOverrides:
    changes: dict[str, Any] = {field_name: value}
    return replace(overrides, **changes)


def parse_topic_configs(
    configs: Iterable[tuple[str, str | None]], base: TopicOverrides | None = None
) -> TopicOverrides:
    """``base`` (default: nothing set) with ``(name, value)`` pairs set; InvalidConfig if bad.

    A name given twice is refused, as Kafka does.
    """
    overrides = base or TopicOverrides()
    seen: set[str] = set()
    for name, value in configs:
        if name in seen:
            raise InvalidConfig(f"Duplicate config name {name}")
        seen.add(name)
        overrides = _with(overrides, _check_name(name), parse_value(name, value))
    return overrides


def apply_incremental(
    current: TopicOverrides, ops: Iterable[tuple[str, int, str | None]]
) -> TopicOverrides:
    """Apply IncrementalAlterConfigs ``(name, operation, value)`` ops to ``current``.

    SET and DELETE work on every config; APPEND and SUBTRACT only on the list config
    ``cleanup.policy`` (APPEND to an unset list starts from its default, ``delete``).
    """
    result = current
    seen: set[tuple[str, int]] = set()
    for name, raw_op, value in ops:
        field_name = _check_name(name)
        if (name, raw_op) in seen:
            raise InvalidConfig(f"Duplicate config operation on {name}")
        seen.add((name, raw_op))
        try:
            op = ConfigOperation(raw_op)
        except ValueError:
            raise InvalidConfig(f"Unknown config operation {raw_op} for {name}") from None
        if op is ConfigOperation.SET:
            if value is None:
                raise InvalidConfig(f"Null value not supported for SET of {name}")
            result = _with(result, field_name, parse_value(name, value))
        elif op is ConfigOperation.DELETE:
            result = _with(result, field_name, None)
        else:
            if name != CLEANUP_POLICY:
                raise InvalidConfig(f"Config value append/subtract is not allowed for config "
                                    f"{name}: it is not a list")
            if value is None:
                raise InvalidConfig(f"Null value not supported for {op.name} of {name}")
            items = _parse_cleanup_policy(value)
            existing = list(result.cleanup_policy or ("delete",))
            if op is ConfigOperation.APPEND:
                merged = existing + [i for i in items if i not in existing]
            else:
                merged = [i for i in existing if i not in items]
                if not merged:
                    raise InvalidConfig(f"{CLEANUP_POLICY} cannot become empty")
            result = replace(result, cleanup_policy=tuple(merged))
    return result


# -- describing --------------------------------------------------------------------------------


def _core_default(settings: CoreSettings, ns: NamespacePolicies, field_name: str
                  ) -> tuple[int, ConfigSource]:
    ns_value: int | None = getattr(ns, field_name)
    if ns_value is not None:
        return ns_value, ConfigSource.DYNAMIC_DEFAULT_BROKER_CONFIG
    value: int = getattr(settings, field_name)
    return value, ConfigSource.STATIC_BROKER_CONFIG


_BROKER_NAMES: Final[Mapping[str, str]] = {
    RETENTION_MS: "log.retention.ms",
    RETENTION_BYTES: "log.retention.bytes",
    MAX_MESSAGE_BYTES: "message.max.bytes",
    CLEANUP_POLICY: "log.cleanup.policy",
}


def topic_configs(
    overrides: TopicOverrides, settings: CoreSettings, ns: NamespacePolicies,
    *, keys: Iterable[str] | None = None, synonyms: bool = False,
) -> list[ConfigEntry]:
    """DescribeConfigs entries of a topic (``keys``: only those; unknown keys are skipped)."""
    wanted = list(TOPIC_CONFIG_NAMES) if keys is None else [
        k for k in dict.fromkeys(keys) if k in _FIELDS]
    out = []
    for name in wanted:
        field_name = _FIELDS[name]
        own = getattr(overrides, field_name)
        if name == CLEANUP_POLICY:
            default_value: str = "delete"
            default_source = ConfigSource.DEFAULT_CONFIG
            kind = ConfigType.LIST
        else:
            number, default_source = _core_default(settings, ns, field_name)
            default_value = str(number)
            kind = ConfigType.INT if name == MAX_MESSAGE_BYTES else ConfigType.LONG
        if own is None:
            value, source = default_value, default_source
        else:
            value = ",".join(own) if isinstance(own, tuple) else str(own)
            source = ConfigSource.DYNAMIC_TOPIC_CONFIG
        syn: tuple[tuple[str, str | None, ConfigSource], ...] = ()
        if synonyms:
            found = [(name, value, source)] if own is not None else []
            found.append((_BROKER_NAMES[name], default_value, default_source))
            syn = tuple(found)
        out.append(ConfigEntry(name, value, source, kind, synonyms=syn,
                               documentation=_DOCS[name]))
    return out


def broker_configs(
    settings: CoreSettings, ns: NamespacePolicies, num_partitions: int,
    *, keys: Iterable[str] | None = None, synonyms: bool = False,
) -> list[ConfigEntry]:
    """The read-only broker resource: the core's defaults under Kafka broker config names."""
    retention_ms, rms_source = _core_default(settings, ns, "retention_ms")
    retention_bytes, rb_source = _core_default(settings, ns, "retention_bytes")
    max_bytes, mb_source = _core_default(settings, ns, "max_message_bytes")
    static = ConfigSource.STATIC_BROKER_CONFIG
    entries = [
        ConfigEntry("log.retention.ms", str(retention_ms), rms_source, ConfigType.LONG, True),
        ConfigEntry("log.retention.bytes", str(retention_bytes), rb_source, ConfigType.LONG,
                    True),
        ConfigEntry("message.max.bytes", str(max_bytes), mb_source, ConfigType.INT, True),
        ConfigEntry("log.cleanup.policy", "delete", ConfigSource.DEFAULT_CONFIG,
                    ConfigType.LIST, True),
        ConfigEntry("num.partitions", str(num_partitions), static, ConfigType.INT, True),
        ConfigEntry("auto.create.topics.enable", str(settings.auto_create_topics).lower(),
                    static, ConfigType.BOOLEAN, True),
        ConfigEntry("default.replication.factor", "1", ConfigSource.DEFAULT_CONFIG,
                    ConfigType.SHORT, True),
        ConfigEntry("min.insync.replicas", "1", ConfigSource.DEFAULT_CONFIG, ConfigType.INT,
                    True),
        ConfigEntry("log.retention.check.interval.ms",
                    str(settings.retention_check_interval_ms), static, ConfigType.LONG, True),
    ]
    if synonyms:
        entries = [replace(e, synonyms=((e.name, e.value, e.source),)) for e in entries]
    if keys is None:
        return entries
    wanted = set(keys)
    return [e for e in entries if e.name in wanted]


# -- storage -----------------------------------------------------------------------------------


def _key(topic: TopicName) -> str:
    return f"{CONFIGS_PREFIX}{topic.base.metadata_path}"


async def load_topic_overrides(core: Core, topic: TopicName) -> TopicOverrides:
    """The topic's overrides: core policies plus the Kafka-only ones (UnknownTopic if none)."""
    meta = await core.topics.get(topic)
    if meta is None:
        raise UnknownTopic(str(topic.base))
    cleanup: tuple[str, ...] | None = None
    stored = await core.storage.metadata.get(_key(topic))
    if stored is not None:
        raw = json.loads(stored.value).get(CLEANUP_POLICY)
        if isinstance(raw, str):
            cleanup = _parse_cleanup_policy(raw)
    policies = meta.policies
    return TopicOverrides(policies.retention_ms, policies.retention_bytes,
                          policies.max_message_bytes, cleanup)


async def store_topic_overrides(core: Core, ref: str, overrides: TopicOverrides) -> None:
    """Make ``overrides`` the topic's configs: core policies (they take effect at once) and
    the Kafka-only ones in the metadata store."""
    info = await core.set_topic_policies(ref, **overrides.policies())
    key = _key(info.name)
    if overrides.cleanup_policy is None:
        await core.storage.metadata.delete(key)
    else:
        value = json.dumps({CLEANUP_POLICY: ",".join(overrides.cleanup_policy)})
        await core.storage.metadata.put(key, value.encode())


async def delete_topic_overrides(core: Core, topic: TopicName) -> None:
    """Forget the Kafka-only configs of a deleted (or re-created) topic."""
    await core.storage.metadata.delete(_key(topic))
