"""The partition-log conformance suite, run against ``memory://`` and the local backend,
plus what only the local backend promises (return order, durability policies, restart)."""

from __future__ import annotations

import errno
import os
import tempfile
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import trio
import trio.testing
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from storage_conformance import (
    ENTRY_BYTES,
    LogBackend,
    LogConformance,
    Opener,
    entries,
    read_all,
)

import storage.partition_log as partition_log
from storage import open_storage
from storage.api import (
    DurabilityPolicy,
    OutOfOrderKeyError,
    RetentionPolicy,
    Storage,
    StorageError,
)
from storage.local import LocalStorage, open_local_storage
from storage.partition_log import LocalLog
from storage.segment import ENTRY_HEADER_SIZE, SEGMENT_HEADER_SIZE

#: the local backend's logs roll after this many ENTRY_BYTES entries in the suite
LOCAL_SEGMENT_ENTRIES = 8
LOCAL_SEGMENT_BYTES = (
    SEGMENT_HEADER_SIZE + LOCAL_SEGMENT_ENTRIES * (ENTRY_HEADER_SIZE + ENTRY_BYTES)
)


def local_opener(
    path: Path, policy: str = "always", segment_bytes: int = LOCAL_SEGMENT_BYTES
) -> Opener:
    """Opens the local backend in ``path`` (the same data every time)."""

    @asynccontextmanager
    async def opener() -> AsyncIterator[Storage]:
        async with open_local_storage(
            path, DurabilityPolicy.parse(policy), segment_bytes=segment_bytes
        ) as storage:
            yield storage

    return opener


