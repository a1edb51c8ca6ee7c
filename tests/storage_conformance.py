"""A reusable conformance suite for :class:`storage.api.PartitionLog` backends.

Like ``trio.testing.check_two_way_stream``: one suite that every backend must
pass.  A backend joins by describing itself as a :class:`LogBackend` and
subclassing :class:`LogConformance` in a test module with a ``backend`` fixture::

    @pytest.fixture
    def backend(tmp_path) -> LogBackend:
        return LogBackend("mine", open_mine, persistent=True, segment_entries=8)

    class TestMineConformance(LogConformance):
        pass

``open`` opens the backend's :class:`Storage` (the same data again each time when
``persistent``); its logs must roll to a new segment after exactly
``segment_entries`` entries of :data:`ENTRY_BYTES` bytes, so the suite can check
that retention drops whole segments only.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass

import pytest
import trio

from storage.api import (
    EntryIn,
    LogClosedError,
    OutOfOrderKeyError,
    PartitionLog,
    PositionOutOfRangeError,
    RetentionPolicy,
    Storage,
)

#: size of the entries the retention tests write
ENTRY_BYTES = 100

Opener = Callable[[], AbstractAsyncContextManager[Storage]]


@dataclass(frozen=True)
class LogBackend:
    """How the suite reaches one backend."""

    name: str
    open: Opener
    persistent: bool
    segment_entries: int


def data_for(key: int, size: int = ENTRY_BYTES) -> bytes:
    """Deterministic entry bytes for a key, so reads can be checked."""
    seed = key.to_bytes(8, "little", signed=True)
    return (seed * (size // 8 + 1))[:size]


def entries(keys: Sequence[int], ts: int | Sequence[int] = 0, size: int = ENTRY_BYTES
            ) -> list[EntryIn]:
    stamps = [ts] * len(keys) if isinstance(ts, int) else list(ts)
    return [EntryIn(k, t, data_for(k, size)) for k, t in zip(keys, stamps, strict=True)]


async def read_all(log: PartitionLog) -> list[tuple[int, int]]:
    """(position, key) of every stored entry, checking each entry's data."""
    out: list[tuple[int, int]] = []
    pos = log.start_position
    while pos < log.end_position:
        batch = await log.read(pos, 1 << 20)
        assert batch, "read before end_position returned nothing"
        for entry in batch:
            assert entry.position == pos
            assert entry.data == data_for(entry.key, len(entry.data))
            out.append((entry.position, entry.key))
            pos += 1
    return out


