"""The transaction coordinator: one engine for every protocol (``core.transactions``).

How a transaction runs
----------------------
1. ``init_producer(transactional_id)`` maps a transactional id to a producer id
   and bumps its epoch (logged): an open transaction of the previous epoch is
   aborted and the old epoch is fenced (:class:`ProducerFenced`).  ``begin()``
   without a producer uses a fresh anonymous producer id (Pulsar-style clients,
   AMQP ``tx.select``).
2. ``begin`` opens a transaction (at most one per producer id, as in Kafka);
   ``add_partitions`` logs the partitions *before* data may reach them, so a
   crash can never leave transactional data that no marker will close.
3. ``append``/``append_messages`` store transactional batches (pid/epoch,
   transactional bit); READ_COMMITTED readers do not see them yet
   (:mod:`core.transactions.visibility`).  ``ack_in_txn`` and
   ``commit_offsets`` hold acks and offset commits (:mod:`core.transactions.acks`).
4. ``end(txn, commit)``: the state moves to PREPARE_COMMIT/PREPARE_ABORT (no
   more work is accepted), the decision is logged (the commit point), markers
   are written to every partition, acks and offsets applied (commit) or
   released (abort), and COMPLETE_* is logged.  This runs shielded: a client
   that goes away mid-commit does not stop it.
5. A timer task aborts transactions that pass their timeout (trio's clock).

After a restart (:meth:`TransactionCoordinator.recover`, run by
:func:`open_transactions`) every decided-but-unfinished transaction is finished,
open ones get a fresh timeout, and producer epochs are as logged.
"""

from __future__ import annotations

import heapq
import logging
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import trio

from core.batch import split_batches
from core.errors import PartitionUnavailable, UnknownTopic
from core.partition import AppendResult
from core.records import Message, build_batch
from core.transactions.acks import (
    OffsetCommitter,
    PendingAcks,
    apply_acks,
    commit_offsets_to_cursors,
    partition_subscription,
)
from core.transactions.errors import (
    AckConflict,
    ConcurrentTransactions,
    InvalidProducerIdMapping,
    InvalidTransactionTimeout,
    InvalidTxnState,
    PartitionNotInTransaction,
    ProducerFenced,
    TooManyTransactions,
    TransactionTimedOut,
    UnknownTransaction,
)
from core.transactions.markers import ControlType, build_marker
from core.transactions.reads import CommittedRead, read_committed, stable_offset, wait_for_stable
from core.transactions.replay import mark_transactional
from core.transactions.state import (
    AckRef,
    OffsetRef,
    Transaction,
    TxnId,
    TxnPartition,
    TxnState,
)
from core.transactions.txn_log import TxnLog

if TYPE_CHECKING:
    from core.api import Core, TopicRef

__all__ = [
    "DEFAULT_MAX_OPEN",
    "DEFAULT_TIMEOUT_MS",
    "MAX_TIMEOUT_MS",
    "TransactionCoordinator",
    "TxnInfo",
    "open_transactions",
]

log = logging.getLogger(__name__)

DEFAULT_TIMEOUT_MS = 60_000
MAX_TIMEOUT_MS = 900_000
DEFAULT_MAX_OPEN = 10_000
#: finished transactions remembered for describe() and clear errors
FINISHED_KEPT = 1000
#: records appended between two checkpoints of the transaction log
CHECKPOINT_EVERY = 10_000
_MAX_EPOCH = 32_767
_MARKER_RETRIES = 8
_RETRY_STUCK_S = 5.0


@dataclass(frozen=True, slots=True)
class TxnInfo:
    """A transaction as :meth:`TransactionCoordinator.describe` shows it."""

    txn_id: TxnId
    transactional_id: str | None
    state: TxnState
    partitions: tuple[TxnPartition, ...]
    acks: int
    offset_commits: int
    timeout_ms: int
    timed_out: bool


