"""Reads from the local log's segment files in runs: small entries share a ``pread`` of at
most ``READ_RUN_BYTES``, large ones are read on their own; the result is the same."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import trio

from storage.api import DurabilityPolicy, EntryIn
from storage.partition_log import LocalLog
from storage.segment import (
    DIRECT_READ_BYTES,
    ENTRY_HEADER_SIZE,
    READ_RUN_BYTES,
    CorruptLogError,
    ReadRun,
    read_runs,
    segment_path,
)

SIZES = [0, 10, 5000, DIRECT_READ_BYTES - 1, DIRECT_READ_BYTES, 300_000, READ_RUN_BYTES + 5]


async def written(directory: Path, data: list[bytes], segment_bytes: int) -> None:
    log = await LocalLog.open("t", directory, DurabilityPolicy.parse("never"), segment_bytes,
                              tail_cache_bytes=0)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(log.run_writer)
        for i, d in enumerate(data):
            await log.append([EntryIn(i, i, d)])
        await log.close()


async def test_reads_in_runs_return_what_was_written(tmp_path: Path) -> None:
    rng = random.Random(7)
    data = [rng.randbytes(rng.choice(SIZES)) for _ in range(40)]
    await written(tmp_path, data, segment_bytes=3 << 20)
    log = await LocalLog.open("t", tmp_path, DurabilityPolicy.parse("never"), 3 << 20,
                              tail_cache_bytes=0)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(log.run_writer)
        assert log.segment_count > 2
        for position in range(0, 40, 3):
            for budget in (1, DIRECT_READ_BYTES, READ_RUN_BYTES, 8 << 20, 1 << 30):
                got = await log.read(position, budget)
                expected, used = [], 0
                for i in range(position, 40):
                    used += len(data[i])
                    if expected and used > budget:
                        break
                    expected.append(i)
                assert [(e.position, e.key, e.data) for e in got] == [
                    (i, i, data[i]) for i in expected]
        plan = log._plan_read(0, 40, 1 << 30, None)
        for run in plan:
            body = run.end - run.start - run.count * ENTRY_HEADER_SIZE
            assert run.count == 1 or body <= READ_RUN_BYTES
            assert run.count == 1 or body < run.count * DIRECT_READ_BYTES
        await log.close()


def test_a_large_entry_read_on_its_own_is_checked(tmp_path: Path) -> None:
    data = b"q" * (DIRECT_READ_BYTES + 100)
    trio.run(written, tmp_path, [b"small", data], 1 << 30)
    path = segment_path(tmp_path, 0)
    raw = bytearray(path.read_bytes())
    start = raw.index(data) - ENTRY_HEADER_SIZE
    run = ReadRun(path, start, start + ENTRY_HEADER_SIZE + len(data), 1, 1)
    [entry] = read_runs([run])
    assert (entry.position, entry.key, entry.data) == (1, 1, data)
    with pytest.raises(CorruptLogError, match="does not match the index"):
        read_runs([ReadRun(path, start, run.end - 1, 1, 1)])
    raw[start + ENTRY_HEADER_SIZE + 50] ^= 0xFF
    path.write_bytes(bytes(raw))
    with pytest.raises(CorruptLogError, match="checksum"):
        read_runs([run])
