"""What every Kafka API service needs: the core, this broker's identity, topic resolution.

A :class:`ServiceContext` is built once by the handler at start-up and specialised per
connection (the advertised address depends on the listener the client came in on).  Services
are ``async def handle(ctx, request) -> Reply``: a kafka-python response body, or
:data:`NO_RESPONSE` (Produce with ``acks=0``); :class:`CloseConnection` asks the session to
close the connection after logging why, as Kafka does for some errors.

Kafka topic names map onto the core as ``<namespace>/<name>``, where the namespace is the
handler's ``namespace`` setting (default: the core's default ``public/default``).
"""

from __future__ import annotations

import contextlib
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

import trio

from core.errors import InvalidTopicName, TopicAlreadyExists, UnknownPartition, UnknownTopic

if TYPE_CHECKING:
    from core.api import Core, TopicInfo

__all__ = [
    "BROKER_ID",
    "LEADER_EPOCH",
    "NO_RESPONSE",
    "CloseConnection",
    "NoResponse",
    "Reply",
    "ServiceContext",
    "check_topic_name",
]

BROKER_ID: Final = 0
"""Our node id: the only broker, leader of every partition and the controller."""

LEADER_EPOCH: Final = 0
"""The leader epoch we report for every partition (there is never a leader change)."""

MAX_TOPIC_NAME = 249
_LEGAL_TOPIC = re.compile(r"[A-Za-z0-9._-]+")
# the core reads a trailing "-partition-N" as a partition of another topic
_PARTITION_SUFFIX = re.compile(r"-partition-[0-9]+$")


class NoResponse:
    """The type of :data:`NO_RESPONSE`."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "NO_RESPONSE"


NO_RESPONSE: Final = NoResponse()
"""A service's result when Kafka sends nothing back (Produce with ``acks=0``)."""

Reply = Any  # a kafka-python response body, or NO_RESPONSE


class CloseConnection(Exception):
    """Raised by a service when Kafka would close the connection instead of answering."""


def check_topic_name(name: str | None) -> str:
    """Return ``name`` if Kafka accepts it as a topic name; raise InvalidTopicName otherwise.

    Kafka's rule: 1-249 characters from ``[A-Za-z0-9._-]``, not ``.`` or ``..``; and the
    core's: no ``-partition-N`` suffix (it names one partition of a partitioned topic).
    """
    if not name:
        raise InvalidTopicName("empty topic name")
    if len(name) > MAX_TOPIC_NAME:
        raise InvalidTopicName(f"topic name longer than {MAX_TOPIC_NAME} characters")
    if name in (".", "..") or not _LEGAL_TOPIC.fullmatch(name):
        raise InvalidTopicName(f"illegal Kafka topic name {name[:60]!r}")
    if _PARTITION_SUFFIX.search(name):
        raise InvalidTopicName(f"topic name {name[:60]!r} ends with -partition-N")
    return name


@dataclass(frozen=True, slots=True)
class ServiceContext:
    """Shared, read-only state of the Kafka services (one per connection, cheap to copy)."""

    core: Core
    namespace: str
    """``tenant/namespace`` that Kafka topic names live in."""
    cluster_id: str
    advertised_host: str
    advertised_port: int
    num_partitions: int = 1
    """Partition count of auto-created topics."""
    stopping: trio.Event | None = None
    """Set when the broker shuts down: long polls return early."""
    peer_host: str | None = None
    """The client's address (set per connection; DescribeGroups reports it)."""

    def topic_ref(self, name: str) -> str:
        """The core's spelling of Kafka topic ``name`` (validated; raises InvalidTopicName)."""
        return f"{self.namespace}/{check_topic_name(name)}"

    async def topic(self, name: str, *, create: bool = False) -> tuple[str, TopicInfo]:
        """Resolve Kafka topic ``name`` to its core reference and info.

        With ``create`` (and the core's ``auto_create_topics``), a missing topic is created
        with :attr:`num_partitions` partitions.  Raises CoreError subclasses (UnknownTopic,
        InvalidTopicName, UnknownNamespace, ...).
        """
        ref = self.topic_ref(name)
        try:
            return ref, await self.core.topic_metadata(ref)
        except UnknownPartition:
            raise
        except UnknownTopic:
            if not (create and self.core.settings.auto_create_topics):
                raise
        with contextlib.suppress(TopicAlreadyExists):  # created meanwhile elsewhere
            await self.core.create_topic(ref, self.num_partitions)
        # looked up under ``ref`` so the core caches it: Core.append(ref, ...) then assigns
        # offsets without a checkpoint (the produce service relies on that for ordering)
        return ref, await self.core.topic_metadata(ref)

    async def partition(self, name: str, partition: int) -> str:
        """The core reference of an existing partition (raises UnknownTopic/UnknownPartition)."""
        ref, info = await self.topic(name)
        if not 0 <= partition < info.partitions:
            raise UnknownPartition(f"{name} has no partition {partition}")
        return ref
