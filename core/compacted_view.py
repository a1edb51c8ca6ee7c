"""Reading a partition through its compacted view (see :mod:`core.compaction`).

* :func:`read_compacted` is :meth:`core.api.Core.read` for compacted reads (a Kafka
  fetch on a compacted topic): entries from the compacted log below the horizon,
  then the live log from the horizon on, in the same :class:`ReadEntry` shape.
  Batches from the compacted log have gaps between record offsets, so
  ``ReadEntry.record_count`` counts offsets, not records.
* :func:`latest_by_key` is a snapshot ``key -> last record`` (MQTT retained
  messages), bounded by ``max_keys``.

Both retry when a compaction swaps the view under them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from core.compaction import (
    CompactionError,
    Compactor,
    LoadedView,
    compactor_for,
    data_records,
    scan_compacted_log,
    scan_live_log,
)
from core.entry import decode_entry
from core.errors import OffsetOutOfRange, PartitionUnavailable
from core.names import TopicName
from core.partition import ReadEntry
from core.records import StoredMessage
from storage.api import LogClosedError, PartitionLog, PositionOutOfRangeError

if TYPE_CHECKING:
    from core.api import Core, TopicRef

__all__ = ["DEFAULT_SNAPSHOT_KEYS", "SnapshotTooLarge", "latest_by_key", "read_compacted"]

#: Default cap on the keys of a :func:`latest_by_key` snapshot.
DEFAULT_SNAPSHOT_KEYS = 10_000
_READ_BYTES = 1024 * 1024
_RETRIES = 4


class SnapshotTooLarge(CompactionError):
    """A :func:`latest_by_key` snapshot would hold more than its ``max_keys``."""


async def _current(compactor: Compactor, topic: TopicName, partition: int,
                   hw: int) -> LoadedView | None:
    """The committed view, or None when there is none (or it is stale)."""
    view = await compactor.view(topic, partition)
    if view.log is None or view.state.horizon > hw:
        return None
    return view


async def read_compacted(
    core: Core, topic: TopicRef, partition: int, from_offset: int, max_bytes: int
) -> list[ReadEntry]:
    """Entries of the compacted view from ``from_offset``, up to ``max_bytes`` (at least one).

    Below the horizon the entries come from the compacted log: the first one is the
    first batch with a record at or after ``from_offset`` (it may start before it).
    When the compacted log is exhausted the budget left is filled from the live log
    from the horizon on.  ``[]`` at the high watermark; :class:`OffsetOutOfRange`
    past it (or for a negative offset).
    """
    name = core.parse_topic(topic).base
    compactor = compactor_for(core)
    for _ in range(_RETRIES):
        hw = await core.latest_offset(name, partition)
        view = await _current(compactor, name, partition, hw)
        if view is None or from_offset >= view.state.horizon:
            return await core.read(name, partition, from_offset, max_bytes)
        if from_offset < 0:
            raise OffsetOutOfRange(from_offset, 0, hw)
        assert view.log is not None
        try:
            out, exhausted = await _read_log(view.log, from_offset, max_bytes)
        except (LogClosedError, PositionOutOfRangeError):
            compactor.invalidate(name, partition)  # swapped by a compaction: reload
            continue
        used = sum(len(e.batch) for e in out)
        horizon = view.state.horizon
        if exhausted and horizon < hw and (not out or used < max_bytes):
            for entry in await _read_live(core, name, partition, horizon, max_bytes - used):
                if out and used + len(entry.batch) > max_bytes:
                    break
                out.append(entry)
                used += len(entry.batch)
        return out
    raise PartitionUnavailable("compaction kept replacing the compacted view")


async def _read_log(
    clog: PartitionLog, from_offset: int, max_bytes: int
) -> tuple[list[ReadEntry], bool]:
    """Entries of a compacted log from the one holding ``from_offset``; and whether the
    read reached the end of the log."""
    floor = await clog.floor_position(from_offset - 1) if from_offset > 0 else None
    position = clog.start_position if floor is None else max(floor + 1, clog.start_position)
    stored = await clog.read(position, max_bytes)
    out = []
    for item in stored:
        entry = decode_entry(item.data)
        out.append(ReadEntry(entry.index, item.key, entry.broker_timestamp, entry.batch))
    end = stored[-1].position + 1 if stored else position
    return out, end >= clog.end_position


async def _read_live(
    core: Core, topic: TopicName, partition: int, offset: int, max_bytes: int
) -> list[ReadEntry]:
    try:
        return await core.read(topic, partition, offset, max(max_bytes, 1))
    except OffsetOutOfRange:
        # retention dropped live entries past the horizon: go on from what is left
        earliest = await core.earliest_offset(topic, partition)
        if earliest <= offset:
            raise
        return await core.read(topic, partition, earliest, max(max_bytes, 1))


async def latest_by_key(
    core: Core, topic: TopicRef, partition: int, *,
    max_keys: int = DEFAULT_SNAPSHOT_KEYS,
    key_filter: Callable[[bytes], bool] | None = None,
    empty_is_delete: bool = False,
) -> dict[bytes, StoredMessage]:
    """A snapshot of the view up to the high watermark: each key's last record.

    Keys whose last record is a tombstone (null value; also an empty value with
    ``empty_is_delete``, MQTT's rule for retained messages) are absent.  Only keys
    for which ``key_filter`` is true are kept.  Raises :class:`SnapshotTooLarge`
    when more than ``max_keys`` keys are held at once while building it.  The
    snapshot holds every kept record in memory: ``max_keys`` bounds it.
    """
    name = core.parse_topic(topic).base
    for _ in range(_RETRIES):
        found = await _snapshot(core, name, partition, max_keys, key_filter, empty_is_delete)
        if found is not None:
            return found
    raise PartitionUnavailable("compaction kept replacing the compacted view")


async def _snapshot(
    core: Core, name: TopicName, partition: int, max_keys: int,
    key_filter: Callable[[bytes], bool] | None, empty_is_delete: bool,
) -> dict[bytes, StoredMessage] | None:
    """One attempt at :func:`latest_by_key`; None when a compaction swapped the view."""
    compactor = compactor_for(core)
    hw = await core.latest_offset(name, partition)
    view = await _current(compactor, name, partition, hw)
    out: dict[bytes, StoredMessage] = {}

    async def visit(entry: ReadEntry) -> bool:
        for rec in data_records(entry):
            key = rec.message.key
            assert key is not None
            if key_filter is not None and not key_filter(key):
                continue
            value = rec.message.value
            if value is None or (empty_is_delete and not value):
                out.pop(key, None)
                continue
            out[key] = rec
            if len(out) > max_keys:
                raise SnapshotTooLarge(f"{name} partition {partition}: more than {max_keys} keys")
        return True

    if view is not None:
        assert view.log is not None
        try:
            await scan_compacted_log(view.log, _READ_BYTES, visit)
        except (LogClosedError, PositionOutOfRangeError):
            compactor.invalidate(name, partition)
            return None
        start = view.state.horizon
    else:
        start = await core.earliest_offset(name, partition)
    await scan_live_log(core, name, partition, start, hw, _READ_BYTES, visit)
    return out