class _Producer:
    __slots__ = ("current", "epoch", "pid", "sequences", "tid", "timeout_ms")

    def __init__(self, tid: str | None, pid: int, epoch: int, timeout_ms: int) -> None:
        self.tid = tid
        self.pid = pid
        self.epoch = epoch
        self.timeout_ms = timeout_ms
        self.current: TxnId | None = None
        #: next sequence per partition, for append_messages
        self.sequences: dict[TxnPartition, int] = {}

    def record(self) -> dict[str, Any]:
        return {"t": "producer", "tid": self.tid, "pid": self.pid, "epoch": self.epoch,
                "timeout_ms": self.timeout_ms}


class TransactionCoordinator:
    """Transactions over the core; see the module docstring.  Open with
    :func:`open_transactions` (``core.transactions`` in a running core)."""

    def __init__(
        self, core: Core, txn_log: TxnLog, nursery: trio.Nursery, *,
        max_open: int = DEFAULT_MAX_OPEN, default_timeout_ms: int = DEFAULT_TIMEOUT_MS,
        max_timeout_ms: int = MAX_TIMEOUT_MS,
    ) -> None:
        self.core = core
        self._log = txn_log
        self._nursery = nursery
        self.max_open = max_open
        self.default_timeout_ms = default_timeout_ms
        self.max_timeout_ms = max_timeout_ms
        #: applies committed offset commits (the Kafka handler may install its own)
        self.offset_committer: OffsetCommitter = commit_offsets_to_cursors
        #: fault injection for tests: called once a decision is durable, before markers
        self.after_decision: Callable[[Transaction], None] | None = None
        self._by_tid: dict[str, _Producer] = {}
        self._by_pid: dict[int, _Producer] = {}
        self._open: dict[TxnId, Transaction] = {}  # every transaction not complete
        self._finished: OrderedDict[TxnId, Transaction] = OrderedDict()
        self._done: dict[TxnId, trio.Event] = {}
        self._acks = PendingAcks()
        self._deadlines: list[tuple[float, TxnId]] = []  # heap, lazily cleaned
        self._timer_wakeup = trio.Event()
        self._stuck: dict[TxnId, Transaction] = {}
        self._serial = 0
        self._since_checkpoint = 0
        self._checkpointing = False
        self._init_lock = trio.Lock()
        self._marked: set[str] = set()  # logs known to be marked transactional

    # ------------------------------------------------------------ producers

    def _timeout(self, timeout_ms: int | None) -> int:
        if timeout_ms is None:
            return self.default_timeout_ms
        if not 0 < timeout_ms <= self.max_timeout_ms:
            raise InvalidTransactionTimeout(
                f"transaction timeout {timeout_ms} ms outside (0, {self.max_timeout_ms}]")
        return timeout_ms

    async def init_producer(
        self, transactional_id: str, timeout_ms: int | None = None
    ) -> tuple[int, int]:
        """``(producer id, epoch)`` for ``transactional_id``: a new epoch each call.

        The previous epoch's open transaction is aborted and its producer fenced.
        """
        timeout = self._timeout(timeout_ms)
        async with self._init_lock:
            entry = self._by_tid.get(transactional_id)
            if entry is None:
                pid = await self.core.allocate_producer_id()
                entry = _Producer(transactional_id, pid, 0, timeout)
            elif entry.epoch >= _MAX_EPOCH:
                self._by_pid.pop(entry.pid, None)
                old = entry
                entry = _Producer(transactional_id, await self.core.allocate_producer_id(), 0,
                                  timeout)
                entry.current = old.current
            else:
                entry.epoch += 1  # fences the old epoch at once
                entry.timeout_ms = timeout
                entry.sequences.clear()
            self._by_tid[transactional_id] = entry
            self._by_pid[entry.pid] = entry
            await self._log_records(entry.record())
            previous = entry.current
            txn = self._open.get(previous) if previous is not None else None
            if txn is not None:
                if txn.state.is_open:
                    await self._end(txn, commit=False)
                else:
                    await self._wait_done(txn.id)
            return entry.pid, entry.epoch

    def _producer(self, producer_id: int, epoch: int) -> _Producer:
        entry = self._by_pid.get(producer_id)
        if entry is None:
            raise InvalidProducerIdMapping(f"producer id {producer_id} is not transactional")
        if epoch < entry.epoch:
            raise ProducerFenced(
                f"producer {producer_id} epoch {epoch} is fenced by epoch {entry.epoch}")
        if epoch > entry.epoch:
            raise InvalidProducerIdMapping(f"producer {producer_id} has no epoch {epoch}")
        return entry

    # ------------------------------------------------------------ transactions

    async def begin(
        self, producer: tuple[int, int] | None = None, timeout_ms: int | None = None
    ) -> TxnId:
        """Open a transaction for ``(producer id, epoch)`` (from :meth:`init_producer`),
        or for a fresh anonymous producer when None."""
        if len(self._open) >= self.max_open:
            raise TooManyTransactions(f"{len(self._open)} transactions are open")
        if producer is None:
            timeout = self._timeout(timeout_ms)
            entry = _Producer(None, await self.core.allocate_producer_id(), 0, timeout)
            self._by_pid[entry.pid] = entry
        else:
            entry = self._producer(*producer)
            timeout = entry.timeout_ms if timeout_ms is None else self._timeout(timeout_ms)
            if entry.current is not None and entry.current in self._open:
                current = self._open[entry.current]
                if current.state.is_open:
                    raise InvalidTxnState(
                        f"producer {entry.pid} already has open transaction {current.id}")
                raise ConcurrentTransactions(f"transaction {current.id} is still completing")
        if len(self._open) >= self.max_open:  # checked again: allocation may have waited
            raise TooManyTransactions(f"{len(self._open)} transactions are open")
        txn_id = TxnId(entry.pid, entry.epoch, self._serial)
        self._serial += 1
        deadline = trio.current_time() + timeout / 1000
        txn = Transaction(txn_id, timeout, deadline, entry.tid)
        self._open[txn_id] = txn
        entry.current = txn_id
        self._schedule(txn)
        return txn_id

    def current(self, producer_id: int) -> TxnId | None:
        """The producer's transaction that is not complete yet, if any."""
        entry = self._by_pid.get(producer_id)
        if entry is None or entry.current is None or entry.current not in self._open:
            return None
        return entry.current

    async def ensure_open(self, producer_id: int, epoch: int) -> TxnId:
        """The producer's open transaction, begun if needed (Kafka begins implicitly)."""
        entry = self._producer(producer_id, epoch)
        found = self.current(producer_id)
        if found is not None and self._open[found].state.is_open:
            return found
        return await self.begin((entry.pid, entry.epoch))

    def _get(self, txn_id: TxnId) -> Transaction:
        txn = self._open.get(txn_id)
        if txn is None:
            txn = self._finished.get(txn_id)
            if txn is None:
                raise UnknownTransaction(f"no transaction {txn_id}")
        entry = self._by_pid.get(txn_id.producer_id)
        if entry is not None and entry.epoch > txn_id.epoch:
            raise ProducerFenced(
                f"transaction {txn_id}: producer epoch {entry.epoch} fenced epoch {txn_id.epoch}")
        return txn

    def _open_txn(self, txn_id: TxnId) -> Transaction:
        txn = self._get(txn_id)
        txn.check_open()
        return txn

    async def add_partitions(
        self, txn_id: TxnId, partitions: Iterable[tuple[TopicRef, int]]
    ) -> None:
        """Register partitions the transaction will write to (durably, before any write)."""
        txn = self._open_txn(txn_id)
        wanted: list[TxnPartition] = []
        for topic, n in partitions:
            await self.core._partition(topic, n)  # UnknownTopic / UnknownPartition
            wanted.append((str(self.core.parse_topic(topic).base), n))
        new = txn.new_partitions(wanted)
        if not new:
            return
        for topic_name, n in new:
            log_name = self.core.parse_topic(topic_name).log_name(n)
            if log_name not in self._marked:
                await mark_transactional(self.core.storage.metadata, log_name)
                self._marked.add(log_name)
        await self._log_records(txn.to_record(extra_partitions=new))
        txn.add_partitions(new)

    async def append(
        self, txn_id: TxnId, topic: TopicRef, partition: int,
        batches: bytes | bytearray | memoryview,
    ) -> AppendResult:
        """Append transactional batches (Kafka produce with a transactional id).

        Every batch must carry the transaction's producer id and epoch and the
        transactional bit; the partition must have been added.
        """
        found = self.core._cache.get(topic)
        if found is None:
            found = await self.core._topic(topic)
        if not 0 <= partition < len(found.partitions):
            await self.core._partition(topic, partition)  # raises UnknownPartition
        validated = split_batches(batches, found.policies.max_message_bytes)
        for b in validated:
            if not b.is_transactional or b.producer_id != txn_id.producer_id:
                raise InvalidTxnState(
                    f"transaction {txn_id}: batch of producer {b.producer_id} "
                    f"(transactional={b.is_transactional})")
            if b.producer_epoch != txn_id.epoch:
                raise ProducerFenced(f"transaction {txn_id}: batch epoch {b.producer_epoch}")
        # From here to the partition's offset assignment: no checkpoint.
        self._check_append(txn_id, (str(found.name), partition))
        return await found.partitions[partition].append(validated, self.core._clock_ms())

    def _check_append(self, txn_id: TxnId, tp: TxnPartition) -> Transaction:
        txn = self._open_txn(txn_id)
        if not txn.check_partition(tp):
            raise PartitionNotInTransaction(f"{tp[0]} partition {tp[1]} not added to {txn_id}")
        return txn

    async def append_messages(
        self, txn_id: TxnId, topic: TopicRef, partition: int, messages: Iterable[Message],
        compression: int = 0,
    ) -> AppendResult:
        """Encode neutral messages as one transactional batch and append it
        (sequence numbers are kept per producer and partition)."""
        found = self.core._cache.get(topic)
        if found is None:
            found = await self.core._topic(topic)
        p = await self.core._partition(topic, partition)
        tp = (str(found.name), partition)
        msgs = list(messages)
        # From here to the partition's offset assignment: no checkpoint.
        self._check_append(txn_id, tp)
        entry = self._by_pid[txn_id.producer_id]
        seq = entry.sequences.get(tp, 0)
        batch = build_batch(msgs, compression, producer_id=txn_id.producer_id,
                            producer_epoch=txn_id.epoch, base_sequence=seq, transactional=True)
        entry.sequences[tp] = (seq + len(msgs)) % 0x80000000
        validated = split_batches(batch, found.policies.max_message_bytes)
        try:
            return await p.append(validated, self.core._clock_ms())
        except BaseException:
            if entry.sequences.get(tp) == (seq + len(msgs)) % 0x80000000:
                entry.sequences[tp] = seq
            raise

    def ack_in_txn(
        self, txn_id: TxnId, topic: TopicRef, subscription: str, partition: int, offset: int
    ) -> None:
        """Acknowledge a delivered message inside the transaction (effective at commit)."""
        txn = self._open_txn(txn_id)
        name = str(self.core.parse_topic(topic).base)
        sub = partition_subscription(self.core, name, subscription, partition)
        if sub is None or not sub.holds_unacked(offset):
            raise AckConflict(
                f"{name} partition {partition} offset {offset} is not delivered and unacked "
                f"on {subscription!r}")
        ack = AckRef(name, subscription, partition, offset)
        self._acks.claim(ack, txn_id)
        try:
            txn.add_ack(ack)
        except BaseException:
            self._acks.release([ack], txn_id)
            raise

    def commit_offsets(
        self, txn_id: TxnId, subscription: str, offsets: dict[tuple[TopicRef, int], int]
    ) -> None:
        """Hold offset commits (Kafka TxnOffsetCommit) until the transaction commits."""
        txn = self._open_txn(txn_id)
        for (topic, partition), offset in offsets.items():
            name = str(self.core.parse_topic(topic).base)
            txn.set_offset(OffsetRef(subscription, name, partition), offset)

    async def end(self, txn_id: TxnId, commit: bool) -> None:
        """Commit or abort; returns once markers are written and acks applied.

        Retrying an end that already happened (or is happening) with the same
        outcome waits for it and succeeds; the other outcome raises.
        """
        txn = self._get(txn_id)
        if not txn.state.is_open:
            if txn.committed == commit:
                await self._wait_done(txn_id)
                return
            if txn.timed_out:
                raise TransactionTimedOut(f"transaction {txn_id} timed out and was aborted")
            raise InvalidTxnState(f"transaction {txn_id} is {txn.state.value}")
        await self._end(txn, commit)

    async def _end(self, txn: Transaction, commit: bool) -> None:
        txn.decide(commit)  # synchronous: no more work is accepted from here
        self._done.setdefault(txn.id, trio.Event())
        with trio.CancelScope(shield=True):
            try:
                await self._log_records(txn.to_record())
            except Exception:
                self._mark_stuck(txn)
                raise
            if self.after_decision is not None:
                self.after_decision(txn)
            await self._complete(txn)

    async def _wait_done(self, txn_id: TxnId) -> None:
        if txn_id not in self._open:
            return
        event = self._done.setdefault(txn_id, trio.Event())
        await event.wait()

    async def _complete(self, txn: Transaction) -> None:
        """Markers, acks, offsets, then COMPLETE_* (the decision is logged)."""
        try:
            control = ControlType.COMMIT if txn.committed else ControlType.ABORT
            failures: list[Exception] = []
            async with trio.open_nursery() as nursery:
                for tp in txn.partitions:
                    nursery.start_soon(self._write_marker, txn, tp, control, failures)
            if failures:
                raise failures[0]
            apply_acks(self.core, txn.acks, txn.committed)
            if txn.committed and txn.offsets:
                await self.offset_committer(self.core, dict(txn.offsets))
            if txn.committed and txn.acks:
                await self.core.subscriptions.flush()  # acks durable before COMPLETE
            txn.complete()
            await self._log_records(txn.to_record())
        except Exception:
            log.exception("transaction %s: completion failed; retrying later", txn.id)
            self._mark_stuck(txn)
            raise
        self._stuck.pop(txn.id, None)
        self._forget(txn)

    async def _write_marker(self, txn: Transaction, tp: TxnPartition, control: ControlType,
                            failures: list[Exception]) -> None:
        marker = build_marker(txn.id.producer_id, txn.id.epoch, control, self.core._clock_ms())
        for attempt in range(_MARKER_RETRIES):
            try:
                await self.core.append(tp[0], tp[1], marker, allow_control=True)
                return
            except UnknownTopic:
                log.info("transaction %s: %s partition %d is gone; no marker", txn.id, *tp)
                return
            except PartitionUnavailable as exc:
                if attempt == _MARKER_RETRIES - 1:
                    failures.append(exc)
                    return
                await trio.sleep(0.05 * 2**attempt)
            except Exception as exc:  # a typed core error reaches the caller, not a group
                failures.append(exc)
                return

    def _mark_stuck(self, txn: Transaction) -> None:
        self._stuck[txn.id] = txn
        self._timer_wakeup.set()

    def _forget(self, txn: Transaction) -> None:
        self._open.pop(txn.id, None)
        self._acks.release(txn.acks, txn.id)
        entry = self._by_pid.get(txn.id.producer_id)
        if entry is not None and entry.current == txn.id:
            entry.current = None
            if entry.tid is None:
                del self._by_pid[entry.pid]  # anonymous producers live for one transaction
        self._finished[txn.id] = txn
        while len(self._finished) > FINISHED_KEPT:
            self._finished.popitem(last=False)
        event = self._done.pop(txn.id, None)
        if event is not None:
            event.set()

    # ------------------------------------------------------------ queries

    def describe(self, txn_id: TxnId) -> TxnInfo:
        """State, partitions and held work of an open or recently finished transaction."""
        txn = self._open.get(txn_id) or self._finished.get(txn_id)
        if txn is None:
            raise UnknownTransaction(f"no transaction {txn_id}")
        return TxnInfo(txn.id, txn.transactional_id, txn.state, tuple(txn.partitions),
                       len(txn.acks), len(txn.offsets), txn.timeout_ms, txn.timed_out)

    def list(self) -> list[TxnInfo]:
        """Every transaction not complete yet, oldest first."""
        return [self.describe(t) for t in sorted(self._open, key=lambda t: t.serial)]

    def has_pending_offsets(self, subscription: str, topic: TopicRef, partition: int) -> bool:
        """Whether a transaction not complete yet holds an offset commit for this cursor
        (Kafka's OffsetFetch with RequireStable answers UNSTABLE_OFFSET_COMMIT then)."""
        ref = OffsetRef(subscription, str(self.core.parse_topic(topic).base), partition)
        return any(ref in t.offsets for t in self._open.values())

    async def read_committed(
        self, topic: TopicRef, partition: int, offset: int, max_bytes: int
    ) -> CommittedRead:
        """See :func:`core.transactions.reads.read_committed`."""
        return await read_committed(self.core, topic, partition, offset, max_bytes)

    async def last_stable_offset(self, topic: TopicRef, partition: int) -> int:
        """First offset of the partition's oldest open transaction, else its high watermark."""
        return await stable_offset(self.core, topic, partition)

    async def wait_for_stable(self, topic: TopicRef, partition: int, offset: int) -> None:
        """Return once the last stable offset is above ``offset`` (bound it with
        ``trio.move_on_after``)."""
        await wait_for_stable(self.core, topic, partition, offset)

    # ------------------------------------------------------------ log

    async def _log_records(self, *records: dict[str, Any]) -> None:
        await self._log.append(*records)
        self._since_checkpoint += len(records)
        if self._since_checkpoint >= CHECKPOINT_EVERY and not self._checkpointing:
            self._checkpointing = True
            self._nursery.start_soon(self._checkpoint)

    async def _checkpoint(self) -> None:
        """Restate the live state at the log's end and drop the segments before it."""
        try:
            records = [p.record() for p in self._by_tid.values()]
            records += [t.to_record() for t in self._open.values()]
            self._since_checkpoint = 0
            if not records:
                records = [{"t": "checkpoint"}]
            position = await self._log.append(*records)
            dropped = await self._log.truncate_before(position)
            log.info("transaction log checkpoint: %d records kept, %d dropped",
                     len(records), dropped)
        except Exception:
            log.exception("transaction log checkpoint failed")
        finally:
            self._checkpointing = False

    # ------------------------------------------------------------ recovery

    async def recover(self) -> int:
        """Rebuild state from the log and finish decided transactions; return how many
        transactions were finished."""
        txns: dict[TxnId, Transaction] = {}
        now = trio.current_time()
        records = await self._log.replay()
        for record in records:
            try:
                kind = record.get("t")
                if kind == "producer":
                    prod = _Producer(str(record["tid"]), int(record["pid"]),
                                     int(record["epoch"]), int(record["timeout_ms"]))
                    old = self._by_tid.get(str(record["tid"]))
                    if old is not None:
                        self._by_pid.pop(old.pid, None)
                    self._by_tid[str(record["tid"])] = prod
                    self._by_pid[prod.pid] = prod
                elif kind == "txn":
                    txn = Transaction.from_record(record, 0.0)
                    known = txns.get(txn.id)
                    if known is None or txn.state.rank >= known.state.rank:
                        txns[txn.id] = txn
                    self._serial = max(self._serial, txn.id.serial + 1)
            except (KeyError, TypeError, ValueError) as exc:
                log.warning("transaction log: bad record %r skipped: %s", record, exc)
        finished = 0
        for txn in sorted(txns.values(), key=lambda t: t.id.serial):
            if txn.state.is_complete:
                continue
            entry = self._by_pid.get(txn.id.producer_id)
            if entry is None:
                entry = self._by_pid[txn.id.producer_id] = _Producer(
                    None, txn.id.producer_id, txn.id.epoch, txn.timeout_ms)
            entry.current = txn.id
            self._open[txn.id] = txn
            self._done[txn.id] = trio.Event()
            if txn.state.is_decided:
                await self._complete(txn)
                finished += 1
            elif entry.epoch > txn.id.epoch:
                await self._end(txn, commit=False)  # fenced before the crash
                finished += 1
            elif entry.tid is None:
                # an anonymous producer (an AMQP channel) died with the broker: nobody can
                # finish this transaction, and while open it holds the last stable offset
                await self._end(txn, commit=False)
                finished += 1
            else:
                txn.deadline = now + txn.timeout_ms / 1000
                self._schedule(txn)
        if self._log.entries >= CHECKPOINT_EVERY:
            await self._checkpoint()
        return finished

    # ------------------------------------------------------------ timeouts

    def _schedule(self, txn: Transaction) -> None:
        heapq.heappush(self._deadlines, (txn.deadline, txn.id))
        if self._deadlines[0][1] == txn.id:
            self._timer_wakeup.set()

    async def run_timeouts(self) -> None:
        """Abort transactions past their deadline, retry transactions that could not
        finish (runs in the coordinator's nursery)."""
        next_retry = trio.current_time() + _RETRY_STUCK_S
        while True:
            now = trio.current_time()
            while self._deadlines and self._deadlines[0][0] <= now:
                _, txn_id = heapq.heappop(self._deadlines)
                txn = self._open.get(txn_id)
                if txn is not None and txn.state.is_open and txn.deadline <= now:
                    txn.timed_out = True
                    log.info("transaction %s timed out after %d ms; aborting", txn_id,
                             txn.timeout_ms)
                    self._nursery.start_soon(self._abort_quietly, txn)
            if self._stuck and now >= next_retry:
                next_retry = now + _RETRY_STUCK_S
                for txn in list(self._stuck.values()):
                    self._stuck.pop(txn.id, None)
                    self._nursery.start_soon(self._retry_stuck, txn)
            deadline = self._deadlines[0][0] if self._deadlines else float("inf")
            if self._stuck:
                deadline = min(deadline, max(next_retry, now))
            self._timer_wakeup = trio.Event()
            with trio.move_on_at(deadline):
                await self._timer_wakeup.wait()

    async def _abort_quietly(self, txn: Transaction) -> None:
        try:
            await self._end(txn, commit=False)
        except Exception:
            log.exception("transaction %s: timeout abort failed", txn.id)

    async def _retry_stuck(self, txn: Transaction) -> None:
        with trio.CancelScope(shield=True):
            try:
                await self._log_records(txn.to_record())
                await self._complete(txn)
            except Exception:
                log.warning("transaction %s: still cannot finish", txn.id)


@asynccontextmanager
async def open_transactions(core: Core, **options: Any) -> AsyncIterator[TransactionCoordinator]:
    """The coordinator of ``core``: log opened, recovered, timeout task running.

    ``options``: ``max_open``, ``default_timeout_ms``, ``max_timeout_ms``.
    Needs ``core.subscriptions`` (transactional acks are applied to them).
    """
    txn_log = await TxnLog.open(core.storage, core._clock_ms)
    async with trio.open_nursery() as nursery:
        coordinator = TransactionCoordinator(core, txn_log, nursery, **options)
        await coordinator.recover()
        nursery.start_soon(coordinator.run_timeouts)
        try:
            yield coordinator
        finally:
            nursery.cancel_scope.cancel()
