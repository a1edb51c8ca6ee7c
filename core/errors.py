"""Typed errors raised by the core.

Handlers map each of them onto their protocol's own error code (Kafka error
codes, AMQP channel/connection exceptions, MQTT reason codes).  Every error
derives from :class:`CoreError`; a failed call leaves the log unchanged unless
its docstring says otherwise.
"""

from __future__ import annotations


class CoreError(Exception):
    """Base class of every error the core raises on purpose."""


class InvalidName(CoreError, ValueError):
    """A tenant, namespace or topic name breaks the naming rules."""


class InvalidTopicName(InvalidName):
    """A topic name (or its partition suffix) is invalid."""


class UnknownTopic(CoreError, LookupError):
    """The topic does not exist (and auto-creation is off or not allowed)."""


class UnknownPartition(UnknownTopic):
    """The topic exists but has no partition with this number."""


class TopicAlreadyExists(CoreError):
    """A topic with this name exists already."""


class InvalidPartitionCount(CoreError, ValueError):
    """A partition count is below 1, too large, or would shrink a topic."""


class UnknownTenant(CoreError, LookupError):
    """The tenant does not exist."""


class UnknownNamespace(CoreError, LookupError):
    """The namespace does not exist."""


class TenantAlreadyExists(CoreError):
    """A tenant with this name exists already."""


class NamespaceAlreadyExists(CoreError):
    """A namespace with this name exists already."""


class TenantNotEmpty(CoreError):
    """A tenant still has namespaces and cannot be deleted."""


class NamespaceNotEmpty(CoreError):
    """A namespace still has topics and cannot be deleted."""


class InvalidPolicy(CoreError, ValueError):
    """A policy value is out of range or of the wrong type."""


class InvalidBatch(CoreError, ValueError):
    """A produced record batch was rejected; nothing was stored."""


class CorruptBatch(InvalidBatch):
    """Bad framing: wrong length, CRC mismatch, bad counts, truncated input."""


class UnsupportedBatchVersion(CorruptBatch):
    """The batch is not in the v2 (magic 2) layout."""


class MessageTooLarge(InvalidBatch):
    """A record batch is larger than the topic's maximum message size."""


class CorruptEntry(CoreError):
    """A stored log entry could not be decoded (bad magic or metadata)."""


class OffsetOutOfRange(CoreError, IndexError):
    """An offset lies before the earliest or after the latest offset of a partition."""

    def __init__(self, offset: int, earliest: int, latest: int) -> None:
        super().__init__(f"offset {offset} outside [{earliest}, {latest}]")
        self.offset = offset
        self.earliest = earliest
        self.latest = latest


class PartitionUnavailable(CoreError):
    """The partition's log failed (storage error) and is being recovered; retry."""
