"""Subscriptions: durable named cursors over a topic's partitions, and their consumers.

Kafka consumer groups, AMQP queues and MQTT subscriptions all map onto these::

    async with open_subscription_manager(core) as subs:
        consumer = await subs.subscribe("orders", "billing", SubscriptionType.SHARED)
        consumer.flow(100)                      # permits: at most 100 queued for it
        delivery = await consumer.receive()
        consumer.ack(delivery.partition, delivery.offset)   # or nack / reject

Modules: :mod:`~core.subscriptions.types` (types, positions, visibility views),
:mod:`~core.subscriptions.dispatch` (who gets a message, pure logic),
:mod:`~core.subscriptions.redelivery` (backoff, ack timeout, dead letters),
:mod:`~core.subscriptions.filters`, :mod:`~core.subscriptions.backlog`,
:mod:`~core.subscriptions.consumer`, :mod:`~core.subscriptions.subscription`
(one partition: how delivery works) and :mod:`~core.subscriptions.manager`.
"""

from core.subscriptions.consumer import DEFAULT_MAX_PERMITS, Consumer
from core.subscriptions.errors import (
    ConsumerBusy,
    ConsumerClosed,
    CumulativeAckNotAllowed,
    SubscriptionBusy,
    SubscriptionError,
    SubscriptionTypeConflict,
    UnknownMessage,
    UnknownSubscription,
)
from core.subscriptions.filters import MessageFilter
from core.subscriptions.manager import (
    SubscriptionManager,
    TopicSubscription,
    open_subscription_manager,
)
from core.subscriptions.redelivery import RedeliveryPolicy
from core.subscriptions.subscription import PartitionSubscription, SubscriptionOptions
from core.subscriptions.types import (
    ConsumerInfo,
    Delivery,
    InitialPosition,
    StartPosition,
    SubscriptionInfo,
    SubscriptionType,
)

__all__ = [
    "DEFAULT_MAX_PERMITS",
    "Consumer",
    "ConsumerBusy",
    "ConsumerClosed",
    "ConsumerInfo",
    "CumulativeAckNotAllowed",
    "Delivery",
    "InitialPosition",
    "MessageFilter",
    "PartitionSubscription",
    "RedeliveryPolicy",
    "StartPosition",
    "SubscriptionBusy",
    "SubscriptionError",
    "SubscriptionInfo",
    "SubscriptionManager",
    "SubscriptionOptions",
    "SubscriptionType",
    "SubscriptionTypeConflict",
    "TopicSubscription",
    "UnknownMessage",
    "UnknownSubscription",
    "open_subscription_manager",
]
