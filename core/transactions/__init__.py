"""Transactions: atomic produce and ack across topics, READ_COMMITTED visibility.

A running core has one :class:`~core.transactions.coordinator.TransactionCoordinator`
as ``core.transactions``::

    pid, epoch = await core.transactions.init_producer("my-app", timeout_ms=30_000)
    txn = await core.transactions.begin((pid, epoch))        # or begin() anonymously
    await core.transactions.add_partitions(txn, [("orders", 0), ("audit", 0)])
    await core.transactions.append_messages(txn, "orders", 0, [Message(b"k", b"v")])
    core.transactions.ack_in_txn(txn, "input", "my-sub", 0, offset)
    core.transactions.commit_offsets(txn, "kafka:group", {("input", 0): offset + 1})
    await core.transactions.end(txn, commit=True)

Modules: :mod:`~core.transactions.state` (the sans-IO state machine),
:mod:`~core.transactions.txn_log` (the durable coordinator log),
:mod:`~core.transactions.markers` (control batches),
:mod:`~core.transactions.visibility` (per-partition LSO and aborted index, sans-IO),
:mod:`~core.transactions.replay` (rebuilding that index at partition open),
:mod:`~core.transactions.reads` (READ_COMMITTED reads),
:mod:`~core.transactions.acks` (acks and offset commits held until commit),
:mod:`~core.transactions.coordinator`, :mod:`~core.transactions.errors`.

This package's ``__init__`` only re-exports leaf modules: ``core.partition``
imports the visibility index, and the coordinator imports ``core.partition``.
"""

from core.transactions.errors import (
    AckConflict,
    ConcurrentTransactions,
    InvalidProducerIdMapping,
    InvalidTransactionTimeout,
    InvalidTxnState,
    PartitionNotInTransaction,
    ProducerFenced,
    TooManyTransactions,
    TransactionError,
    TransactionTimedOut,
    TransactionTooLarge,
    UnknownTransaction,
)
from core.transactions.markers import ControlType, build_marker, marker_type
from core.transactions.state import AckRef, OffsetRef, TxnId, TxnState
from core.transactions.visibility import AbortedTxn, IsolationLevel, TxnIndex

__all__ = [
    "AbortedTxn",
    "AckConflict",
    "AckRef",
    "ConcurrentTransactions",
    "ControlType",
    "InvalidProducerIdMapping",
    "InvalidTransactionTimeout",
    "InvalidTxnState",
    "IsolationLevel",
    "OffsetRef",
    "PartitionNotInTransaction",
    "ProducerFenced",
    "TooManyTransactions",
    "TransactionError",
    "TransactionTimedOut",
    "TransactionTooLarge",
    "TxnId",
    "TxnIndex",
    "TxnState",
    "UnknownTransaction",
    "build_marker",
    "marker_type",
]
