"""Subscription types, start positions and the read-only views used for visibility."""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

from core.records import Message

__all__ = [
    "ConsumerInfo",
    "Delivery",
    "InitialPosition",
    "StartPosition",
    "SubscriptionInfo",
    "SubscriptionType",
    "new_delivery",
]


class SubscriptionType(enum.Enum):
    """How a subscription shares its messages among its consumers."""

    #: one consumer; a second one gets :class:`~core.subscriptions.errors.ConsumerBusy`
    EXCLUSIVE = "Exclusive"
    #: round-robin among the consumers that have permits
    SHARED = "Shared"
    #: one active consumer per partition, the others standing by in priority order
    FAILOVER = "Failover"
    #: messages with the same key always go to the same consumer (hash ranges)
    KEY_SHARED = "Key_Shared"

    @property
    def allows_cumulative_ack(self) -> bool:
        """Whether a cumulative ack is meaningful (delivery in offset order to one consumer)."""
        return self in (SubscriptionType.EXCLUSIVE, SubscriptionType.FAILOVER)


class InitialPosition(enum.Enum):
    """Where a new subscription's cursor starts (an ``int`` offset is accepted too)."""

    EARLIEST = "earliest"
    LATEST = "latest"


#: an :class:`InitialPosition` or an explicit offset (clamped to the stored range)
StartPosition = InitialPosition | int


class Delivery(NamedTuple):
    """One message handed to a consumer; ack it with ``(partition, offset)``.

    Immutable like the frozen dataclass it was: a named tuple, because the
    dispatch hot path builds one per message per consumer
    (:func:`new_delivery` costs about a third of a dataclass ``__init__``).
    """

    topic: str
    partition: int
    offset: int
    message: Message
    #: how many times this message was redelivered before this delivery
    redelivery_count: int
    #: the broker publish time of the batch holding the message (epoch ms)
    publish_time_ms: int


_new_tuple: Callable[[type[Delivery], tuple[str, int, int, Message, int, int]], Delivery] = (
    tuple.__new__
)


def new_delivery(
    topic: str, partition: int, offset: int, message: Message, redelivery_count: int,
    publish_time_ms: int,
) -> Delivery:
    """``Delivery(...)`` for the dispatch hot path: the tuple built directly, without the
    keyword-capable ``__new__`` a named tuple generates."""
    return _new_tuple(
        Delivery, (topic, partition, offset, message, redelivery_count, publish_time_ms)
    )


@dataclass(frozen=True, slots=True)
class ConsumerInfo:
    """A consumer as seen by an administrator."""

    consumer_id: int
    name: str
    priority: int
    permits: int
    #: messages delivered to it and not yet acknowledged (all partitions)
    unacked: int
    #: delivered messages waiting in its inbox (not yet received)
    queued: int


@dataclass(frozen=True, slots=True)
class SubscriptionInfo:
    """A subscription across every partition of its topic."""

    topic: str
    name: str
    type: SubscriptionType | None
    durable: bool
    #: offsets below the high watermark not acknowledged, summed over partitions
    backlog: int
    #: delivered and not yet acknowledged, summed over partitions
    unacked: int
    #: waiting for redelivery (nacked, timed out, or their consumer left)
    pending_redelivery: int
    consumers: tuple[ConsumerInfo, ...]
