"""Core errors -> Kafka error codes.

The core raises typed :class:`core.errors.CoreError` subclasses; a Kafka response carries an
``error_code`` per topic or partition.  :func:`error_code` picks the code of the most specific
class in the table (walking the exception's MRO), so a new core subclass inherits its parent's
code until it gets its own row.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

from core.dedup import InvalidProducerEpoch, OutOfOrderSequence, UnknownProducerId
from core.errors import (
    CoreError,
    CorruptBatch,
    CorruptEntry,
    InvalidBatch,
    InvalidName,
    InvalidPartitionCount,
    InvalidPolicy,
    MessageTooLarge,
    OffsetOutOfRange,
    PartitionUnavailable,
    TopicAlreadyExists,
    UnknownNamespace,
    UnknownTenant,
    UnknownTopic,
    UnsupportedBatchVersion,
)
from core.exclusive import ProducerFenced
from core.transactions import errors as txn
from handlers.kafka.errors import ErrorCode

__all__ = ["CODES", "error_code"]

CODES: Mapping[type[CoreError], ErrorCode] = MappingProxyType({
    # names: a tenant/namespace/topic that breaks the naming rules
    InvalidName: ErrorCode.INVALID_TOPIC_EXCEPTION,
    # lookups (UnknownPartition is a subclass of UnknownTopic)
    UnknownTopic: ErrorCode.UNKNOWN_TOPIC_OR_PARTITION,
    UnknownNamespace: ErrorCode.UNKNOWN_TOPIC_OR_PARTITION,
    UnknownTenant: ErrorCode.UNKNOWN_TOPIC_OR_PARTITION,
    TopicAlreadyExists: ErrorCode.TOPIC_ALREADY_EXISTS,
    InvalidPartitionCount: ErrorCode.INVALID_PARTITIONS,
    InvalidPolicy: ErrorCode.INVALID_CONFIG,
    # produce: the batch was rejected and nothing was stored
    InvalidBatch: ErrorCode.INVALID_RECORD,  # e.g. a control batch from a client
    CorruptBatch: ErrorCode.CORRUPT_MESSAGE,
    UnsupportedBatchVersion: ErrorCode.INVALID_RECORD,  # Produce v3+ must carry magic 2
    MessageTooLarge: ErrorCode.MESSAGE_TOO_LARGE,
    # fetch / list offsets
    OffsetOutOfRange: ErrorCode.OFFSET_OUT_OF_RANGE,
    # storage trouble: retriable, the client refreshes metadata and tries again
    PartitionUnavailable: ErrorCode.KAFKA_STORAGE_ERROR,
    CorruptEntry: ErrorCode.KAFKA_STORAGE_ERROR,
    # idempotent producers (core.dedup) and producer access modes (core.exclusive)
    OutOfOrderSequence: ErrorCode.OUT_OF_ORDER_SEQUENCE_NUMBER,
    InvalidProducerEpoch: ErrorCode.INVALID_PRODUCER_EPOCH,
    UnknownProducerId: ErrorCode.UNKNOWN_PRODUCER_ID,
    ProducerFenced: ErrorCode.PRODUCER_FENCED,
    # transactions (core.transactions.errors; its docstring gives this mapping)
    txn.ProducerFenced: ErrorCode.PRODUCER_FENCED,
    txn.InvalidTxnState: ErrorCode.INVALID_TXN_STATE,  # also PartitionNotInTransaction
    txn.ConcurrentTransactions: ErrorCode.CONCURRENT_TRANSACTIONS,
    txn.TransactionTimedOut: ErrorCode.INVALID_PRODUCER_EPOCH,  # Kafka's answer after a timeout
    txn.UnknownTransaction: ErrorCode.INVALID_PRODUCER_ID_MAPPING,
    txn.InvalidProducerIdMapping: ErrorCode.INVALID_PRODUCER_ID_MAPPING,
    txn.TooManyTransactions: ErrorCode.COORDINATOR_NOT_AVAILABLE,
    txn.InvalidTransactionTimeout: ErrorCode.INVALID_TRANSACTION_TIMEOUT,
})
"""Most specific core error class -> Kafka error code."""


def error_code(exc: BaseException) -> ErrorCode:
    """The Kafka error code for ``exc``: its table entry, else ``UNKNOWN_SERVER_ERROR``."""
    for cls in type(exc).__mro__:
        code = CODES.get(cls)
        if code is not None:
            return code
    return ErrorCode.UNKNOWN_SERVER_ERROR