@pytest.fixture(params=["memory", "local"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> LogBackend:
    if request.param == "memory":
        # MemoryLog's segments hold 64 entries
        return LogBackend("memory", lambda: open_storage("memory://"), False, 64)
    return LogBackend("local", local_opener(tmp_path / "data"), True, LOCAL_SEGMENT_ENTRIES)


#: known bugs of the reference backend (storage/memory.py), each a strict xfail so that
#: fixing one makes its entry fail until it is removed here
MEMORY_BUGS: dict[str, str] = {}


@pytest.fixture(autouse=True)
def _memory_known_bugs(request: pytest.FixtureRequest) -> None:
    if "backend" not in request.fixturenames:
        return
    reason = MEMORY_BUGS.get(request.node.originalname)
    if reason and request.getfixturevalue("backend").name == "memory":
        request.applymarker(pytest.mark.xfail(reason=reason, strict=True))


class TestLogConformance(LogConformance):
    """Every test of the suite, for each backend."""


# -- local backend only ---------------------------------------------------------------------


async def _local_log(storage: Storage, name: str) -> LocalLog:
    log = await storage.open_log(name)
    assert isinstance(log, LocalLog)
    return log


async def test_open_storage_file_url(tmp_path: Path) -> None:
    async with open_storage(f"file://{tmp_path}") as storage:
        assert isinstance(storage, LocalStorage)
        log = await storage.open_log("a/b")
        assert await log.append(entries([1])) == [0]
        await storage.metadata.put("k", b"v")
    assert (tmp_path / "logs" / "a" / "b").is_dir()
    assert (tmp_path / "metadata.db").exists()


async def test_appends_return_in_log_order(tmp_path: Path) -> None:
    async with local_opener(tmp_path)() as storage:
        log = await storage.open_log("order")
        returned: list[int] = []
        next_key = 0

        async def appender() -> None:
            nonlocal next_key
            for _ in range(4):
                key = next_key
                next_key += 1
                [position] = await log.append(entries([key], size=10))
                returned.append(position)

        async with trio.open_nursery() as nursery:
            for _ in range(25):
                nursery.start_soon(appender)
        assert returned == list(range(100))


async def test_cancelled_append_does_not_block_others(tmp_path: Path) -> None:
    async with local_opener(tmp_path)() as storage:
        log = await storage.open_log("cancel")
        done: list[list[int]] = []
        next_key = 0

        async def append() -> None:
            nonlocal next_key
            key = next_key
            next_key += 1
            with trio.CancelScope() as scope:
                if key == 2:
                    scope.cancel()  # append still queues its entries, then gives up waiting
                done.append(await log.append(entries([key])))

        async with trio.open_nursery() as nursery:
            for _ in range(6):
                nursery.start_soon(append)
        assert sorted(done) == [[p] for p in range(6) if p != 2]
        # its positions were taken, so the cancelled append's entry is there too
        assert await read_all(log) == [(p, p) for p in range(6)]


async def test_file_work_waits_for_the_write_in_flight_and_writes_wait_for_it(
    tmp_path: Path,
) -> None:
    # the writer holds the files (the gate) from the start of a write to its end on the
    # event loop; others (retention, sync, close) queue for them and come first after it
    async with local_opener(tmp_path)() as storage:
        log = await _local_log(storage, "gate")
        order: list[str] = []

        async def append(key: int) -> None:
            await log.append(entries([key]))
            order.append(f"append {key}")

        async with trio.open_nursery() as nursery:
            await log._io_lock.take()  # as retention would
            nursery.start_soon(append, 0)
            await trio.testing.wait_all_tasks_blocked()
            assert order == [] and log.end_position == 0  # the write waits for the files
            log._io_lock.release()
            await trio.testing.wait_all_tasks_blocked()
            nursery.start_soon(append, 1)
            await trio.lowlevel.checkpoint()
            async with log._io_lock:  # taken once no write is in flight
                assert not log._writing and log.end_position >= 1
                order.append("gate")
        assert sorted(order) == ["append 0", "append 1", "gate"]
        assert await read_all(log) == [(0, 0), (1, 1)]


async def test_close_writes_what_is_queued(tmp_path: Path) -> None:
    async with local_opener(tmp_path)() as storage:
        log = await storage.open_log("drain")
        results: list[list[int]] = []
        next_key = 0

        async def append() -> None:
            nonlocal next_key
            next_key += 1
            results.append(await log.append(entries([next_key - 1])))

        async with trio.open_nursery() as nursery:
            for _ in range(5):
                nursery.start_soon(append)
            await trio.testing.wait_all_tasks_blocked()
            nursery.start_soon(log.close)
        assert sorted(results) == [[p] for p in range(5)]
    async with local_opener(tmp_path)() as storage:
        assert await read_all(await storage.open_log("drain")) == [(p, p) for p in range(5)]


async def test_dropping_every_segment_keeps_end_and_last_key(tmp_path: Path) -> None:
    k = LOCAL_SEGMENT_ENTRIES
    async with local_opener(tmp_path)() as storage:
        log = await _local_log(storage, "all")
        for key in range(2 * k):  # exactly two full segments: the active one is empty
            await log.append(entries([100 + key]))
        assert log.segment_count == 3
        assert await log.truncate_before(2 * k) == 2 * k
        assert (log.start_position, log.end_position) == (2 * k, 2 * k)
        assert log.last_key == 100 + 2 * k - 1
    async with local_opener(tmp_path)() as storage:
        log = await _local_log(storage, "all")
        assert (log.start_position, log.end_position) == (2 * k, 2 * k)
        assert log.last_key == 100 + 2 * k - 1
        assert await log.read(2 * k, 100) == []
        with pytest.raises(OutOfOrderKeyError):
            await log.append(entries([100]))
        assert await log.append(entries([500])) == [2 * k]


async def test_sealed_segments_get_index_files(tmp_path: Path) -> None:
    k = LOCAL_SEGMENT_ENTRIES
    async with local_opener(tmp_path)() as storage:
        log = await _local_log(storage, "files")
        await log.append(entries(range(int(2.5 * k))))  # one append rolls twice
        names = sorted(os.listdir(log.directory))
    assert names == [
        f"{0:020d}.idx", f"{0:020d}.log", f"{k:020d}.idx", f"{k:020d}.log", f"{2 * k:020d}.log"
    ]


async def _until_synced(log: LocalLog) -> None:
    # the fsync runs in a thread, in real time: poll (bounded) without moving the clock
    for _ in range(10_000):
        if not log.needs_sync:
            return
        await trio.to_thread.run_sync(time.sleep, 0.001)
    raise AssertionError("the log was never fsynced")


async def test_interval_policy_fsyncs_in_background(
    tmp_path: Path, mock_clock: trio.testing.MockClock
) -> None:
    async with local_opener(tmp_path, "interval:100")() as storage:
        log = await _local_log(storage, "interval")
        for key in range(3):
            await log.append(entries([key]))
            assert log.needs_sync  # acknowledged once written, before any fsync
            mock_clock.jump(0.1)
            await _until_synced(log)


async def test_never_policy_leaves_syncing_to_the_os(
    tmp_path: Path, mock_clock: trio.testing.MockClock
) -> None:
    async with local_opener(tmp_path, "never")() as storage:
        log = await _local_log(storage, "never")
        await log.append(entries([1]))
        mock_clock.jump(10)
        await trio.testing.wait_all_tasks_blocked()
        assert log.needs_sync
        await log.sync()
        assert not log.needs_sync


async def test_always_policy_is_synced_on_return(tmp_path: Path) -> None:
    async with local_opener(tmp_path, "always")() as storage:
        log = await _local_log(storage, "always")
        await log.append(entries([1, 2]))
        assert not log.needs_sync


# -- property: positions stay contiguous and monotonic -------------------------------------

_ops = st.lists(
    st.one_of(
        st.tuples(st.just("append"), st.integers(1, 12), st.integers(0, 300)),
        st.tuples(st.just("retain"), st.integers(0, 4000), st.integers(0, 0)),
        st.tuples(st.just("truncate"), st.integers(0, 60), st.integers(0, 0)),
        st.tuples(st.just("reopen"), st.integers(0, 0), st.integers(0, 0)),
    ),
    max_size=14,
)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops=_ops)
def test_positions_stay_contiguous(ops: list[tuple[str, int, int]]) -> None:
    with tempfile.TemporaryDirectory(dir=os.environ.get("POLYSTREAM_TEST_TMP")) as tmp:
        trio.run(_check_positions, Path(tmp), ops)


async def _check_positions(path: Path, ops: list[tuple[str, int, int]]) -> None:
    model: dict[int, int] = {}  # position -> key, for every entry ever appended
    start = 0
    next_key = 0
    opener = local_opener(path, "never", segment_bytes=600)
    storage_cm = opener()
    storage = await storage_cm.__aenter__()
    try:
        log = await storage.open_log("prop")
        for op, a, b in ops:
            if op == "append":
                keys = list(range(next_key, next_key + a))
                next_key += a + b % 3  # keys may skip values
                positions = await log.append(entries(keys, ts=next_key, size=b))
                assert positions == list(range(len(model), len(model) + a))
                model.update(zip(positions, keys, strict=True))
            elif op == "retain":
                dropped = await log.apply_retention(RetentionPolicy(max_bytes=a), 0)
                assert log.start_position == start + dropped
            elif op == "truncate":
                dropped = await log.truncate_before(a)
                assert log.start_position == start + dropped
                assert log.start_position <= max(start, a)
            else:
                await storage_cm.__aexit__(None, None, None)
                storage_cm = opener()
                storage = await storage_cm.__aenter__()
                log = await storage.open_log("prop")
            assert start <= log.start_position <= log.end_position == len(model)
            start = log.start_position
            assert log.last_key == (model[len(model) - 1] if model else None)
            stored = await read_all(log)
            assert stored == [(p, model[p]) for p in range(start, len(model))]
    finally:
        await storage_cm.__aexit__(None, None, None)


async def test_write_failure_makes_the_log_read_only(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_write_all = partition_log.write_all
    async with local_opener(tmp_path)() as storage:
        log = await _local_log(storage, "enospc")
        await log.append(entries([1]))

        def full_disk(fd: int, buffers: list[bytes]) -> None:
            raise OSError(errno.ENOSPC, "No space left on device")

        monkeypatch.setattr(partition_log, "write_all", full_disk)
        with pytest.raises(StorageError, match="No space left"):
            await log.append(entries([2]))
        monkeypatch.setattr(partition_log, "write_all", real_write_all)
        with pytest.raises(StorageError):
            await log.append(entries([3]))
        assert await read_all(log) == [(0, 1)]  # what was acknowledged stays readable
