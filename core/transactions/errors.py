"""Typed errors of the transaction engine (all :class:`core.errors.CoreError`).

Handlers map them onto wire codes, e.g. for Kafka: :class:`ProducerFenced` ->
``PRODUCER_FENCED``, :class:`InvalidTxnState` -> ``INVALID_TXN_STATE``,
:class:`ConcurrentTransactions` -> ``CONCURRENT_TRANSACTIONS``,
:class:`TransactionTimedOut` -> ``INVALID_PRODUCER_EPOCH`` (Kafka's answer
after a timeout abort), :class:`UnknownTransaction` /
:class:`InvalidProducerIdMapping` -> ``INVALID_PRODUCER_ID_MAPPING``,
:class:`TooManyTransactions` -> ``COORDINATOR_NOT_AVAILABLE``.
"""

from __future__ import annotations

from core.errors import CoreError

__all__ = [
    "AckConflict",
    "ConcurrentTransactions",
    "InvalidProducerIdMapping",
    "InvalidTransactionTimeout",
    "InvalidTxnState",
    "PartitionNotInTransaction",
    "ProducerFenced",
    "TooManyTransactions",
    "TransactionError",
    "TransactionTimedOut",
    "TransactionTooLarge",
    "UnknownTransaction",
]


class TransactionError(CoreError):
    """Base class of transaction errors."""


class UnknownTransaction(TransactionError, LookupError):
    """No such transaction (never begun, or finished long enough ago to be forgotten)."""


class InvalidTxnState(TransactionError):
    """The operation is not allowed in the transaction's state (e.g. it is committing)."""


class TransactionTimedOut(InvalidTxnState):
    """The transaction ran past its timeout and was aborted."""


class ConcurrentTransactions(InvalidTxnState):
    """The producer's previous transaction is still completing; retry shortly."""


class PartitionNotInTransaction(InvalidTxnState):
    """A transactional append to a partition not added with ``add_partitions`` first."""


class ProducerFenced(TransactionError):
    """A newer epoch of this transactional id exists: this producer is a zombie."""


class InvalidProducerIdMapping(TransactionError):
    """The producer id is not a transactional producer this coordinator knows."""


class TooManyTransactions(TransactionError):
    """The coordinator's limit of open transactions is reached."""


class AckConflict(TransactionError):
    """The message is not delivered-and-unacknowledged, or another transaction holds its ack."""


class TransactionTooLarge(TransactionError):
    """The transaction holds too many partitions, acks or offset commits."""


class InvalidTransactionTimeout(TransactionError, ValueError):
    """A transaction timeout outside ``(0, max_timeout_ms]``."""
