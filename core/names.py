"""Tenant, namespace and topic names.

A topic's full name is Pulsar-style::

    persistent://<tenant>/<namespace>/<topic>[-partition-<N>]

Accepted spellings (``TopicName.parse``):

* ``persistent://tenant/namespace/topic`` — the full name;
* ``tenant/namespace/topic`` — the same without the domain;
* ``topic`` — a short, Kafka-style name, resolved in the default tenant and
  namespace (``CoreSettings.default_tenant``/``default_namespace``).

A trailing ``-partition-<N>`` selects partition ``N`` of a partitioned topic
(``N`` in decimal, no leading zeros); a topic's own name can therefore never end
with such a suffix.  Only the ``persistent`` domain exists.

Rules: tenant and namespace are 1-64 characters, topics 1-249 (Kafka's limit,
suffix included), all from ``[A-Za-z0-9._=-]``, and never ``.`` or ``..``.  This
is the character set storage accepts for log names, so every valid name maps to
a log name without escaping.

Storage log names: partition ``N`` of a topic lives in the log
``persistent/<tenant>/<namespace>/<topic>/p-<N>``.  A non-partitioned topic is a
topic with exactly one partition, 0.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from core.errors import InvalidName, InvalidTopicName

DOMAIN = "persistent"
MAX_TENANT_LEN = 64
MAX_NAMESPACE_LEN = 64
MAX_TOPIC_LEN = 249
PARTITION_SUFFIX = "-partition-"

_CHARS_RE = re.compile(r"[A-Za-z0-9._=-]+")
_PARTITION_RE = re.compile(r"^(.+)-partition-(0|[1-9][0-9]{0,8})$")


def _check_part(kind: str, value: str, max_len: int, error: type[InvalidName]) -> None:
    if not value:
        raise error(f"empty {kind} name")
    if len(value) > max_len:
        raise error(f"{kind} name longer than {max_len} characters: {value[:40]!r}...")
    if not _CHARS_RE.fullmatch(value):
        raise error(f"{kind} name {value!r} may only contain letters, digits and . _ = -")
    if value in (".", ".."):
        raise error(f"{kind} name may not be {value!r}")


def check_tenant(name: str) -> None:
    """Raise :class:`InvalidName` unless ``name`` is a valid tenant name."""
    _check_part("tenant", name, MAX_TENANT_LEN, InvalidName)


def check_namespace_part(name: str) -> None:
    """Raise :class:`InvalidName` unless ``name`` is a valid namespace (local part)."""
    _check_part("namespace", name, MAX_NAMESPACE_LEN, InvalidName)


@dataclass(frozen=True, slots=True, order=True)
class NamespaceName:
    """``tenant/namespace``."""

    tenant: str
    namespace: str

    def __post_init__(self) -> None:
        check_tenant(self.tenant)
        check_namespace_part(self.namespace)

    @classmethod
    def parse(cls, text: str) -> NamespaceName:
        """Parse ``tenant/namespace``; raise :class:`InvalidName` otherwise."""
        parts = text.split("/")
        if len(parts) != 2:
            raise InvalidName(f"namespace must be 'tenant/namespace', got {text!r}")
        return cls(parts[0], parts[1])

    def __str__(self) -> str:
        return f"{self.tenant}/{self.namespace}"


@dataclass(frozen=True, slots=True, order=True)
class TopicName:
    """A topic, or one partition of it when ``partition`` is not None.

    ``local`` is the topic's own name, without any ``-partition-N`` suffix.
    """

    tenant: str
    namespace: str
    local: str
    partition: int | None = None

    def __post_init__(self) -> None:
        check_tenant(self.tenant)
        check_namespace_part(self.namespace)
        _check_part("topic", self.local, MAX_TOPIC_LEN, InvalidTopicName)
        if _PARTITION_RE.match(self.local):
            raise InvalidTopicName(
                f"topic name {self.local!r} may not end with '{PARTITION_SUFFIX}<N>'"
            )
        if self.partition is not None:
            if self.partition < 0:
                raise InvalidTopicName(f"negative partition {self.partition}")
            if len(self.local) + len(PARTITION_SUFFIX) + len(str(self.partition)) > MAX_TOPIC_LEN:
                raise InvalidTopicName(f"partition name of {self.local!r} is too long")

    @classmethod
    def parse(
        cls, text: str, default_tenant: str = "public", default_namespace: str = "default"
    ) -> TopicName:
        """Parse any accepted spelling (see the module docstring).

        Raises :class:`InvalidTopicName` (or :class:`InvalidName` for a bad
        tenant/namespace, its base class) when the text is not a valid name.
        """
        rest = text
        if "://" in text:
            domain, _, rest = text.partition("://")
            if domain != DOMAIN:
                raise InvalidTopicName(f"unsupported topic domain {domain!r} in {text!r}")
        parts = rest.split("/")
        if len(parts) == 1 and "://" not in text:
            tenant, namespace, local = default_tenant, default_namespace, parts[0]
        elif len(parts) == 3:
            tenant, namespace, local = parts
        else:
            raise InvalidTopicName(
                f"topic must be 'persistent://tenant/namespace/topic' or a short name: {text!r}"
            )
        partition: int | None = None
        m = _PARTITION_RE.match(local)
        if m is not None:
            local, partition = m.group(1), int(m.group(2))
        try:
            return cls(tenant, namespace, local, partition)
        except InvalidTopicName:
            raise
        except InvalidName as exc:
            raise InvalidTopicName(f"{text!r}: {exc}") from None

    @property
    def namespace_name(self) -> NamespaceName:
        """The namespace this topic belongs to."""
        return NamespaceName(self.tenant, self.namespace)

    @property
    def base(self) -> TopicName:
        """The topic itself (this name without a partition)."""
        if self.partition is None:
            return self
        return TopicName(self.tenant, self.namespace, self.local)

    def with_partition(self, partition: int) -> TopicName:
        """The name of one partition of this topic."""
        return TopicName(self.tenant, self.namespace, self.local, partition)

    def log_name(self, partition: int | None = None) -> str:
        """The storage log holding ``partition`` (default: this name's partition, else 0)."""
        if partition is None:
            partition = self.partition or 0
        return f"{DOMAIN}/{self.tenant}/{self.namespace}/{self.local}/p-{partition}"

    @property
    def metadata_path(self) -> str:
        """``tenant/namespace/topic``: the topic's key suffix in the metadata store."""
        return f"{self.tenant}/{self.namespace}/{self.local}"

    def __str__(self) -> str:
        suffix = "" if self.partition is None else f"{PARTITION_SUFFIX}{self.partition}"
        return f"{DOMAIN}://{self.tenant}/{self.namespace}/{self.local}{suffix}"
