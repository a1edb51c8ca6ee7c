"""Crash recovery of the local log: torn and corrupt tails, damaged indexes, SIGKILL."""

from __future__ import annotations

import os
import random
import shutil
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import trio
from storage_conformance import data_for, read_all

from storage.api import DurabilityPolicy, EntryIn
from storage.local import open_local_storage
from storage.partition_log import LocalLog
from storage.segment import (
    ENTRY_HEADER_SIZE,
    SEGMENT_HEADER_SIZE,
    CorruptLogError,
    index_path,
    segment_path,
)

NAME = "t/recover"
ROOT = Path(__file__).resolve().parent.parent
WRITER = Path(__file__).resolve().parent / "storage_writer_proc.py"
SIZES = [0, 1, 50, 300, 7, 1000, 64, 3, 129, 2048, 5, 90]


async def _open(data_dir: Path, segment_bytes: int = 1 << 20) -> tuple[list[tuple[int, int]], int]:
    """Open, return (stored (position, key) pairs, end position) and check appends continue."""
    async with open_local_storage(data_dir, segment_bytes=segment_bytes) as storage:
        log = await storage.open_log(NAME)
        stored = await read_all(log)
        end = log.end_position
        key = (log.last_key or 0) + 1
        assert await log.append([EntryIn(key, 0, data_for(key, 10))]) == [end]
    return stored, end


async def _write(data_dir: Path, keys: list[int], segment_bytes: int = 1 << 20) -> Path:
    async with open_local_storage(data_dir, segment_bytes=segment_bytes) as storage:
        log = await storage.open_log(NAME)
        assert isinstance(log, LocalLog)
        for key in keys:
            await log.append([EntryIn(key, key, data_for(key, SIZES[key % len(SIZES)]))])
        return log.directory


def _boundaries(keys: list[int]) -> list[int]:
    """File offset at which each entry of a single segment ends."""
    ends, offset = [], SEGMENT_HEADER_SIZE
    for key in keys:
        offset += ENTRY_HEADER_SIZE + SIZES[key % len(SIZES)]
        ends.append(offset)
    return ends


async def test_truncated_tail_is_cut_to_the_valid_prefix(tmp_path: Path) -> None:
    keys = list(range(1, 25))
    pristine = tmp_path / "pristine"
    log_dir = await _write(pristine, keys)
    segment = segment_path(log_dir, 0)
    ends = _boundaries(keys)
    assert segment.stat().st_size == ends[-1]
    rng = random.Random(20261125)
    cuts = {SEGMENT_HEADER_SIZE, ends[0], ends[10], ends[10] + 1, ends[-1] - 1, ends[-1]}
    cuts.update(rng.randrange(SEGMENT_HEADER_SIZE, ends[-1]) for _ in range(14))
    for n, cut in enumerate(sorted(cuts)):
        data_dir = tmp_path / f"cut{n}"
        shutil.copytree(pristine, data_dir)
        target = segment_path(data_dir / "logs" / NAME, 0)
        os.truncate(target, cut)
        survivors = sum(1 for end in ends if end <= cut)
        stored, end = await _open(data_dir)
        assert end == survivors, cut
        assert stored == list(enumerate(keys[:survivors]))
        assert target.stat().st_size >= (ends[survivors - 1] if survivors else SEGMENT_HEADER_SIZE)
        # the repaired log reopens as it was left (plus the entry _open appended)
        stored_again, end_again = await _open(data_dir)
        assert end_again == survivors + 1
        assert stored_again[:survivors] == stored


@pytest.mark.parametrize(
    ("entry", "where"), [(-1, "data"), (-1, "header"), (-1, "crc"), (15, "data"), (0, "length")]
)
async def test_corrupt_entry_cuts_the_log_back(tmp_path: Path, entry: int, where: str) -> None:
    keys = list(range(1, 21))
    log_dir = await _write(tmp_path, keys)
    ends = _boundaries(keys)
    index = entry % len(keys)
    start = ends[index - 1] if index else SEGMENT_HEADER_SIZE
    size = SIZES[keys[index] % len(SIZES)]
    offset = {
        "crc": start,
        "length": start + 4,
        "header": start + 12,  # inside the key
        "data": start + ENTRY_HEADER_SIZE + max(0, size - 1),
    }[where]
    path = segment_path(log_dir, 0)
    raw = bytearray(path.read_bytes())
    raw[offset] ^= 0x5A
    path.write_bytes(raw)
    stored, end = await _open(tmp_path)
    assert end == index
    assert stored == list(enumerate(keys[:index]))


