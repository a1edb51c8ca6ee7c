"""The transaction state machine (sans-IO: no trio, no storage).

Theory of operation
-------------------
A transaction belongs to one producer id and epoch; :class:`TxnId` adds a
coordinator-wide serial number.  Its states follow Kafka's coordinator::

    EMPTY --add_partitions--> ONGOING
    EMPTY | ONGOING --decide(commit)--> PREPARE_COMMIT --complete--> COMPLETE_COMMIT
    EMPTY | ONGOING --decide(abort)---> PREPARE_ABORT  --complete--> COMPLETE_ABORT

Work (appends, acks, offset commits) is accepted in EMPTY and ONGOING only.
``decide`` is the commit point once its record is in the transaction log:
from then on the transaction is finished after a crash too (markers written,
acks and offsets applied), whatever the client does.  Every record the
coordinator logs is :meth:`Transaction.to_record` (the whole transaction, as
Kafka logs full metadata on each transition); :meth:`Transaction.from_record`
reads it back.  Wrong-state calls raise the typed errors of
:mod:`core.transactions.errors`.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any

from core.transactions.errors import (
    InvalidTxnState,
    TransactionTimedOut,
    TransactionTooLarge,
)

__all__ = [
    "MAX_ACKS",
    "MAX_PARTITIONS",
    "AckRef",
    "OffsetRef",
    "Transaction",
    "TxnId",
    "TxnPartition",
    "TxnState",
]

#: per transaction: partitions written, acks held (offset commits count as acks)
MAX_PARTITIONS = 10_000
MAX_ACKS = 100_000


class TxnState(enum.Enum):
    """Kafka's transaction states (``Dead``/``PrepareEpochFence`` are not needed here)."""

    EMPTY = "Empty"
    ONGOING = "Ongoing"
    PREPARE_COMMIT = "PrepareCommit"
    PREPARE_ABORT = "PrepareAbort"
    COMPLETE_COMMIT = "CompleteCommit"
    COMPLETE_ABORT = "CompleteAbort"

    @property
    def is_open(self) -> bool:
        """Work may still be added."""
        return self in (TxnState.EMPTY, TxnState.ONGOING)

    @property
    def is_decided(self) -> bool:
        """Commit or abort decided, not yet complete."""
        return self in (TxnState.PREPARE_COMMIT, TxnState.PREPARE_ABORT)

    @property
    def is_complete(self) -> bool:
        return self in (TxnState.COMPLETE_COMMIT, TxnState.COMPLETE_ABORT)

    @property
    def rank(self) -> int:
        """Progress: 0 empty, 1 ongoing, 2 decided, 3 complete (replay never goes back)."""
        if self.is_complete:
            return 3
        if self.is_decided:
            return 2
        return 1 if self is TxnState.ONGOING else 0


_NEXT: dict[TxnState, frozenset[TxnState]] = {
    TxnState.EMPTY: frozenset({TxnState.ONGOING, TxnState.PREPARE_COMMIT,
                               TxnState.PREPARE_ABORT}),
    TxnState.ONGOING: frozenset({TxnState.PREPARE_COMMIT, TxnState.PREPARE_ABORT}),
    TxnState.PREPARE_COMMIT: frozenset({TxnState.COMPLETE_COMMIT}),
    TxnState.PREPARE_ABORT: frozenset({TxnState.COMPLETE_ABORT}),
    TxnState.COMPLETE_COMMIT: frozenset(),
    TxnState.COMPLETE_ABORT: frozenset(),
}


@dataclass(frozen=True, order=True, slots=True)
class TxnId:
    """A transaction: its producer id and epoch and a coordinator serial number."""

    producer_id: int
    epoch: int
    serial: int

    def __str__(self) -> str:
        return f"{self.producer_id}:{self.epoch}:{self.serial}"


#: (canonical topic name, partition)
TxnPartition = tuple[str, int]


@dataclass(frozen=True, order=True, slots=True)
class AckRef:
    """One message acknowledged inside a transaction."""

    topic: str
    subscription: str
    partition: int
    offset: int


@dataclass(frozen=True, order=True, slots=True)
class OffsetRef:
    """Where a transactional offset commit goes: a subscription's cursor on a partition."""

    subscription: str
    topic: str
    partition: int


