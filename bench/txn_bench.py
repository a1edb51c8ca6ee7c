"""Transaction benchmark: transactions/s with 1, 10 and 100 messages per transaction
over 2 partitions, against non-transactional produce of the same messages.

Run: ``python bench/txn_bench.py [--seconds S] [--clients N] [--durability always|never]``

Each round, for ``--seconds``: ``--clients`` concurrent producers loop over
begin -> add_partitions(2) -> one batch of n/2 messages to each partition -> commit
(anonymous producers, 100-byte values); the baseline loops over the same two appends
without a transaction.  Printed: transactions/s, messages/s and the overhead factor
(baseline messages/s / transactional messages/s).  Runs on the embedded file storage
in a scratch directory next to the repository (same disk), removed afterwards.
No peer broker: this measures the core's own cost of transactions.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import trio  # noqa: E402

from core.api import Core, open_core  # noqa: E402
from core.config import CoreSettings  # noqa: E402
from core.records import Message  # noqa: E402
from storage.api import DurabilityPolicy  # noqa: E402
from storage.local import open_local_storage  # noqa: E402

VALUE = b"x" * 100
SIZES = (1, 10, 100)


async def _loop(core: Core, topic: str, n: int, transactional: bool, stop_at: float,
                counts: list[int]) -> None:
    halves = [[Message(None, VALUE)] * max(1, n // 2), [Message(None, VALUE)] * (n // 2)]
    while time.perf_counter() < stop_at:
        if transactional:
            txn = await core.transactions.begin()
            await core.transactions.add_partitions(txn, [(topic, 0), (topic, 1)])
            for p, msgs in enumerate(halves):
                if msgs:
                    await core.transactions.append_messages(txn, topic, p, msgs)
            await core.transactions.end(txn, commit=True)
        else:
            for p, msgs in enumerate(halves):
                if msgs:
                    await core.append_messages(topic, p, msgs)
        counts[0] += 1
        counts[1] += n


async def _round(core: Core, topic: str, n: int, transactional: bool, seconds: float,
                 clients: int) -> tuple[float, float]:
    counts = [0, 0]
    start = time.perf_counter()
    async with trio.open_nursery() as nursery:
        for _ in range(clients):
            nursery.start_soon(_loop, core, topic, n, transactional, start + seconds, counts)
    elapsed = time.perf_counter() - start
    return counts[0] / elapsed, counts[1] / elapsed


async def main(seconds: float, clients: int, durability: str) -> None:
    scratch = Path(tempfile.mkdtemp(prefix="txn-bench-", dir=ROOT))
    try:
        policy = DurabilityPolicy.parse(durability)
        async with open_local_storage(scratch, policy) as storage, open_core(
                storage, CoreSettings(retention_check_interval_ms=0)) as core:
            print(f"durability={policy} clients={clients} seconds/round={seconds}")
            print(f"{'msgs/txn':>8} {'txn/s':>9} {'msgs/s txn':>11} {'msgs/s plain':>13} "
                  f"{'overhead':>9}")
            for n in SIZES:
                topic = f"bench-{n}"
                await core.create_topic(topic, partitions=2)
                txn_rate, txn_msgs = await _round(core, topic, n, True, seconds, clients)
                _, plain_msgs = await _round(core, topic, n, False, seconds, clients)
                print(f"{n:>8} {txn_rate:>9.0f} {txn_msgs:>11.0f} {plain_msgs:>13.0f} "
                      f"{plain_msgs / txn_msgs:>8.2f}x")
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--clients", type=int, default=1)
    parser.add_argument("--durability", default="always")
    args = parser.parse_args()
    trio.run(main, args.seconds, args.clients, args.durability)
