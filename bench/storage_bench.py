"""Storage benchmark: the local partition log against this disk's raw synced-write limit.

Run: ``python bench/storage_bench.py [--seconds S] [--dir DIR]``  (a few seconds)

1. Raw limit: a plain Python ``write`` + ``fdatasync`` loop, one entry-sized write
   (100 records of 1 KiB = 100 KiB) per sync.
2. ``LocalLog.append`` with ``fsync=always``: one appender, then several concurrent
   appenders on one log (group commit), then several logs at once; MB/s, entries/s,
   records/s and the ratio to the raw limit.
3. Sequential read throughput of what was written.

The scratch directory is created next to the repository (same disk) and removed.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import trio  # noqa: E402

from storage.api import DurabilityPolicy, EntryIn, PartitionLog  # noqa: E402
from storage.local import open_local_storage  # noqa: E402

RECORD_BYTES = 1024
RECORDS_PER_ENTRY = 100
ENTRY_BYTES = RECORD_BYTES * RECORDS_PER_ENTRY
MB = 1e6


def raw_limit(
    directory: Path, seconds: float, size: int = ENTRY_BYTES
) -> tuple[float, float]:
    """(MB/s, writes/s) of a Python write+fdatasync loop, one ``size``-byte write per sync.

    This machine's synced-write limit, the yardstick of every durable-append benchmark.
    """
    path = directory / "raw"
    buf = os.urandom(size)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        writes = 0
        start = time.perf_counter()
        while (elapsed := time.perf_counter() - start) < seconds:
            os.write(fd, buf)
            os.fdatasync(fd)
            writes += 1
    finally:
        os.close(fd)
        path.unlink()
    return writes * size / elapsed / MB, writes / elapsed


class Counter:
    def __init__(self) -> None:
        self.entries = 0
        self.next_key = 0


async def _appender(log: PartitionLog, counter: Counter, deadline: float, payload: bytes) -> None:
    while trio.current_time() < deadline:
        key = counter.next_key
        counter.next_key += RECORDS_PER_ENTRY  # the core puts the first offset here
        await log.append([EntryIn(key, int(time.time() * 1000), payload)])
        counter.entries += 1


async def append_run(
    directory: Path, seconds: float, appenders: int, logs: int, rounds: int
) -> tuple[float, float, float, float]:
    """(raw MB/s, MB/s, entries/s, records/s): ``appenders`` tasks on each of ``logs`` logs.

    The disk is shared and its speed drifts, so the raw limit is measured in slices
    interleaved with the append slices and both are summed over ``rounds``.
    """
    payload = os.urandom(ENTRY_BYTES)
    slice_s = seconds / rounds
    raw_bytes = raw_time = 0.0
    entries = 0
    elapsed = 0.0
    async with open_local_storage(directory, DurabilityPolicy.parse("always")) as storage:
        opened = [await storage.open_log(f"bench/a{appenders}-l{logs}/p-{n}") for n in range(logs)]
        counters = [Counter() for _ in opened]
        for _ in range(rounds):
            raw_mb, _ops = await trio.to_thread.run_sync(raw_limit, directory, slice_s)
            raw_bytes += raw_mb * slice_s
            raw_time += slice_s
            start = trio.current_time()
            async with trio.open_nursery() as nursery:
                for log, counter in zip(opened, counters, strict=True):
                    for _ in range(appenders):
                        nursery.start_soon(_appender, log, counter, start + slice_s, payload)
            elapsed += trio.current_time() - start
        entries = sum(c.entries for c in counters)
    per_s = entries / elapsed
    return raw_bytes / raw_time, per_s * ENTRY_BYTES / MB, per_s, per_s * RECORDS_PER_ENTRY


async def read_run(directory: Path, name: str) -> tuple[float, float]:
    """(MB/s, entries/s) reading one log from start to end with 1 MiB reads."""
    async with open_local_storage(directory, DurabilityPolicy.parse("always")) as storage:
        log = await storage.open_log(name)
        position = log.start_position
        total = entries = 0
        start = trio.current_time()
        while position < log.end_position:
            batch = await log.read(position, 1 << 20)
            position += len(batch)
            entries += len(batch)
            total += sum(len(e.data) for e in batch)
        elapsed = trio.current_time() - start
    return total / elapsed / MB, entries / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=1.5, help="length of each run")
    parser.add_argument("--appenders", type=int, default=8, help="concurrent appenders")
    parser.add_argument("--rounds", type=int, default=6, help="raw/append slices per run")
    parser.add_argument("--dir", type=Path, default=ROOT.parent, help="scratch parent directory")
    args = parser.parse_args()
    scratch = Path(tempfile.mkdtemp(prefix="polystream-storage-bench-", dir=args.dir))
    try:
        print(f"scratch directory: {scratch}; entry = {RECORDS_PER_ENTRY} x {RECORD_BYTES} B")
        raw_mb, raw_ops = raw_limit(scratch, args.seconds)
        print(f"raw write+fdatasync limit   {raw_mb:8.1f} MB/s  {raw_ops:8.0f} writes/s")
        print("(each append run is compared with the raw limit measured in between its slices)")
        for appenders, logs in [(1, 1), (args.appenders, 1), (1, 4)]:
            raw, mb, eps, rps = trio.run(
                append_run, scratch / "data", args.seconds, appenders, logs, args.rounds
            )
            label = f"append x{appenders} on {logs} log{'s' * (logs > 1)}"
            print(
                f"{label:<27} {mb:8.1f} MB/s  {eps:8.0f} entries/s  {rps:9.0f} records/s"
                f"  = {mb / raw:5.0%} of raw ({raw:.1f} MB/s)"
            )
        mb, eps = trio.run(read_run, scratch / "data", f"bench/a{args.appenders}-l1/p-0")
        print(f"{'read (1 MiB budget)':<27} {mb:8.1f} MB/s  {eps:8.0f} entries/s")
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