class Transaction:
    """One transaction's state; see the module docstring.

    ``deadline`` is in the caller's clock (trio time for the coordinator).
    """

    __slots__ = ("acks", "deadline", "id", "offsets", "partitions", "state", "timed_out",
                 "timeout_ms", "transactional_id")

    def __init__(self, txn_id: TxnId, timeout_ms: int, deadline: float,
                 transactional_id: str | None = None) -> None:
        self.id = txn_id
        self.transactional_id = transactional_id
        self.timeout_ms = timeout_ms
        self.deadline = deadline
        self.state = TxnState.EMPTY
        self.partitions: dict[TxnPartition, None] = {}  # insertion-ordered set
        self.acks: dict[AckRef, None] = {}
        self.offsets: dict[OffsetRef, int] = {}
        self.timed_out = False

    # ------------------------------------------------------------ checks

    def check_open(self) -> None:
        """Raise unless work may be added (EMPTY or ONGOING)."""
        if self.state.is_open:
            return
        if self.timed_out:
            raise TransactionTimedOut(f"transaction {self.id} timed out and was aborted")
        raise InvalidTxnState(f"transaction {self.id} is {self.state.value}")

    def _move(self, to: TxnState) -> None:
        if to not in _NEXT[self.state]:
            raise InvalidTxnState(f"transaction {self.id}: {self.state.value} -> {to.value}")
        self.state = to

    # ------------------------------------------------------------ work

    def new_partitions(self, partitions: list[TxnPartition]) -> list[TxnPartition]:
        """Those of ``partitions`` not added yet (log them, then :meth:`add_partitions`)."""
        self.check_open()
        new = [tp for tp in dict.fromkeys(partitions) if tp not in self.partitions]
        if len(self.partitions) + len(new) > MAX_PARTITIONS:
            raise TransactionTooLarge(f"more than {MAX_PARTITIONS} partitions")
        return new

    def add_partitions(self, partitions: list[TxnPartition]) -> list[TxnPartition]:
        """Add partitions (once logged); return those that were new."""
        new = self.new_partitions(partitions)
        for tp in new:
            self.partitions[tp] = None
        if self.state is TxnState.EMPTY:
            self._move(TxnState.ONGOING)
        return new

    def check_partition(self, tp: TxnPartition) -> bool:
        """Whether ``tp`` was added (and work may still be added)."""
        self.check_open()
        return tp in self.partitions

    def add_ack(self, ack: AckRef) -> None:
        self.check_open()
        if len(self.acks) + len(self.offsets) >= MAX_ACKS:
            raise TransactionTooLarge(f"more than {MAX_ACKS} acks")
        self.acks[ack] = None

    def set_offset(self, ref: OffsetRef, offset: int) -> None:
        self.check_open()
        if ref not in self.offsets and len(self.acks) + len(self.offsets) >= MAX_ACKS:
            raise TransactionTooLarge(f"more than {MAX_ACKS} acks")
        self.offsets[ref] = offset

    # ------------------------------------------------------------ outcome

    def decide(self, commit: bool) -> None:
        """Move to PREPARE_COMMIT / PREPARE_ABORT (log the record before acting on it)."""
        self.check_open()
        self._move(TxnState.PREPARE_COMMIT if commit else TxnState.PREPARE_ABORT)

    @property
    def committed(self) -> bool:
        """True once the decision is commit (PREPARE_COMMIT or COMPLETE_COMMIT)."""
        return self.state in (TxnState.PREPARE_COMMIT, TxnState.COMPLETE_COMMIT)

    def complete(self) -> None:
        """PREPARE_* -> COMPLETE_*."""
        self._move(TxnState.COMPLETE_COMMIT if self.state is TxnState.PREPARE_COMMIT
                   else TxnState.COMPLETE_ABORT)

    # ------------------------------------------------------------ records

    def to_record(self, extra_partitions: list[TxnPartition] | None = None) -> dict[str, Any]:
        """The JSON-able transaction-log record of the current state.

        With ``extra_partitions`` (partitions about to be added): the ONGOING
        record to log before adding them.
        """
        state = self.state
        partitions = [list(tp) for tp in self.partitions]
        if extra_partitions:
            state = TxnState.ONGOING
            partitions.extend(list(tp) for tp in extra_partitions)
        record: dict[str, Any] = {
            "t": "txn",
            "id": [self.id.producer_id, self.id.epoch, self.id.serial],
            "tid": self.transactional_id,
            "state": state.value,
            "timeout_ms": self.timeout_ms,
            "timed_out": self.timed_out,
            "partitions": partitions,
        }
        if self.state.is_decided:  # what recovery must apply
            record["acks"] = [[a.topic, a.subscription, a.partition, a.offset]
                              for a in self.acks]
            record["offsets"] = [[r.subscription, r.topic, r.partition, o]
                                 for r, o in self.offsets.items()]
        return record

    @classmethod
    def from_record(cls, record: dict[str, Any], deadline: float) -> Transaction:
        """Rebuild from :meth:`to_record` output (ValueError/KeyError/TypeError if malformed)."""
        pid, epoch, serial = (int(x) for x in record["id"])
        txn = cls(TxnId(pid, epoch, serial), int(record["timeout_ms"]), deadline,
                  record.get("tid"))
        txn.state = TxnState(record["state"])
        txn.timed_out = bool(record.get("timed_out", False))
        txn.partitions = {(str(t), int(n)): None for t, n in record["partitions"]}
        txn.acks = {AckRef(str(t), str(s), int(n), int(o)): None
                    for t, s, n, o in record.get("acks", [])}
        txn.offsets = {OffsetRef(str(s), str(t), int(n)): int(o)
                       for s, t, n, o in record.get("offsets", [])}
        return txn
