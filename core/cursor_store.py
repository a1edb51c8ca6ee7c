"""Cursors persisted in the metadata store.

One record per (partition log, subscription)::

    cursors/<log name>/<subscription, percent-encoded>

``<log name>`` is the partition's storage log name
(:meth:`core.names.TopicName.log_name`, e.g.
``persistent/public/default/orders/p-0``); the subscription name is
percent-encoded (:func:`urllib.parse.quote` with no safe characters), so any
Kafka group id, AMQP queue name or MQTT client id maps to one ``/``-free key
component.  The value is :meth:`core.cursor.Cursor.to_bytes`.

:meth:`CursorStore.save` goes through
:meth:`~storage.api.MetadataStore.put_coalesced`: the store keeps only the
latest value per key and writes many in one transaction, so an ack storm is not
a write storm.  :meth:`CursorStore.flush` waits until saved cursors are durable.

Serialising a cursor costs O(ranges) (at most ``max_persisted_ranges``), so
for cursors with many ack holes saving after *every* ack is CPU-bound.  The
alternative: :meth:`CursorStore.mark_dirty` after each ack (O(1)) and
:meth:`CursorStore.save_dirty` at the owner's own pace (once per dispatch round
or timer tick); each dirty cursor is then serialised once per round, however
many acks it took.
"""

from __future__ import annotations

import builtins
import functools
from urllib.parse import quote, unquote

from core.cursor import (
    DEFAULT_MAX_PERSISTED_RANGES,
    DEFAULT_MAX_TRACKED_REDELIVERIES,
    Cursor,
)
from storage.api import MetadataStore

__all__ = ["CURSORS_PREFIX", "DEFAULT_MAX_DIRTY", "CursorStore", "cursor_key"]

CURSORS_PREFIX = "cursors/"
DEFAULT_MAX_DIRTY = 1024
#: cursor keys remembered by :func:`cursor_key`
_KEY_CACHE_SIZE = 4096


def _check_log_name(log_name: str) -> None:
    if not log_name or any(part == "" for part in log_name.split("/")):
        raise ValueError(f"invalid log name {log_name!r}")


def _check_subscription(subscription: str) -> None:
    if not subscription:
        raise ValueError("empty subscription name")


@functools.lru_cache(maxsize=_KEY_CACHE_SIZE)
def cursor_key(log_name: str, subscription: str) -> str:
    """The metadata key of ``subscription``'s cursor on the partition log ``log_name``.

    Memoised (bounded): a subscription saves its cursor once per dispatch pass.
    Invalid names raise ``ValueError``, which is never cached.
    """
    _check_log_name(log_name)
    _check_subscription(subscription)
    return f"{CURSORS_PREFIX}{log_name}/{quote(subscription, safe='')}"


