"""Topic compaction: the compacted view, its reader, crash safety and restarts."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import pytest
from fakeclock import T0, FakeClock
from kafka.record.default_records import DefaultRecordBatch

from core.api import Core, open_core
from core.compacted_view import SnapshotTooLarge, latest_by_key, read_compacted
from core.compaction import (
    CompactionError,
    CompactionSettings,
    Compactor,
    compact_due_topics,
    compact_now,
    compacted_log_name,
    compactor_for,
    state_key,
)
from core.config import CoreSettings
from core.errors import OffsetOutOfRange
from core.names import TopicName
from core.namespaces import NamespacePolicies, TopicPolicies, resolve_policies
from core.partition import ReadEntry
from core.records import Message, build_batch, decode_batch
from storage.api import Storage, StorageError
from storage.local import open_local_storage

DAY = 24 * 3600 * 1000
NAME = TopicName("public", "default", "t")
Rec = tuple[bytes | None, bytes | None]


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
async def core(storage: Storage, clock: FakeClock) -> AsyncIterator[Core]:
    settings = CoreSettings(retention_check_interval_ms=0)
    async with open_core(storage, settings, clock_ms=clock) as c:
        await c.create_topic("t")
        yield c


async def put(core: Core, *batches: Sequence[Rec], topic: str = "t") -> None:
    """Append each sequence of (key, value) as one batch."""
    for batch in batches:
        await core.append_messages(topic, 0, [Message(k, v, [("h", b"x")], T0) for k, v in batch])


async def read_all(core: Core, start: int = 0, max_bytes: int = 1 << 20,
                   topic: str = "t") -> list[tuple[int, bytes | None, bytes | None]]:
    """(offset, key, value) of every record read through the compacted view."""
    out: list[tuple[int, bytes | None, bytes | None]] = []
    hw = await core.latest_offset(topic, 0)
    offset = start
    while offset < hw:
        entries = await read_compacted(core, topic, 0, offset, max_bytes)
        assert entries
        for entry in entries:
            check_entry(entry)
            for r in decode_batch(entry.batch):
                if r.offset >= offset:
                    out.append((r.offset, r.message.key, r.message.value))
            offset = entry.last_offset + 1
    return out


def check_entry(entry: ReadEntry) -> None:
    """A compacted entry is a valid v2 batch starting at its first record (if any)."""
    parsed = DefaultRecordBatch(bytes(entry.batch))
    assert parsed.validate_crc()
    assert parsed.base_offset == entry.base_offset
    assert parsed.base_offset + parsed.last_offset_delta == entry.last_offset
    offsets = [r.offset for r in decode_batch(entry.batch)]
    assert offsets == sorted(set(offsets))
    assert all(entry.base_offset <= o <= entry.last_offset for o in offsets)
    if offsets:
        assert offsets[0] == entry.base_offset


# ------------------------------------------------------------------ the view


async def test_latest_value_per_key_wins_and_offsets_are_kept(core: Core) -> None:
    await put(core, [(b"a", b"1"), (b"b", b"1")], [(b"a", b"2"), (None, b"nokey")],
              [(b"c", b"1"), (b"b", b"2"), (b"a", b"3")])
    (result,) = await compact_now(core, "t", 0)
    assert result.compacted and result.horizon == 7 and result.generation == 1
    assert (result.records_read, result.records_kept, result.tombstones_kept) == (6, 3, 0)
    assert await read_all(core) == [(4, b"c", b"1"), (5, b"b", b"2"), (6, b"a", b"3")]
    # headers and timestamps travel with the records
    entries = await read_compacted(core, "t", 0, 0, 1 << 20)
    first = decode_batch(entries[0].batch)[0].message
    assert first.headers == [("h", b"x")] and first.timestamp_ms == T0
    snapshot = await latest_by_key(core, "t", 0)
    assert {k: v.message.value for k, v in snapshot.items()} == {
        b"a": b"3", b"b": b"2", b"c": b"1"}
    assert snapshot[b"a"].offset == 6


async def test_gaps_inside_rebuilt_batches(core: Core) -> None:
    await put(core, [(b"k", b"0"), (b"x", b"1"), (b"k", b"2"), (b"y", b"3"), (b"k", b"4")])
    await compact_now(core, "t")
    entries = await read_compacted(core, "t", 0, 0, 1 << 20)
    assert len(entries) == 1  # one rebuilt batch with offset gaps
    assert [r.offset for r in decode_batch(entries[0].batch)] == [1, 3, 4]
    assert (entries[0].base_offset, entries[0].last_offset) == (1, 4)


async def test_tombstones_delete_and_expire(core: Core, clock: FakeClock) -> None:
    await put(core, [(b"a", b"1"), (b"b", b"1")], [(b"a", None)])
    await compact_now(core, "t")
    # the tombstone stays in the view for a while, so readers learn of the delete
    assert await read_all(core) == [(1, b"b", b"1"), (2, b"a", None)]
    assert set(await latest_by_key(core, "t", 0)) == {b"b"}
    clock.now += DAY + 1
    await put(core, [(b"c", b"1")])
    (result,) = await compact_now(core, "t", 0)
    assert result.tombstones_kept == 0
    assert await read_all(core) == [(1, b"b", b"1"), (3, b"c", b"1")]


async def test_a_tombstone_after_the_horizon_deletes_a_compacted_key(core: Core) -> None:
    await put(core, [(b"a", b"1"), (b"b", b"1")])
    await compact_now(core, "t")
    await put(core, [(b"a", None)])
    assert set(await latest_by_key(core, "t", 0)) == {b"b"}
    await compact_now(core, "t", now_ms=T0 + 2 * DAY)
    assert await read_all(core) == [(1, b"b", b"1")]


async def test_empty_value_is_a_value_unless_asked(core: Core) -> None:
    await put(core, [(b"a", b"1"), (b"a", b""), (b"b", b"1")])
    await compact_now(core, "t")
    assert await read_all(core) == [(1, b"a", b""), (2, b"b", b"1")]
    assert set(await latest_by_key(core, "t", 0)) == {b"a", b"b"}
    assert set(await latest_by_key(core, "t", 0, empty_is_delete=True)) == {b"b"}


async def test_control_batches_are_not_in_the_view(core: Core) -> None:
    await put(core, [(b"a", b"1")])
    control = bytearray(build_batch([Message(b"\x00\x00\x00\x01", b"\x00" * 6, [], T0)]))
    # set the control bit and fix the CRC (attributes are covered by it)
    from kafka.record.util import calc_crc32c

    control[22] |= 0x20
    control[17:21] = calc_crc32c(bytes(control[21:])).to_bytes(4, "big")
    await core.append("t", 0, bytes(control), allow_control=True)
    (result,) = await compact_now(core, "t", 0)
    assert result.records_read == 1
    assert await read_all(core) == [(0, b"a", b"1")]


# ------------------------------------------------------------------ reading


async def test_reading_across_the_horizon(core: Core) -> None:
    await put(core, [(b"a", b"1"), (b"b", b"1")], [(b"a", b"2")])
    await compact_now(core, "t")  # horizon 3
    await put(core, [(b"b", b"2"), (b"c", b"1")], [(b"a", b"3")])
    assert await read_all(core) == [
        (1, b"b", b"1"), (2, b"a", b"2"), (3, b"b", b"2"), (4, b"c", b"1"), (5, b"a", b"3")]
    # one call with a large budget: compacted entries, then live ones
    entries = await read_compacted(core, "t", 0, 0, 1 << 20)
    assert [(e.base_offset, e.last_offset) for e in entries] == [(1, 2), (3, 4), (5, 5)]
    # a tiny budget still returns one entry
    assert len(await read_compacted(core, "t", 0, 0, 1)) == 1
    # from inside the compacted range and from the live range
    assert [r[0] for r in await read_all(core, 2)] == [2, 3, 4, 5]
    assert await read_compacted(core, "t", 0, 4, 1 << 20) == await core.read("t", 0, 4, 1 << 20)
    assert await read_compacted(core, "t", 0, 6, 1 << 20) == []
    with pytest.raises(OffsetOutOfRange):
        await read_compacted(core, "t", 0, 7, 1 << 20)
    with pytest.raises(OffsetOutOfRange):
        await read_compacted(core, "t", 0, -1, 1 << 20)


async def test_without_a_view_reads_are_live_reads(core: Core) -> None:
    await put(core, [(b"a", b"1")], [(b"a", b"2")])
    assert await read_compacted(core, "t", 0, 0, 1 << 20) == await core.read("t", 0, 0, 1 << 20)
    snapshot = await latest_by_key(core, "t", 0)
    assert snapshot[b"a"].message.value == b"2"


async def test_an_empty_compacted_log_falls_through_to_live(core: Core) -> None:
    await put(core, [(None, b"x")])
    (result,) = await compact_now(core, "t", 0)
    assert result.compacted and result.entries_written == 1  # a batch with no records
    await put(core, [(b"a", b"1")])
    assert await read_all(core) == [(1, b"a", b"1")]


async def test_reader_with_a_swapped_view_retries(core: Core) -> None:
    await put(core, [(b"a", b"1"), (b"a", b"2")])
    await compact_now(core, "t")
    compactor = compactor_for(core)
    stale = await compactor.view(NAME, 0)
    await put(core, [(b"a", b"3"), (b"b", b"1")])
    await compact_now(core, "t")  # deletes generation 1's log
    compactor._views[(NAME, 0)] = stale  # a reader that still holds the old view
    assert await read_all(core) == [(2, b"a", b"3"), (3, b"b", b"1")]
    compactor._views[(NAME, 0)] = stale
    assert set(await latest_by_key(core, "t", 0)) == {b"a", b"b"}


async def test_snapshot_filter_and_limit(core: Core) -> None:
    await put(core, [(f"k{i}".encode(), b"v") for i in range(5)] + [(b"other", b"v")])
    await compact_now(core, "t")
    assert set(await latest_by_key(core, "t", 0, key_filter=lambda k: k == b"other")) == {
        b"other"}
    with pytest.raises(SnapshotTooLarge):
        await latest_by_key(core, "t", 0, max_keys=3)


# ------------------------------------------------------------------ runs


async def test_incremental_runs_swap_generations(core: Core, storage: Storage) -> None:
    await put(core, [(b"a", b"1"), (b"b", b"1")])
    (first,) = await compact_now(core, "t", 0)
    assert (first.generation, first.horizon) == (1, 2)
    await put(core, [(b"a", b"2")])
    (second,) = await compact_now(core, "t", 0)
    assert (second.generation, second.previous_horizon, second.horizon) == (2, 2, 3)
    assert second.records_read == 3  # two from the old view, one new
    logs = await storage.list_logs()
    assert compacted_log_name(NAME, 0, 1) not in logs
    assert compacted_log_name(NAME, 0, 2) in logs
    (idle,) = await compact_now(core, "t", 0)
    assert not idle.compacted and idle.generation == 2
    assert await read_all(core) == [(1, b"b", b"1"), (2, b"a", b"2")]


async def test_max_keys_stops_early_then_refuses(core: Core) -> None:
    compactor = Compactor(core, CompactionSettings(max_keys=2))
    await put(core, [(b"a", b"1")], [(b"b", b"1")], [(b"c", b"1")], [(b"a", b"2")])
    result = await compactor.compact("t", 0)
    assert result.horizon == 2  # stopped at an entry boundary
    assert await read_all(core) == [(0, b"a", b"1"), (1, b"b", b"1"), (2, b"c", b"1"),
                                    (3, b"a", b"2")]
    with pytest.raises(CompactionError):
        await compactor.compact("t", 0)


async def test_many_records_make_several_bounded_batches(core: Core) -> None:
    compactor = Compactor(core, CompactionSettings(batch_records=7, append_entries=2))
    await put(core, *[[(f"k{i % 40}".encode(), str(i).encode())] for i in range(100)])
    result = await compactor.compact("t", 0)
    assert result.records_kept == 40 and result.entries_written == 6
    assert [r[0] for r in await read_all(core, max_bytes=300)] == list(range(60, 100))


async def test_periodic_pass_follows_the_policy(core: Core) -> None:
    await core.create_topic("plain")
    await core.set_topic_policies("t", compacted=True)
    await put(core, [(b"a", b"1"), (b"a", b"2")])
    await put(core, [(b"a", b"1"), (b"a", b"2")], topic="plain")
    done = await compact_due_topics(core)
    assert [(r.topic.local, r.horizon) for r in done] == [("t", 2)]
    assert await compact_due_topics(core) == []  # nothing new


def test_compacted_policy_resolution() -> None:
    settings = CoreSettings()
    assert not resolve_policies(settings, NamespacePolicies()).compacted
    assert resolve_policies(settings, NamespacePolicies(compacted=True)).compacted
    assert not resolve_policies(settings, NamespacePolicies(compacted=True),
                                TopicPolicies(compacted=False)).compacted
    assert resolve_policies(settings, NamespacePolicies(), TopicPolicies(compacted=True)).compacted


async def test_drop_removes_view_and_state(core: Core, storage: Storage) -> None:
    await put(core, [(b"a", b"1")])
    await compact_now(core, "t")
    await compactor_for(core).drop("t", 1)
    assert await storage.metadata.get(state_key(NAME, 0)) is None
    assert compacted_log_name(NAME, 0, 1) not in await storage.list_logs()
    assert await read_all(core) == [(0, b"a", b"1")]


# ------------------------------------------------------------------ crash safety


class Boom(StorageError):
    pass


async def test_crash_before_the_flip_keeps_the_old_view(
    core: Core, storage: Storage, monkeypatch: pytest.MonkeyPatch
) -> None:
    await put(core, [(b"a", b"1"), (b"b", b"1")])
    await compact_now(core, "t")
    await put(core, [(b"a", None), (b"b", b"2")])
    before = await read_all(core)
    real_put = storage.metadata.put

    async def failing_put(key: str, value: bytes, expected_version: int | None = None) -> int:
        if key == state_key(NAME, 0):
            raise Boom("crash at the flip")
        return await real_put(key, value, expected_version)

    monkeypatch.setattr(storage.metadata, "put", failing_put)
    with pytest.raises(Boom):
        await compact_now(core, "t", 0)
    monkeypatch.setattr(storage.metadata, "put", real_put)
    # the old view still serves, in this process and after a "restart" of the compactor
    assert await read_all(core) == before
    fresh = Compactor(core)
    view = await fresh.view(NAME, 0)
    assert (view.state.generation, view.state.horizon) == (1, 2)
    # the next run reuses the orphan's name and finishes the job
    (result,) = await compact_now(core, "t", 0)
    assert (result.generation, result.horizon) == (2, 4)
    assert await read_all(core) == [(2, b"a", None), (3, b"b", b"2")]


async def test_crash_while_writing_keeps_the_old_view(
    core: Core, storage: Storage, monkeypatch: pytest.MonkeyPatch
) -> None:
    await put(core, [(b"a", b"1")])
    await compact_now(core, "t")
    await put(core, [(b"a", b"2")])
    before = await read_all(core)

    async def failing_sync(self: object) -> None:
        raise Boom("disk gone")

    log_type = type(await storage.open_log(compacted_log_name(NAME, 0, 1)))
    monkeypatch.setattr(log_type, "sync", failing_sync)
    with pytest.raises(Boom):
        await compact_now(core, "t", 0)
    monkeypatch.undo()
    assert await read_all(core) == before
    (result,) = await compact_now(core, "t", 0)
    assert result.generation == 2
    assert await read_all(core) == [(1, b"a", b"2")]


async def test_crash_after_the_flip_leaves_an_orphan_the_next_run_deletes(
    core: Core, storage: Storage, monkeypatch: pytest.MonkeyPatch
) -> None:
    await put(core, [(b"a", b"1")])
    await compact_now(core, "t")
    await put(core, [(b"a", b"2")])
    real_delete = storage.delete_log

    async def failing_delete(name: str) -> None:
        if name == compacted_log_name(NAME, 0, 1):
            raise Boom("crash before the old log went")
        await real_delete(name)

    monkeypatch.setattr(storage, "delete_log", failing_delete)
    with pytest.raises(Boom):
        await compact_now(core, "t", 0)
    monkeypatch.undo()
    # the new view is committed
    assert await read_all(core) == [(1, b"a", b"2")]
    assert compacted_log_name(NAME, 0, 1) in await storage.list_logs()
    await put(core, [(b"b", b"1")])
    await compact_now(core, "t", 0)
    logs = await storage.list_logs()
    assert compacted_log_name(NAME, 0, 1) not in logs
    assert compacted_log_name(NAME, 0, 3) in logs


async def test_deleting_a_topic_drops_its_view(core: Core) -> None:
    await put(core, [(b"a", b"1"), (b"b", b"1"), (b"c", b"1")])
    await compact_now(core, "t")
    await core.delete_topic("t")  # the core drops the compacted view and its state
    await core.create_topic("t")
    await put(core, [(b"z", b"1")])
    assert await read_all(core) == [(0, b"z", b"1")]
    assert set(await latest_by_key(core, "t", 0)) == {b"z"}
    (result,) = await compact_now(core, "t", 0)
    assert (result.generation, result.horizon, result.previous_horizon) == (1, 1, 0)
    assert await read_all(core) == [(0, b"z", b"1")]


# ------------------------------------------------------------------ restart


async def test_view_survives_a_restart_on_the_file_backend(tmp_path: Path) -> None:
    settings = CoreSettings(retention_check_interval_ms=0)
    async with (
        open_local_storage(tmp_path, segment_bytes=512) as storage,
        open_core(storage, settings, clock_ms=FakeClock()) as core,
    ):
        await core.create_topic("t")
        await put(core, *[[(f"k{i % 5}".encode(), str(i).encode())] for i in range(30)])
        await compact_now(core, "t")
        await put(core, [(b"k0", None)])
        before = await read_all(core)
    async with (
        open_local_storage(tmp_path, segment_bytes=512) as storage,
        open_core(storage, settings, clock_ms=FakeClock()) as core,
    ):
        assert await read_all(core) == before
        (result,) = await compact_now(core, "t", 0)
        assert (result.generation, result.previous_horizon, result.horizon) == (2, 30, 31)
        assert await read_all(core) == [(26, b"k1", b"26"), (27, b"k2", b"27"),
                                        (28, b"k3", b"28"), (29, b"k4", b"29"),
                                        (30, b"k0", None)]
        assert await storage.list_logs() == [NAME.log_name(0), compacted_log_name(NAME, 0, 2)]


async def test_a_reader_in_the_trailing_gap_is_carried_to_the_horizon(core: Core) -> None:
    await put(core, [(b"a", b"1"), (None, b"x"), (None, b"y")])
    await compact_now(core, "t")
    (entry,) = await read_compacted(core, "t", 0, 1, 1 << 20)
    assert (entry.base_offset, entry.last_offset) == (0, 2)
    await put(core, [(b"a", None)])
    await compact_now(core, "t", now_ms=T0 + 2 * DAY)  # nothing survives at all
    (entry,) = await read_compacted(core, "t", 0, 0, 1 << 20)
    assert (entry.base_offset, entry.last_offset) == (3, 3)
    assert decode_batch(entry.batch) == []
    assert await read_all(core) == []


async def test_a_concurrent_flip_makes_the_run_fail_cleanly(
    core: Core, storage: Storage, monkeypatch: pytest.MonkeyPatch
) -> None:
    await put(core, [(b"a", b"1")])
    await compact_now(core, "t")
    await put(core, [(b"a", b"2")])
    real_put = storage.metadata.put

    async def racing_put(key: str, value: bytes, expected_version: int | None = None) -> int:
        if key == state_key(NAME, 0):
            current = await storage.metadata.get(key)
            assert current is not None
            await real_put(key, current.value)  # another writer got there first
        return await real_put(key, value, expected_version)

    monkeypatch.setattr(storage.metadata, "put", racing_put)
    with pytest.raises(CompactionError):
        await compact_now(core, "t", 0)
    monkeypatch.undo()
    logs = await storage.list_logs()
    assert compacted_log_name(NAME, 0, 2) not in logs  # the new log was removed
    assert compacted_log_name(NAME, 0, 1) in logs
    assert await read_all(core) == [(0, b"a", b"1"), (1, b"a", b"2")]  # the old view


async def test_periodic_pass_skips_a_failing_partition(
    core: Core, monkeypatch: pytest.MonkeyPatch
) -> None:
    await core.create_topic("two", 2, policies=TopicPolicies(compacted=True))
    for p in (0, 1):
        await core.append_messages("two", p, [Message(b"k", b"v", [], T0)])
    compactor = compactor_for(core)
    real = compactor._compact

    async def flaky(name: TopicName, partition: int, now_ms: int | None,
                    min_new: int) -> object:
        if partition == 0:
            raise CompactionError("boom")
        return await real(name, partition, now_ms, min_new)

    monkeypatch.setattr(compactor, "_compact", flaky)
    done = await compact_due_topics(core)
    assert [(r.topic.local, r.partition) for r in done] == [("two", 1)]


def test_settings_are_checked() -> None:
    with pytest.raises(ValueError):
        CompactionSettings(max_keys=0)
    with pytest.raises(ValueError):
        CompactionSettings(tombstone_retention_ms=-1)