class LogConformance:
    """The suite; test methods take the ``backend`` fixture of the subclassing module."""

    # -- basics ----------------------------------------------------------------------

    async def test_empty_log(self, backend: LogBackend) -> None:
        async with backend.open() as storage:
            log = await storage.open_log("t/empty")
            assert (log.start_position, log.end_position, log.last_key) == (0, 0, None)
            assert await log.read(0, 100) == []
            with pytest.raises(PositionOutOfRangeError):
                await log.read(1, 100)
            assert await log.floor_position(10) is None
            assert await log.position_for_timestamp(0) == 0

    async def test_append_and_read_back(self, backend: LogBackend) -> None:
        async with backend.open() as storage:
            log = await storage.open_log("t/basic")
            assert await log.append(entries([3, 5], ts=[100, 101], size=10)) == [0, 1]
            assert await log.append(entries([9], ts=102, size=0)) == [2]
            assert await log.append([]) == []
            assert (log.end_position, log.last_key) == (3, 9)
            assert log.size_bytes >= 20
            got = await log.read(0, 1000)
            assert [(e.position, e.key, e.timestamp_ms, e.data) for e in got] == [
                (0, 3, 100, data_for(3, 10)),
                (1, 5, 101, data_for(5, 10)),
                (2, 9, 102, b""),
            ]
            assert [e.key for e in await log.read(1, 1000)] == [5, 9]

    async def test_read_byte_budget(self, backend: LogBackend) -> None:
        async with backend.open() as storage:
            log = await storage.open_log("t/budget")
            await log.append(entries(range(10)))
            assert len(await log.read(0, 2 * ENTRY_BYTES + 50)) == 2
            assert len(await log.read(0, 2 * ENTRY_BYTES)) == 2
            # at least one entry, even when it alone exceeds the budget
            assert [e.position for e in await log.read(4, 1)] == [4]
            assert [e.position for e in await log.read(4, 0)] == [4]
            assert [e.position for e in await log.read(7, 10_000)] == [7, 8, 9]
            assert [e.position for e in await log.read(2, 10_000, max_entries=3)] == [2, 3, 4]
            assert await log.read(10, 10_000) == []
            for bad in (-1, 11):
                with pytest.raises(PositionOutOfRangeError):
                    await log.read(bad, 10_000)

    async def test_out_of_order_keys_write_nothing(self, backend: LogBackend) -> None:
        async with backend.open() as storage:
            log = await storage.open_log("t/order")
            await log.append(entries([5]))
            for bad in ([5], [4], [6, 6], [7, 6], [8, 9, 3], [-1]):
                with pytest.raises(OutOfOrderKeyError):
                    await log.append(entries(bad))
                assert (log.end_position, log.last_key) == (1, 5)
            assert await log.append(entries([6, 7])) == [1, 2]
            assert await read_all(log) == [(0, 5), (1, 6), (2, 7)]

    async def test_floor_position(self, backend: LogBackend) -> None:
        async with backend.open() as storage:
            log = await storage.open_log("t/floor")
            await log.append(entries([10, 20]))
            await log.append(entries([30]))
            expect = {0: None, 9: None, 10: 0, 15: 0, 20: 1, 29: 1, 30: 2, 10**12: 2}
            for key, pos in expect.items():
                assert await log.floor_position(key) == pos, key

    async def test_read_after_nowait_agrees_with_floor_and_read(
        self, backend: LogBackend
    ) -> None:
        async with backend.open() as storage:
            log = await storage.open_log("t/nowait")
            for key in range(10, 10 + 3 * backend.segment_entries, 10):
                await log.append(entries([key, key + 5]))
            answered = 0
            for key in [None, 0, 9, 10, 14, 15, 16, 10**12, *range(10, 10**3, 7)]:
                for budget in (0, ENTRY_BYTES, 3 * ENTRY_BYTES + 1, 1 << 20):
                    got = log.read_after_nowait(key, budget)
                    if got is None:
                        continue  # not in memory: the caller reads the usual way
                    answered += 1
                    floor = None if key is None else await log.floor_position(key)
                    position = log.start_position if floor is None else floor + 1
                    assert got == await log.read(position, budget), (key, budget)
            assert answered  # the freshest entries, at least, are answered at once
            await log.truncate_before(log.end_position)
            assert log.read_after_nowait(None, 1 << 20) in (None, await log.read(
                log.start_position, 1 << 20))
        assert log.read_after_nowait(10, 100) is None  # closed

    async def test_append_notify_calls_back_once_the_entries_are_readable(
        self, backend: LogBackend
    ) -> None:
        async with backend.open() as storage:
            log = await storage.open_log("t/notify")
            seen: list[tuple[int, int | None]] = []

            def durable() -> None:
                seen.append((log.end_position, log.last_key))

            async with trio.open_nursery() as nursery:
                for keys in ([1, 2], [3], [4, 5, 6]):
                    nursery.start_soon(log.append_notify, entries(keys), durable)
                    await trio.lowlevel.checkpoint()
            # once per append, in log order, each seeing its own entries stored
            assert len(seen) == 3
            assert [end for end, _ in seen] == sorted(end for end, _ in seen)
            assert seen[-1] == (6, 6)
            for (end, _), own_end in zip(seen, [2, 3, 6], strict=True):
                assert end >= own_end
            assert await log.append_notify([], durable) == []

    async def test_position_for_timestamp(self, backend: LogBackend) -> None:
        async with backend.open() as storage:
            log = await storage.open_log("t/time")
            await log.append(entries([1, 2, 3, 4], ts=[100, 200, 200, 300]))
            expect = {0: 0, 100: 0, 101: 1, 200: 1, 201: 3, 300: 3, 301: 4}
            for ts, pos in expect.items():
                assert await log.position_for_timestamp(ts) == pos, ts

    # -- retention ---------------------------------------------------------------------

    async def _fill(self, log: PartitionLog, backend: LogBackend, segments: float) -> int:
        """Append ``segments`` segments' worth of entries, one per append; entry i has
        key ``10 + i`` and timestamp ``1000 * segment + offset in segment``."""
        k = backend.segment_entries
        total = int(segments * k)
        for i in range(total):
            await log.append(entries([10 + i], ts=1000 * (i // k) + i % k))
        return total

    async def test_retention_by_size_drops_whole_segments(self, backend: LogBackend) -> None:
        k = backend.segment_entries
        async with backend.open() as storage:
            log = await storage.open_log("t/size")
            total = await self._fill(log, backend, 3.5)
            assert await log.apply_retention(RetentionPolicy(max_bytes=10**9), 0) == 0
            assert await log.apply_retention(RetentionPolicy(), 0) == 0
            size = log.size_bytes
            # keep at least two segments' worth: exactly one segment can go
            dropped = await log.apply_retention(RetentionPolicy(max_bytes=2 * k * ENTRY_BYTES), 0)
            assert dropped == k
            assert log.start_position == k and log.end_position == total
            assert log.size_bytes < size
            dropped = await log.apply_retention(RetentionPolicy(max_bytes=1), 0)
            assert dropped == 2 * k  # the last (active) segment stays
            assert log.start_position == 3 * k
            assert (log.end_position, log.last_key) == (total, 10 + total - 1)
            assert await read_all(log) == [(p, 10 + p) for p in range(3 * k, total)]
            with pytest.raises(PositionOutOfRangeError):
                await log.read(0, 100)
            assert await log.append(entries([10 + total])) == [total]

    async def test_retention_by_age_drops_whole_segments(self, backend: LogBackend) -> None:
        k = backend.segment_entries
        async with backend.open() as storage:
            log = await storage.open_log("t/age")
            total = await self._fill(log, backend, 3.5)
            now = 5000
            assert await log.apply_retention(RetentionPolicy(max_age_ms=now), now) == 0
            # segments 0 and 1 hold timestamps < 2000; segment 2 has 2000..2000+k-1
            dropped = await log.apply_retention(RetentionPolicy(max_age_ms=now - 2000), now)
            assert dropped == 2 * k
            assert (log.start_position, log.end_position) == (2 * k, total)
            assert await log.position_for_timestamp(0) == 2 * k
            assert await log.floor_position(10) is None
            assert await log.floor_position(10 + 2 * k) == 2 * k
            assert await read_all(log) == [(p, 10 + p) for p in range(2 * k, total)]

    async def test_truncate_before(self, backend: LogBackend) -> None:
        k = backend.segment_entries
        async with backend.open() as storage:
            log = await storage.open_log("t/truncate")
            total = await self._fill(log, backend, 3.5)
            assert await log.truncate_before(0) == 0
            assert await log.truncate_before(k - 1) == 0  # segment 0 is not entirely before
            assert await log.truncate_before(k + 3) == k
            assert log.start_position == k
            assert await log.truncate_before(10**9) == 2 * k
            assert (log.start_position, log.end_position) == (3 * k, total)
            assert log.last_key == 10 + total - 1

    # -- concurrency --------------------------------------------------------------------

    async def test_concurrent_appenders_keep_order(self, backend: LogBackend) -> None:
        async with backend.open() as storage:
            log = await storage.open_log("t/concurrent")
            next_key = 0
            results: dict[int, list[int]] = {}

            async def appender(n: int) -> None:
                nonlocal next_key
                for _ in range(n):
                    # the key is taken and the append queued with no checkpoint between
                    first = next_key
                    next_key += 3
                    batch = entries([first, first + 1, first + 2], size=20)
                    results[first] = await log.append(batch)

            async with trio.open_nursery() as nursery:
                for _ in range(8):
                    nursery.start_soon(appender, 20)
            assert len(results) == 160
            for first, positions in results.items():
                assert positions == [first, first + 1, first + 2]  # key == position here
            assert await read_all(log) == [(p, p) for p in range(480)]

    # -- storage-level operations -----------------------------------------------------------

    async def test_open_list_delete(self, backend: LogBackend) -> None:
        async with backend.open() as storage:
            a = await storage.open_log("tenant/ns/topic/partition-0")
            assert await storage.open_log("tenant/ns/topic/partition-0") is a
            b = await storage.open_log("tenant/ns/topic")  # a prefix of another name
            await a.append(entries([1]))
            await b.append(entries([1, 2]))
            assert await storage.list_logs() == ["tenant/ns/topic", "tenant/ns/topic/partition-0"]
            await storage.delete_log("tenant/ns/topic")
            await storage.delete_log("never/existed")
            assert await storage.list_logs() == ["tenant/ns/topic/partition-0"]
            with pytest.raises(LogClosedError):
                await b.append(entries([3]))
            again = await storage.open_log("tenant/ns/topic")
            assert (again.start_position, again.end_position, again.last_key) == (0, 0, None)
            assert await read_all(a) == [(0, 1)]

    @pytest.mark.parametrize("name", ["", "/a", "a/", "a//b", "a/../b", "a/./b", "a b", "é"])
    async def test_invalid_names(self, backend: LogBackend, name: str) -> None:
        async with backend.open() as storage:
            with pytest.raises(ValueError):
                await storage.open_log(name)

    async def test_closed_log_refuses_calls(self, backend: LogBackend) -> None:
        async with backend.open() as storage:
            log = await storage.open_log("t/closed")
            await log.append(entries([1]))
            await log.close()
            with pytest.raises(LogClosedError):
                await log.append(entries([2]))
            with pytest.raises(LogClosedError):
                await log.read(0, 100)

    # -- persistence (persistent backends only) ---------------------------------------------

    async def test_reopen_keeps_data_positions_and_last_key(self, backend: LogBackend) -> None:
        if not backend.persistent:
            pytest.skip(f"{backend.name} does not persist")
        k = backend.segment_entries
        async with backend.open() as storage:
            log = await storage.open_log("t/reopen")
            total = await self._fill(log, backend, 2.5)
            assert await log.truncate_before(k) == k
            await storage.open_log("t/other")
        async with backend.open() as storage:
            assert await storage.list_logs() == ["t/other", "t/reopen"]
            log = await storage.open_log("t/reopen")
            assert (log.start_position, log.end_position) == (k, total)
            assert log.last_key == 10 + total - 1
            assert await read_all(log) == [(p, 10 + p) for p in range(k, total)]
            with pytest.raises(OutOfOrderKeyError):
                await log.append(entries([10 + total - 1]))
            assert await log.append(entries([10 + total])) == [total]
            assert await log.floor_position(10**9) == total
