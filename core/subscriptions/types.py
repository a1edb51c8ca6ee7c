"""Subscription types, start positions and the read-only views used for visibility."""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass, fields

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


@dataclass(frozen=True, slots=True)
class Delivery:
    """One message handed to a consumer; ack it with ``(partition, offset)``."""

    topic: str
    partition: int
    offset: int
    message: Message
    #: how many times this message was redelivered before this delivery
    redelivery_count: int
    #: the broker publish time of the batch holding the message (epoch ms)
    publish_time_ms: int


_DELIVERY_FIELDS = (
    "topic", "partition", "offset", "message", "redelivery_count", "publish_time_ms",
)
if tuple(f.name for f in fields(Delivery)) != _DELIVERY_FIELDS:  # pragma: no cover
    raise RuntimeError("update core.subscriptions.types.new_delivery for Delivery's fields")
_DELIVERY_SETTERS: tuple[Callable[[object, object], None], ...] = tuple(
    Delivery.__dict__[name].__set__ for name in _DELIVERY_FIELDS
)


def new_delivery(
    topic: str, partition: int, offset: int, message: Message, redelivery_count: int,
    publish_time_ms: int,
) -> Delivery:
    """``Delivery(...)`` for the dispatch hot path.

    A frozen dataclass's ``__init__`` fills each slot through ``object.__setattr__``;
    this sets the same slots through their descriptors at about half the cost.
    The field check above makes any change to :class:`Delivery` fail at import.
    """
    d: Delivery = object.__new__(Delivery)
    s_topic, s_partition, s_offset, s_message, s_count, s_time = _DELIVERY_SETTERS
    s_topic(d, topic)
    s_partition(d, partition)
    s_offset(d, offset)
    s_message(d, message)
    s_count(d, redelivery_count)
    s_time(d, publish_time_ms)
    return d


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