async def test_sealed_segments_survive_a_damaged_tail_and_index(tmp_path: Path) -> None:
    keys = list(range(1, 60))
    log_dir = await _write(tmp_path, keys, segment_bytes=2000)
    bases = sorted(int(p.stem) for p in log_dir.glob("*.log"))
    assert len(bases) >= 4
    index_path(log_dir, bases[0]).write_bytes(b"garbage")  # rebuilt from the segment
    index_path(log_dir, bases[1]).unlink()  # rebuilt too
    (log_dir / "99999999999999999999.log.tmp").write_bytes(b"half a roll")
    last = segment_path(log_dir, bases[-1])
    os.truncate(last, last.stat().st_size - 1)  # tear the last entry
    stored, end = await _open(tmp_path, segment_bytes=2000)
    assert stored == list(enumerate(keys[: len(keys) - 1]))
    assert end == len(keys) - 1
    assert not list(log_dir.glob("*.tmp"))
    assert index_path(log_dir, bases[0]).stat().st_size > 7
    assert index_path(log_dir, bases[1]).exists()


async def test_damaged_segment_header_is_refused(tmp_path: Path) -> None:
    log_dir = await _write(tmp_path, [1, 2, 3])
    path = segment_path(log_dir, 0)
    path.write_bytes(b"XXXX" + path.read_bytes()[4:])
    with pytest.raises(CorruptLogError):
        async with open_local_storage(tmp_path) as storage:
            await storage.open_log(NAME)


async def test_interrupted_retention_leaves_a_usable_suffix(tmp_path: Path) -> None:
    keys = list(range(1, 60))
    log_dir = await _write(tmp_path, keys, segment_bytes=2000)
    bases = sorted(int(p.stem) for p in log_dir.glob("*.log"))
    segment_path(log_dir, bases[1]).unlink()  # as if segment 0's removal was lost in a crash
    stored, end = await _open(tmp_path, segment_bytes=2000)
    assert end == len(keys)
    assert stored == [(p, keys[p]) for p in range(bases[2], len(keys))]
    assert not segment_path(log_dir, bases[0]).exists()


# -- a writer killed with SIGKILL ---------------------------------------------------------


@pytest.mark.slow
def test_sigkill_mid_append_loses_nothing_acknowledged(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    env = dict(os.environ, PYTHONPATH=str(ROOT), PYTHONUNBUFFERED="1")
    acked: dict[int, int] = {}
    for round_ in range(2):  # the second writer continues the recovered log
        proc = subprocess.Popen(
            [sys.executable, str(WRITER), str(data_dir), "4"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
        )
        watchdog = threading.Timer(60, proc.kill)
        watchdog.start()
        try:
            assert proc.stdout is not None
            target = len(acked) + 400
            for line in proc.stdout:
                position, key = map(int, line.split())
                acked[position] = key
                if len(acked) >= target:
                    break
            proc.send_signal(signal.SIGKILL)
            for line in proc.stdout:  # lines already written before the kill
                position, key = map(int, line.split())
                acked[position] = key
            code = proc.wait(timeout=30)
            assert code == -signal.SIGKILL, proc.stderr.read() if proc.stderr else code
        finally:
            watchdog.cancel()
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        assert len(acked) >= target, f"round {round_}: writer stopped early"
        trio.run(_check_acknowledged, data_dir, acked)


async def _check_acknowledged(data_dir: Path, acked: dict[int, int]) -> None:
    async with open_local_storage(data_dir, DurabilityPolicy.parse("always")) as storage:
        log = await storage.open_log("crash/p-0")
        assert log.end_position > max(acked)
        stored = dict(await read_all(log))
    assert list(stored) == list(range(len(stored)))  # contiguous from 0
    for position, key in acked.items():
        assert stored[position] == key
    keys = list(stored.values())
    assert keys == sorted(set(keys))

