"""Committed offsets of Kafka groups, kept as the groups' cursors in the core.

Storage layout (metadata store)
-------------------------------
* ``cursors/<partition log name>/kafka%3A<group id>`` -- the group's
  :class:`core.cursor.Cursor` on that partition, written by :class:`core.cursor_store.CursorStore`
  (coalesced writes).  The subscription name is ``kafka:<group id>`` (see
  :func:`subscription_name`); ``mark_delete`` is the committed offset, i.e. the next offset the
  group will consume -- exactly Kafka's meaning of a committed offset.
* ``kafka/offsets/<group>/<topic>/<partition>`` -- the rest of the commit (group and topic
  percent-encoded): the leader epoch, the commit time, the metadata string and the partition's
  log name.  Listing ``kafka/offsets/<group>/`` finds every partition a group committed.
* ``kafka/groups/<group>`` -- an (empty) record per group that has committed offsets, so
  ListGroups still shows such groups after a restart, when no member has joined yet.

A commit returns once its records are durable (:meth:`MetadataStore.flush`, which writes every
coalesced record pending so far in one transaction, so concurrent commits share it).  Committing
a negative offset deletes the committed offset (Kafka would store -1, which fetches as "none").
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from urllib.parse import quote, unquote

from core.cursor import CorruptCursor, Cursor
from core.cursor_store import CursorStore
from storage.api import MetadataStore

__all__ = [
    "DEFAULT_MAX_CACHED_GROUPS",
    "GROUPS_PREFIX",
    "OFFSETS_PREFIX",
    "CommittedOffset",
    "OffsetStore",
    "TopicPartition",
    "subscription_name",
]

OFFSETS_PREFIX = "kafka/offsets/"
GROUPS_PREFIX = "kafka/groups/"
_FORMAT = 1
_HEAD = struct.Struct(">BiqI")  # version, leader epoch, commit time, metadata length + 1

TopicPartition = tuple[str, int]


def subscription_name(group_id: str) -> str:
    """The core subscription (cursor) name of Kafka group ``group_id``."""
    return f"kafka:{group_id}"


def _q(text: str) -> str:
    return quote(text, safe="")


@dataclass(frozen=True, slots=True)
class CommittedOffset:
    """One committed offset with what Kafka stores next to it."""

    offset: int
    leader_epoch: int = -1
    metadata: str | None = ""
    commit_time_ms: int = -1


def _encode_extras(committed: CommittedOffset, log_name: str) -> bytes:
    meta = None if committed.metadata is None else committed.metadata.encode("utf-8")
    head = _HEAD.pack(_FORMAT, committed.leader_epoch, committed.commit_time_ms,
                      0 if meta is None else len(meta) + 1)
    return head + (meta or b"") + log_name.encode("utf-8")


def _decode_extras(data: bytes) -> tuple[int, int, str | None, str] | None:
    """``(leader epoch, commit time, metadata, log name)``, or None when unreadable."""
    if len(data) < _HEAD.size or data[0] != _FORMAT:
        return None
    _, epoch, when, meta_len = _HEAD.unpack_from(data)
    pos = _HEAD.size
    try:
        meta = None if meta_len == 0 else data[pos:pos + meta_len - 1].decode("utf-8")
        pos += max(meta_len - 1, 0)
        log_name = data[pos:].decode("utf-8")
    except UnicodeDecodeError:
        return None
    return epoch, when, meta, log_name


DEFAULT_MAX_CACHED_GROUPS = 10_000


class OffsetStore:
    """Committed offsets per group (loaded lazily, then served from memory).

    At most ``max_cached_groups`` groups stay in memory (the least recently loaded go first;
    they are read back from the store when needed again).
    """

    def __init__(self, metadata: MetadataStore, *,
                 max_cached_groups: int = DEFAULT_MAX_CACHED_GROUPS) -> None:
        if max_cached_groups < 1:
            raise ValueError("max_cached_groups must be at least 1")
        self._md = metadata
        self._max_cached = max_cached_groups
        self._cursors = CursorStore(metadata)
        self._groups: dict[str, dict[TopicPartition, tuple[CommittedOffset, Cursor, str]]] = {}

    async def _load(self, group_id: str
                    ) -> dict[TopicPartition, tuple[CommittedOffset, Cursor, str]]:
        loaded = self._groups.pop(group_id, None)
        if loaded is not None:
            self._groups[group_id] = loaded  # most recently used last
            return loaded
        prefix = f"{OFFSETS_PREFIX}{_q(group_id)}/"
        found: dict[TopicPartition, tuple[CommittedOffset, Cursor, str]] = {}
        for key, record in await self._md.list(prefix):
            topic_q, _, part = key[len(prefix):].partition("/")
            extras = _decode_extras(record.value)
            if extras is None or not part.isdigit():
                continue
            epoch, when, meta, log_name = extras
            try:
                cursor = await self._cursors.load(log_name, subscription_name(group_id))
            except (CorruptCursor, ValueError):
                cursor = None
            if cursor is None:
                continue  # its topic was deleted with its cursors
            committed = CommittedOffset(cursor.mark_delete, epoch, meta, when)
            found[(unquote(topic_q), int(part))] = (committed, cursor, log_name)
        # another task may have loaded (and committed) meanwhile: keep its state
        loaded = self._groups.setdefault(group_id, found)
        while len(self._groups) > self._max_cached:
            del self._groups[next(iter(self._groups))]  # every commit is stored: safe to drop
        return loaded

    async def fetch(self, group_id: str) -> dict[TopicPartition, CommittedOffset]:
        """Every committed offset of the group."""
        return {tp: entry[0] for tp, entry in (await self._load(group_id)).items()}

    async def has_offsets(self, group_id: str) -> bool:
        """Whether the group has committed offsets."""
        return bool(await self._load(group_id))

    async def has_group(self, group_id: str) -> bool:
        """Whether the group has a group record (it committed offsets, and was not deleted)."""
        if await self._md.get(f"{GROUPS_PREFIX}{_q(group_id)}") is not None:
            return True
        return await self.has_offsets(group_id)

    async def commit(self, group_id: str, offsets: dict[TopicPartition,
                                                        tuple[CommittedOffset, str]]) -> None:
        """Store ``(topic, partition) -> (committed offset, partition log name)`` durably."""
        group = await self._load(group_id)
        sub = subscription_name(group_id)
        if offsets and not group:
            self._md.put_coalesced(f"{GROUPS_PREFIX}{_q(group_id)}", b"")
        for tp, (committed, log_name) in offsets.items():
            if committed.offset < 0:
                await self._delete_one(group_id, group, tp)
                continue
            entry = group.get(tp)
            if entry is None or entry[2] != log_name:
                cursor = Cursor(committed.offset)
            else:
                cursor = entry[1]
                cursor.reset(committed.offset)
            group[tp] = (committed, cursor, log_name)
            self._cursors.save(log_name, sub, cursor)
            self._md.put_coalesced(self._key(group_id, tp), _encode_extras(committed, log_name))
        await self._cursors.flush()

    async def delete(self, group_id: str, partitions: list[TopicPartition]) -> None:
        """Forget the committed offsets of ``partitions`` (OffsetDelete)."""
        group = await self._load(group_id)
        for tp in partitions:
            await self._delete_one(group_id, group, tp)

    async def delete_group(self, group_id: str) -> None:
        """Forget every committed offset of the group and the group record (DeleteGroups)."""
        group = await self._load(group_id)
        for tp in list(group):
            await self._delete_one(group_id, group, tp)
        await self._md.delete(f"{GROUPS_PREFIX}{_q(group_id)}")
        self._groups.pop(group_id, None)

    async def _delete_one(self, group_id: str, group: dict[TopicPartition, tuple[
            CommittedOffset, Cursor, str]], tp: TopicPartition) -> None:
        entry = group.pop(tp, None)
        if entry is None:
            return
        await self._cursors.delete(entry[2], subscription_name(group_id))
        await self._md.delete(self._key(group_id, tp))

    async def stored_groups(self) -> list[str]:
        """Ids of the groups that have a group record (committed offsets at some point)."""
        return [unquote(key[len(GROUPS_PREFIX):])
                for key, _ in await self._md.list(GROUPS_PREFIX)]

    @staticmethod
    def _key(group_id: str, tp: TopicPartition) -> str:
        return f"{OFFSETS_PREFIX}{_q(group_id)}/{_q(tp[0])}/{tp[1]}"
