"""Retained messages: the last retained PUBLISH per MQTT topic name.

:class:`RetainedStore` is the small interface the handler uses, so the backing store can be
swapped.  Two stores exist (setting ``retained_store``):

* ``"log"`` (the default), :class:`CompactedRetainedStore`: every retained PUBLISH is also
  appended to the compacted core topic ``__mqtt-retained`` of the MQTT namespace, keyed by the
  MQTT topic name (an empty payload is written as a tombstone).  The core's compaction keeps
  the latest record per key; at start-up :func:`core.compacted_view.latest_by_key` reads the
  retained set back.  The topic keeps data forever (retention -1) and is hidden from MQTT.
* ``"metadata"``, :class:`MetadataRetainedStore`: one metadata record per topic under
  ``mqtt/retained/<topic, percent-quoted>`` (the message encoded as a one-record batch).

Both keep the retained messages in memory too, for matching on subscribe; at most
``max_messages`` topics are retained, beyond that new topics are refused (and logged), so
memory stays bounded.
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from contextlib import suppress
from urllib.parse import quote, unquote

from core.api import Core
from core.compacted_view import latest_by_key
from core.errors import TopicAlreadyExists
from core.names import TopicName
from core.namespaces import TopicPolicies
from core.records import Message, build_batch, decode_batch
from storage.api import MetadataStore

from .topic_mapping import topic_matches

__all__ = [
    "DEFAULT_MAX_RETAINED",
    "RETAINED_PREFIX",
    "RETAINED_TOPIC",
    "CompactedRetainedStore",
    "MetadataRetainedStore",
    "RetainedStore",
]

log = logging.getLogger(__name__)

RETAINED_PREFIX = "mqtt/retained/"
#: the compacted core topic of :class:`CompactedRetainedStore` (in the MQTT namespace)
RETAINED_TOPIC = "__mqtt-retained"
_SNAPSHOT_CEILING = 10_000_000
DEFAULT_MAX_RETAINED = 100_000


class RetainedStore(ABC):
    """Retained messages by MQTT topic name."""

    @abstractmethod
    async def load(self) -> int:
        """Load what is stored (at start-up); return how many messages."""

    @abstractmethod
    async def set(self, topic: str, message: Message) -> bool:
        """Retain ``message`` for ``topic`` (empty value: delete); False when refused."""

    @abstractmethod
    def matching(self, topic_filter: str) -> list[tuple[str, Message]]:
        """Every retained ``(topic, message)`` whose topic matches ``topic_filter``."""


def _matching(
    messages: dict[str, Message], topic_filter: str
) -> list[tuple[str, Message]]:
    if "+" not in topic_filter and "#" not in topic_filter:
        found = messages.get(topic_filter)
        return [] if found is None else [(topic_filter, found)]
    return [(t, m) for t, m in messages.items() if topic_matches(topic_filter, t)]


class CompactedRetainedStore(RetainedStore):
    """Retained messages in a compacted core topic (see the module docstring)."""

    def __init__(self, core: Core, topic: TopicName,
                 max_messages: int = DEFAULT_MAX_RETAINED) -> None:
        self._core = core
        self.topic = topic
        self._max = max_messages
        self._messages: dict[str, Message] = {}

    def __len__(self) -> int:
        return len(self._messages)

    async def load(self) -> int:
        policies = TopicPolicies(retention_ms=-1, retention_bytes=-1, compacted=True)
        with suppress(TopicAlreadyExists):
            await self._core.create_topic(self.topic, 1, policies)
        snapshot = await latest_by_key(self._core, self.topic, 0, max_keys=_SNAPSHOT_CEILING,
                                       empty_is_delete=True)
        if len(snapshot) > self._max:
            log.warning("mqtt: %d retained messages stored, keeping the first %d",
                        len(snapshot), self._max)
        for key, stored in list(snapshot.items())[: self._max]:
            try:
                self._messages[key.decode("utf-8")] = stored.message
            except UnicodeDecodeError:
                log.warning("mqtt: ignoring a retained record with a non-UTF-8 key")
        return len(self._messages)

    async def set(self, topic: str, message: Message) -> bool:
        key = topic.encode("utf-8")
        if not message.value:
            if self._messages.pop(topic, None) is not None:
                tombstone = Message(key, None, [], message.timestamp_ms)
                await self._core.append_messages(self.topic, 0, [tombstone])
            return True
        if topic not in self._messages and len(self._messages) >= self._max:
            log.warning("mqtt: %d retained messages already: not retaining %r", self._max, topic)
            return False
        stored = Message(key, message.value, message.headers, message.timestamp_ms)
        await self._core.append_messages(self.topic, 0, [stored])
        self._messages[topic] = message
        return True

    def matching(self, topic_filter: str) -> list[tuple[str, Message]]:
        return _matching(self._messages, topic_filter)


class MetadataRetainedStore(RetainedStore):
    """Retained messages in the metadata store (see the module docstring)."""

    def __init__(self, metadata: MetadataStore, max_messages: int = DEFAULT_MAX_RETAINED) -> None:
        self._metadata = metadata
        self._max = max_messages
        self._messages: dict[str, Message] = {}

    def __len__(self) -> int:
        return len(self._messages)

    async def load(self) -> int:
        for key, record in await self._metadata.list(RETAINED_PREFIX):
            topic = unquote(key[len(RETAINED_PREFIX):])
            try:
                stored = decode_batch(record.value)
            except Exception:
                log.warning("mqtt: dropping unreadable retained message for %r", topic)
                continue
            if stored:
                self._messages[topic] = stored[0].message
        return len(self._messages)

    async def set(self, topic: str, message: Message) -> bool:
        key = RETAINED_PREFIX + quote(topic, safe="")
        if not message.value:
            if self._messages.pop(topic, None) is not None:
                await self._metadata.delete(key)
            return True
        if topic not in self._messages and len(self._messages) >= self._max:
            log.warning("mqtt: %d retained messages already: not retaining %r", self._max, topic)
            return False
        await self._metadata.put(key, build_batch([message]))
        self._messages[topic] = message
        return True

    def matching(self, topic_filter: str) -> list[tuple[str, Message]]:
        return _matching(self._messages, topic_filter)
