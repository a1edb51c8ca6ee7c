"""Helper process for the SIGKILL test: append forever, print every acknowledged entry.

Usage: ``python tests/storage_writer_proc.py DATA_DIR [APPENDERS]``

Opens the local backend with the ``always`` policy and small segments, then
``APPENDERS`` tasks append 1-3 entries at a time to the log ``crash/p-0``.  After
each append returns, one ``<position> <key>`` line per entry goes to stdout,
flushed: everything printed was acknowledged as durable.  Entry data is
``storage_conformance.data_for(key, key % 700)``.  Stops by itself after
``MAX_SECONDS`` in case nobody kills it.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

import trio  # noqa: E402
from storage_conformance import data_for  # noqa: E402

from storage.api import DurabilityPolicy, EntryIn  # noqa: E402
from storage.local import open_local_storage  # noqa: E402

LOG_NAME = "crash/p-0"
SEGMENT_BYTES = 64 * 1024
MAX_SECONDS = 60


async def main(data_dir: str, appenders: int) -> None:
    next_key = 0
    out = sys.stdout

    async with open_local_storage(
        data_dir, DurabilityPolicy.parse("always"), segment_bytes=SEGMENT_BYTES
    ) as storage:
        log = await storage.open_log(LOG_NAME)
        next_key = (log.last_key or 0) + 1

        async def appender() -> None:
            nonlocal next_key
            while True:
                count = next_key % 3 + 1
                keys = list(range(next_key, next_key + count))
                next_key += count
                positions = await log.append(
                    [EntryIn(k, k, data_for(k, k % 700)) for k in keys]
                )
                out.write("".join(f"{p} {k}\n" for p, k in zip(positions, keys, strict=True)))
                out.flush()

        with trio.move_on_after(MAX_SECONDS):
            async with trio.open_nursery() as nursery:
                for _ in range(appenders):
                    nursery.start_soon(appender)


if __name__ == "__main__":
    trio.run(main, sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 4)
