"""Helpers for transaction tests, and a Jepsen-style checker of transactional pipelines.

:func:`committed_values` / :func:`uncommitted_values` read a partition the way a
READ_COMMITTED / READ_UNCOMMITTED Kafka consumer does (markers skipped; aborted
data skipped with the ``aborted_transactions`` list).  :class:`PipelineChecker`
runs concurrent read-process-write loops in-process and checks the history.
"""

from __future__ import annotations

import random
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import trio

from core.api import Core, open_core
from core.batch import read_header
from core.config import CoreSettings
from core.records import Message, decode_batch
from core.subscriptions import Consumer, SubscriptionType
from core.transactions import TransactionError, TxnId, TxnState
from storage.api import Storage

__all__ = [
    "CheckResult",
    "PipelineChecker",
    "committed_values",
    "open_test_core",
    "uncommitted_values",
]


@asynccontextmanager
async def open_test_core(storage: Storage) -> AsyncIterator[Core]:
    """A core on ``storage`` with retention off."""
    async with open_core(storage, CoreSettings(retention_check_interval_ms=0)) as core:
        yield core


async def committed_values(core: Core, topic: str, partition: int = 0,
                           start: int = 0) -> list[tuple[int, bytes | None]]:
    """``(offset, value)`` below the LSO, without markers and aborted data."""
    out: list[tuple[int, bytes | None]] = []
    offset = start
    while True:
        read = await core.transactions.read_committed(topic, partition, offset, 1 << 20)
        if not read.entries:
            return out
        for entry in read.entries:
            header = read_header(entry.batch)
            if header.is_control or read.is_aborted(entry):
                continue
            out.extend((m.offset, m.message.value) for m in decode_batch(entry.batch))
        offset = read.entries[-1].last_offset + 1


async def uncommitted_values(core: Core, topic: str, partition: int = 0
                             ) -> list[tuple[int, bytes | None]]:
    """``(offset, value)`` below the high watermark, without markers."""
    out: list[tuple[int, bytes | None]] = []
    offset = 0
    while True:
        entries = await core.read(topic, partition, offset, 1 << 20)
        if not entries:
            return out
        for entry in entries:
            out.extend((m.offset, m.message.value) for m in decode_batch(entry.batch)
                       if not m.control)
        offset = entries[-1].last_offset + 1


_COMMITTED = (TxnState.PREPARE_COMMIT, TxnState.COMPLETE_COMMIT)


@dataclass
class CheckResult:
    """What a checker run saw and which invariants broke (``errors`` empty: all held)."""

    inputs: int = 0
    committed: int = 0
    aborted: int = 0
    reads: int = 0
    errors: list[str] = field(default_factory=list)


@dataclass
class _TxnOutcome:
    txn: TxnId
    status: str = "open"  # open -> committed | aborted


