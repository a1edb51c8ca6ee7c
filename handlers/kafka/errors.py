"""Typed errors of the Kafka wire codec, and Kafka's own error codes.

Two families, as in h11:

* :class:`KafkaCodecError` and its subclasses are raised by the sans-IO codec when the *peer*
  broke the protocol (bad frame size, undecodable header or body, an API or version we do not
  serve).  They carry what is known about the offending request so the session can log one
  clear line and, where Kafka would, answer before closing.
* :class:`ErrorCode` is the wire-level ``error_code`` field Kafka puts in responses.  Names and
  values follow Apache Kafka's ``Errors`` enum (and kafka-python's ``kafka.errors`` numbers).
"""

from __future__ import annotations

from enum import IntEnum

__all__ = [
    "ErrorCode",
    "FrameSizeError",
    "KafkaCodecError",
    "MalformedRequestError",
    "TruncatedFrameError",
    "UnsupportedApiKeyError",
    "UnsupportedVersionError",
]


class ErrorCode(IntEnum):
    """Kafka protocol error codes (the subset the gateway answers with)."""

    UNKNOWN_SERVER_ERROR = -1
    NONE = 0
    OFFSET_OUT_OF_RANGE = 1
    CORRUPT_MESSAGE = 2
    UNKNOWN_TOPIC_OR_PARTITION = 3
    INVALID_FETCH_SIZE = 4
    LEADER_NOT_AVAILABLE = 5
    NOT_LEADER_OR_FOLLOWER = 6
    REQUEST_TIMED_OUT = 7
    BROKER_NOT_AVAILABLE = 8
    REPLICA_NOT_AVAILABLE = 9
    MESSAGE_TOO_LARGE = 10
    OFFSET_METADATA_TOO_LARGE = 12
    NETWORK_EXCEPTION = 13
    COORDINATOR_LOAD_IN_PROGRESS = 14
    COORDINATOR_NOT_AVAILABLE = 15
    NOT_COORDINATOR = 16
    INVALID_TOPIC_EXCEPTION = 17
    RECORD_LIST_TOO_LARGE = 18
    NOT_ENOUGH_REPLICAS = 19
    INVALID_REQUIRED_ACKS = 21
    ILLEGAL_GENERATION = 22
    INCONSISTENT_GROUP_PROTOCOL = 23
    INVALID_GROUP_ID = 24
    UNKNOWN_MEMBER_ID = 25
    INVALID_SESSION_TIMEOUT = 26
    REBALANCE_IN_PROGRESS = 27
    INVALID_COMMIT_OFFSET_SIZE = 28
    TOPIC_AUTHORIZATION_FAILED = 29
    GROUP_AUTHORIZATION_FAILED = 30
    CLUSTER_AUTHORIZATION_FAILED = 31
    INVALID_TIMESTAMP = 32
    UNSUPPORTED_SASL_MECHANISM = 33
    ILLEGAL_SASL_STATE = 34
    UNSUPPORTED_VERSION = 35
    TOPIC_ALREADY_EXISTS = 36
    INVALID_PARTITIONS = 37
    INVALID_REPLICATION_FACTOR = 38
    INVALID_CONFIG = 40
    NOT_CONTROLLER = 41
    INVALID_REQUEST = 42
    UNSUPPORTED_FOR_MESSAGE_FORMAT = 43
    POLICY_VIOLATION = 44
    OUT_OF_ORDER_SEQUENCE_NUMBER = 45
    DUPLICATE_SEQUENCE_NUMBER = 46
    INVALID_PRODUCER_EPOCH = 47
    INVALID_TXN_STATE = 48
    INVALID_PRODUCER_ID_MAPPING = 49
    INVALID_TRANSACTION_TIMEOUT = 50
    CONCURRENT_TRANSACTIONS = 51
    TRANSACTION_COORDINATOR_FENCED = 52
    TRANSACTIONAL_ID_AUTHORIZATION_FAILED = 53
    OPERATION_NOT_ATTEMPTED = 55
    KAFKA_STORAGE_ERROR = 56
    SASL_AUTHENTICATION_FAILED = 58
    UNKNOWN_PRODUCER_ID = 59
    NON_EMPTY_GROUP = 68
    GROUP_ID_NOT_FOUND = 69
    FETCH_SESSION_ID_NOT_FOUND = 70
    INVALID_FETCH_SESSION_EPOCH = 71
    FENCED_LEADER_EPOCH = 74
    UNKNOWN_LEADER_EPOCH = 75
    UNSUPPORTED_COMPRESSION_TYPE = 76
    OFFSET_NOT_AVAILABLE = 78
    MEMBER_ID_REQUIRED = 79
    GROUP_MAX_SIZE_REACHED = 81
    FENCED_INSTANCE_ID = 82
    GROUP_SUBSCRIBED_TO_TOPIC = 86
    INVALID_RECORD = 87
    UNSTABLE_OFFSET_COMMIT = 88
    THROTTLING_QUOTA_EXCEEDED = 89
    PRODUCER_FENCED = 90
    UNKNOWN_TOPIC_ID = 100
    INCONSISTENT_TOPIC_ID = 103
    TRANSACTIONAL_ID_NOT_FOUND = 105


class KafkaCodecError(Exception):
    """Base class: the peer sent bytes the Kafka codec cannot accept.

    After any of these the connection's byte stream can no longer be trusted (except where a
    subclass says otherwise); the session should log ``str(error)`` and close.
    """


class FrameSizeError(KafkaCodecError):
    """A frame's 4-byte size prefix is negative or above the configured maximum.

    Raised as soon as the prefix is read, before any of the body is buffered.
    """

    def __init__(self, size: int, max_size: int) -> None:
        self.size = size
        self.max_size = max_size
        super().__init__(f"invalid request frame size {size} (allowed 0..{max_size})")


class TruncatedFrameError(KafkaCodecError):
    """The peer closed the stream in the middle of a frame."""

    def __init__(self, buffered: int) -> None:
        self.buffered = buffered
        super().__init__(f"connection closed with {buffered} bytes of an incomplete frame")


class _RequestError(KafkaCodecError):
    """An error tied to a request whose fixed header fields could be read."""

    def __init__(
        self,
        message: str,
        *,
        api_key: int | None = None,
        api_version: int | None = None,
        correlation_id: int | None = None,
    ) -> None:
        self.api_key = api_key
        self.api_version = api_version
        self.correlation_id = correlation_id
        super().__init__(message)


class MalformedRequestError(_RequestError):
    """The request header or body does not decode as its declared API and version.

    Covers short frames, bad lengths, invalid UTF-8, truncated fields and trailing bytes.
    Kafka's broker closes the connection in this case; so should we.
    """


class UnsupportedApiKeyError(_RequestError):
    """The request's API key is not one the gateway implements (Kafka closes the connection)."""


class UnsupportedVersionError(_RequestError):
    """The API is implemented but not at this version.

    ApiVersions is the exception and never raises this: see
    :class:`handlers.kafka.codec.UnsupportedApiVersionsRequest`.
    """