class CursorStore:
    """Save, load, delete and list cursors kept in a :class:`~storage.api.MetadataStore`.

    Loaded cursors get ``max_persisted_ranges`` and ``max_tracked_redeliveries``.
    At most ``max_dirty`` cursors wait in the dirty set (see :meth:`mark_dirty`).
    """

    def __init__(
        self,
        metadata: MetadataStore,
        *,
        max_persisted_ranges: int = DEFAULT_MAX_PERSISTED_RANGES,
        max_tracked_redeliveries: int = DEFAULT_MAX_TRACKED_REDELIVERIES,
        max_dirty: int = DEFAULT_MAX_DIRTY,
    ) -> None:
        if max_dirty < 1:
            raise ValueError("max_dirty must be at least 1")
        self._md = metadata
        self._max_ranges = max_persisted_ranges
        self._max_redeliveries = max_tracked_redeliveries
        self._max_dirty = max_dirty
        self._dirty: dict[str, Cursor] = {}

    def _decode(self, data: bytes) -> Cursor:
        return Cursor.from_bytes(
            data,
            max_persisted_ranges=self._max_ranges,
            max_tracked_redeliveries=self._max_redeliveries,
        )

    def save(self, log_name: str, subscription: str, cursor: Cursor) -> None:
        """Record ``cursor``'s current state without waiting (coalesced write).

        Call it after every ack: only the latest state per subscription is
        written, in the store's next batch.  ``load``/``list`` see it at once;
        :meth:`flush` waits until it is durable.  May raise
        :class:`~storage.api.StorageError` when the store is closed or too many
        coalesced writes are pending.
        """
        key = cursor_key(log_name, subscription)
        self._dirty.pop(key, None)
        self._md.put_coalesced(key, cursor.to_bytes())

    def mark_dirty(self, log_name: str, subscription: str, cursor: Cursor) -> None:
        """Note that ``cursor`` changed, without serialising it yet (O(1)).

        It is saved by the next :meth:`save_dirty` or :meth:`flush`, or at once
        by ``load``/``list``/``load_all`` of its log so they never see an older
        state.  When ``max_dirty`` cursors are waiting, every dirty cursor is
        saved on the spot.  Keep the cursor object alive and unchanged in
        meaning: the state saved is the one it has when saved.
        """
        self._dirty[cursor_key(log_name, subscription)] = cursor
        if len(self._dirty) >= self._max_dirty:
            self.save_dirty()

    def save_dirty(self) -> int:
        """Save every cursor marked dirty (coalesced writes); return how many."""
        dirty, self._dirty = self._dirty, {}
        for key, cursor in dirty.items():
            self._md.put_coalesced(key, cursor.to_bytes())
        return len(dirty)

    def _save_dirty_under(self, prefix: str) -> None:
        for key in [k for k in self._dirty if k.startswith(prefix)]:
            self._md.put_coalesced(key, self._dirty.pop(key).to_bytes())

    async def save_now(self, log_name: str, subscription: str, cursor: Cursor) -> None:
        """Write ``cursor``'s state and wait until it is stored (subscription creation, seek)."""
        key = cursor_key(log_name, subscription)
        self._dirty.pop(key, None)
        await self._md.put(key, cursor.to_bytes())

    async def flush(self) -> None:
        """Save dirty cursors, then wait until every cursor saved so far is stored."""
        self.save_dirty()
        await self._md.flush()

    async def load(self, log_name: str, subscription: str) -> Cursor | None:
        """The stored cursor, or None when the subscription has none.

        Raises :class:`~core.cursor.CorruptCursor` when the record cannot be decoded.
        """
        key = cursor_key(log_name, subscription)
        dirty = self._dirty.pop(key, None)
        if dirty is not None:
            self._md.put_coalesced(key, dirty.to_bytes())
        record = await self._md.get(key)
        return None if record is None else self._decode(record.value)

    async def delete(self, log_name: str, subscription: str) -> bool:
        """Delete the stored cursor (and forget it if dirty); return whether there was one."""
        key = cursor_key(log_name, subscription)
        dirty = self._dirty.pop(key, None)
        return await self._md.delete(key) or dirty is not None

    async def list(self, log_name: str) -> builtins.list[str]:
        """Names of the subscriptions with a stored cursor on ``log_name``, sorted by key."""
        return [name for name, _ in await self._records(log_name)]

    async def load_all(self, log_name: str) -> dict[str, Cursor]:
        """Every stored cursor on ``log_name``, by subscription name (partition recovery)."""
        return {name: self._decode(value) for name, value in await self._records(log_name)}

    async def delete_all(self, log_name: str) -> int:
        """Delete every cursor on ``log_name`` (topic deletion); return how many."""
        names = await self.list(log_name)
        deleted = 0
        for name in names:
            deleted += await self.delete(log_name, name)
        return deleted

    async def _records(self, log_name: str) -> builtins.list[tuple[str, bytes]]:
        _check_log_name(log_name)
        prefix = f"{CURSORS_PREFIX}{log_name}/"
        self._save_dirty_under(prefix)
        out = []
        for key, record in await self._md.list(prefix):
            rest = key[len(prefix) :]
            if rest and "/" not in rest:  # not a cursor of a longer log name
                out.append((unquote(rest), record.value))
        return out
