"""Typed errors of subscriptions and consumers.

Every error derives from :class:`SubscriptionError`, itself a
:class:`core.errors.CoreError`; a call that raises one leaves the subscription,
its cursor and its consumers unchanged.
"""

from __future__ import annotations

from core.errors import CoreError


class SubscriptionError(CoreError):
    """Base class of subscription and consumer errors."""


class SubscriptionTypeConflict(SubscriptionError):
    """A consumer asked for a type other than the one the subscription's consumers use."""


class ConsumerBusy(SubscriptionError):
    """An Exclusive subscription already has a consumer."""


class ConsumerClosed(SubscriptionError):
    """The consumer was closed (by its owner, an unsubscribe or a deleted topic)."""


class UnknownSubscription(SubscriptionError, LookupError):
    """No subscription with this name exists on the topic."""


class SubscriptionBusy(SubscriptionError):
    """The subscription still has consumers (unsubscribe without ``force``)."""


class UnknownMessage(SubscriptionError, LookupError):
    """An ack or nack names a position this subscription never delivered.

    Positions that were delivered (pending, waiting for redelivery) or are
    already acknowledged are known; anything else (never read, past the high
    watermark, negative, or delivered before a seek) is not.
    """

    def __init__(self, partition: int, offset: int) -> None:
        super().__init__(f"partition {partition} offset {offset} was not delivered")
        self.partition = partition
        self.offset = offset


class CumulativeAckNotAllowed(SubscriptionError):
    """Cumulative acks are for Exclusive and Failover subscriptions only."""