class PipelineChecker:
    """Concurrent transactional read-process-write loops over one core.

    ``workers`` consumers share subscription ``pipe`` on topic ``in``; for each
    message a worker begins a transaction, writes ``value`` to
    ``out-<n % partitions>``, acks the input inside the transaction and commits
    or (randomly) aborts.  Concurrent READ_COMMITTED readers poll the outputs.
    Afterwards the history is checked:

    * no lost acknowledged write: every committed transaction's outputs are visible;
    * no duplicate: every input appears at most once in the committed output,
      and every input appears eventually (aborts are redelivered and retried);
    * no aborted read: no reader ever saw a value of an aborted transaction;
    * no read of uncommitted data: every value a reader saw belonged to a
      transaction that had reached its commit decision;
    * offsets monotonic: each reader saw increasing offsets per partition.
    """

    def __init__(self, core: Core, *, inputs: int = 60, workers: int = 4, partitions: int = 2,
                 abort_ratio: float = 0.3, seed: int = 0) -> None:
        self.core = core
        self.inputs = inputs
        self.workers = workers
        self.partitions = partitions
        self.abort_ratio = abort_ratio
        self.rng = random.Random(seed)
        self.result = CheckResult(inputs=inputs)
        self._by_value: dict[bytes, _TxnOutcome] = {}
        self._done = 0
        self._all_done = trio.Event()

    async def run(self) -> CheckResult:
        core = self.core
        await core.create_topic("in")
        for n in range(self.partitions):
            await core.create_topic(f"out-{n}")
        consumers = [await core.subscriptions.subscribe(
            "in", "pipe", SubscriptionType.SHARED, initial_position=0)
            for _ in range(self.workers)]
        for c in consumers:
            c.flow(4)
        for i in range(self.inputs):
            await core.append_messages("in", 0, [Message(None, b"%d" % i)])
        async with trio.open_nursery() as nursery:
            for c in consumers:
                nursery.start_soon(self._worker, c)
            for n in range(self.partitions):
                nursery.start_soon(self._reader, f"out-{n}")
            await self._all_done.wait()
            nursery.cancel_scope.cancel()
        await self._verify()
        return self.result

    async def _worker(self, consumer: Consumer) -> None:
        core = self.core
        while True:
            delivery = await consumer.receive()
            value = delivery.message.value or b""
            target = f"out-{int(value) % self.partitions}"
            out_value = b"out-" + value + b"-%d" % delivery.redelivery_count
            txn: TxnId = await core.transactions.begin()
            outcome = self._by_value[out_value] = _TxnOutcome(txn)
            await core.transactions.add_partitions(txn, [(target, 0)])
            await core.transactions.append_messages(txn, target, 0, [Message(value, out_value)])
            core.transactions.ack_in_txn(txn, "in", "pipe", 0, delivery.offset)
            await trio.sleep(self.rng.random() / 1000)
            commit = self.rng.random() >= self.abort_ratio
            try:
                await core.transactions.end(txn, commit)
            except TransactionError as exc:
                self.result.errors.append(f"end failed: {exc!r}")
                return
            outcome.status = "committed" if commit else "aborted"
            if commit:
                self.result.committed += 1
                self._done += 1
                if self._done == self.inputs:
                    self._all_done.set()
            else:
                self.result.aborted += 1
            consumer.flow(1)

    async def _reader(self, topic: str) -> None:
        offset = 0
        last = -1
        while True:
            read = await self.core.transactions.read_committed(topic, 0, offset, 4096)
            if not read.entries:
                await self.core.transactions.wait_for_stable(topic, 0, offset)
                continue
            for entry in read.entries:
                header = read_header(entry.batch)
                if header.is_control or read.is_aborted(entry):
                    continue
                for m in decode_batch(entry.batch):
                    self._observe(topic, m.offset, m.message.value or b"", last)
                    last = m.offset
            offset = read.entries[-1].last_offset + 1

    def _observe(self, topic: str, offset: int, value: bytes, last: int) -> None:
        self.result.reads += 1
        if offset <= last:
            self.result.errors.append(f"{topic}: offset {offset} after {last}")
        outcome = self._by_value.get(value)
        if outcome is None:
            self.result.errors.append(f"{topic}: unknown value {value!r}")
        elif outcome.status == "aborted":
            self.result.errors.append(f"{topic}: aborted value {value!r} read")
        elif self.core.transactions.describe(outcome.txn).state not in _COMMITTED:
            self.result.errors.append(f"{topic}: uncommitted value {value!r} read")

    async def _verify(self) -> None:
        seen: dict[bytes, int] = {}
        for n in range(self.partitions):
            for _, value in await committed_values(self.core, f"out-{n}"):
                assert value is not None
                key = value.rsplit(b"-", 1)[0]
                seen[key] = seen.get(key, 0) + 1
                outcome = self._by_value.get(value)
                if outcome is None or outcome.status != "committed":
                    self.result.errors.append(f"{value!r} visible but not committed")
        for value, outcome in self._by_value.items():
            if outcome.status == "committed" and value.rsplit(b"-", 1)[0] not in seen:
                self.result.errors.append(f"lost committed write {value!r}")
        for i in range(self.inputs):
            count = seen.get(b"out-%d" % i, 0)
            if count != 1:
                self.result.errors.append(f"input {i} appears {count} times in the output")
