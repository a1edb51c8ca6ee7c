"""The local log's tail cache: reads of fresh entries are served from memory, exactly as the
segment files would serve them, within a byte bound."""

from __future__ import annotations

import random
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import trio

import storage.partition_log as partition_log
from storage.api import DurabilityPolicy, EntryIn, PositionOutOfRangeError, StoredEntry
from storage.partition_log import LocalLog
from storage.segment import ENTRY_HEADER_SIZE, SEGMENT_HEADER_SIZE


@asynccontextmanager
async def opened(directory: Path, *, cache: int, segment_bytes: int = 1 << 20
                 ) -> AsyncIterator[LocalLog]:
    log = await LocalLog.open("t", directory, DurabilityPolicy.parse("never"), segment_bytes,
                              tail_cache_bytes=cache)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(log.run_writer)
        try:
            yield log
        finally:
            await log.close()


def payloads(count: int, seed: int = 1) -> list[bytes]:
    rng = random.Random(seed)
    return [rng.randbytes(rng.choice([0, 1, 7, 100, 700, 3000])) for _ in range(count)]


async def append_all(log: LocalLog, data: list[bytes], per_append: int = 3) -> None:
    key = 0 if log.last_key is None else log.last_key + 1
    for i in range(0, len(data), per_append):
        chunk = data[i : i + per_append]
        await log.append([EntryIn(key + j, 1000 + key + j, d) for j, d in enumerate(chunk)])
        key += len(chunk)


def as_tuples(entries: list[StoredEntry]) -> list[tuple[int, int, int, bytes]]:
    return [(e.position, e.key, e.timestamp_ms, bytes(e.data)) for e in entries]


def no_disk_reads(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    calls: list[Any] = []

    def refuse(plan: Any) -> list[StoredEntry]:
        calls.append(plan)
        raise AssertionError("read went to the segment files")

    monkeypatch.setattr(partition_log, "_read_plan", refuse)
    return calls


async def test_cached_reads_equal_reads_from_the_files(tmp_path: Path) -> None:
    data = payloads(60)
    queries = [(pos, budget, limit) for pos in range(0, 61, 3)
               for budget in (0, 1, 700, 5000, 1 << 20) for limit in (None, 1, 4)]
    async with opened(tmp_path, cache=1 << 20, segment_bytes=4000) as log:
        await append_all(log, data)
        assert log.segment_count > 3  # the cache spans several segments
        from_cache = [as_tuples(await log.read(*q)) for q in queries]
    async with opened(tmp_path, cache=0) as log:  # reopened: nothing cached
        from_files = [as_tuples(await log.read(*q)) for q in queries]
    assert from_cache == from_files
    assert from_cache[0][0][3] == data[0]


async def test_fresh_reads_skip_the_files_and_share_the_appended_bytes(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    async with opened(tmp_path, cache=1 << 20) as log:
        blob = b"x" * 5000
        await log.append([EntryIn(10, 1, blob), EntryIn(11, 2, b"y")])
        calls = no_disk_reads(monkeypatch)
        first, second = await log.read(0, 1 << 20)
        assert first.data is blob  # no copy
        assert (second.position, second.key, second.data) == (1, 11, b"y")
        assert await log.read(1, 0) == [second]
        assert await log.read(2, 100) == []  # at the end
        assert not calls


async def test_the_cache_is_bounded_and_older_reads_go_to_the_files(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data = [bytes([i]) * 1000 for i in range(50)]
    async with opened(tmp_path, cache=4500) as log:
        await append_all(log, data, per_append=2)
        tail = log._tail
        assert tail.nbytes <= 4500 and len(tail) == 4  # the newest four entries
        calls = no_disk_reads(monkeypatch)
        assert [e.data for e in await log.read(46, 1 << 20)] == data[46:]
        assert not calls
        with pytest.raises(AssertionError, match="segment files"):
            await log.read(45, 1 << 20)
        # an entry larger than the whole cache is not kept
        await log.append([EntryIn(100, 1, b"z" * 10_000)])
        assert len(log._tail) == 0


async def test_retention_drops_cached_entries(tmp_path: Path) -> None:
    entry = ENTRY_HEADER_SIZE + 100
    async with opened(tmp_path, cache=1 << 20, segment_bytes=SEGMENT_HEADER_SIZE + 4 * entry
                      ) as log:
        await append_all(log, [b"a" * 100] * 20, per_append=1)
        assert len(log._tail) == 20
        await log.truncate_before(10)
        start = log.start_position
        assert 0 < start <= 10
        assert len(log._tail) == 20 - start
        with pytest.raises(PositionOutOfRangeError):
            await log.read(start - 1, 100)
        assert [e.position for e in await log.read(start, 1 << 20)] == list(range(start, 20))


async def test_concurrent_appends_keep_the_cache_contiguous(tmp_path: Path) -> None:
    async with opened(tmp_path, cache=1 << 20) as log:
        keys = iter(range(30))

        async def append_one() -> None:
            key = next(keys)  # no checkpoint before append queues it: key order holds
            await log.append([EntryIn(key, key, b"%d" % key)])

        async with trio.open_nursery() as nursery:
            for _ in range(30):
                nursery.start_soon(append_one)
        assert len(log._tail) == 30
        entries = await log.read(0, 1 << 20)
        assert [(e.position, e.key, e.data) for e in entries] == [
            (i, i, b"%d" % i) for i in range(30)]


async def test_read_after_key_finds_the_floor_in_the_cache_like_the_index(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with opened(tmp_path, cache=1 << 20) as log:
        # keys with gaps (as a partition's last-offset keys), many entries: the newest are
        # answered from the cache's scan, older ones from the index, the same way
        key = 0
        for i in range(60):
            await log.append([EntryIn(key, 1000 + i, b"%d" % i)])
            key += 1 + i % 3
        index_floor = log._floor
        for k in [None, -1, 0, 1, 2, 5, key - 4, key - 3, key - 2, key - 1, key, key + 10]:
            if k is not None and k < 0:
                continue
            expected_floor = None if k is None else index_floor(k, log.end_position)
            expected = [] if expected_floor == log.end_position - 1 else await log.read(
                0 if expected_floor is None else expected_floor + 1, 1 << 20)
            assert as_tuples(log.read_after_nowait(k, 1 << 20) or []) == as_tuples(expected)
        # the cache alone answers a reader keeping up (no index lookup)
        monkeypatch.setattr(log, "_floor", lambda *_: pytest.fail("asked the index"))
        found = log.read_after_nowait(key - 4, 1 << 20)
        assert found is not None and found[-1].position == log.end_position - 1


async def test_a_cancelled_append_notify_still_waits_for_its_write(tmp_path: Path) -> None:
    async with opened(tmp_path, cache=1 << 20) as log:
        durable: list[int] = []
        with trio.CancelScope() as scope:
            scope.cancel()
            positions = await log.append_notify([EntryIn(0, 1, b"a")], lambda: durable.append(1))
            assert positions == [0] and durable == [1] and log.end_position == 1
            await trio.lowlevel.checkpoint()  # the cancellation arrives here
            pytest.fail("not cancelled")
        assert scope.cancelled_caught
