"""Subscriptions: durable named cursors over a topic's partitions, and their consumers.

Kafka consumer groups, AMQP queues and MQTT subscriptions all map onto these::

    async with open_subscription_manager(core) as subs:
        consumer = await subs.subscribe("orders", "billing", SubscriptionType.SHARED)
        consumer.flow(100)                      # permits: at most 100 queued for it
        delivery = await consumer.receive()
        consumer.ack(delivery.partition, delivery.offset)   # or nack / reject

Durability of acks
------------------
An ack (nack, reject, purge…) changes the in-memory cursor at once; writing it
is coalesced.  The subscription's task hands the changed cursor to the store
once per pass (right after the ack, unless the task is busy), and the metadata
store writes what it was handed within its flush interval (``file://``: SQLite,
50 ms by default, ``synchronous=FULL``).  An ack is **durable** once
``await manager.flush()`` has returned after it was made: that call hands every
changed cursor to the store and waits until they are written.  Without a
flush, an ack normally becomes durable within one pass plus the flush interval,
but nothing is promised.  After a crash (even SIGKILL), acks that were not yet
durable may be lost: those messages are **redelivered** (at-least-once); an
ack that was durable is never undone, and a message never acked is always
redelivered, never lost.  One more case of redelivery after a restart: a
cursor with more than ``max_persisted_ranges`` ack ranges stores only the
lowest ones (:meth:`core.cursor.Cursor.to_bytes`).

Delayed delivery
----------------
On **Shared** subscriptions a message whose ``ps.deliver-at-ms`` header
(:data:`core.headers.DELIVER_AT_MS`) is in the future is held back until then,
then delivered in due order; other types deliver it at once.  Held messages are
unacknowledged (the cursor stops at them, a restart holds them again) and
bounded per partition (``max_delayed``): see :mod:`~core.subscriptions.delayed`.

Modules: :mod:`~core.subscriptions.types` (types, positions, visibility views),
:mod:`~core.subscriptions.dispatch` (who gets a message, pure logic),
:mod:`~core.subscriptions.redelivery` (backoff, ack timeout, dead letters),
:mod:`~core.subscriptions.delayed` (messages held until due),
:mod:`~core.subscriptions.options`, :mod:`~core.subscriptions.log_reads`,
:mod:`~core.subscriptions.filters`, :mod:`~core.subscriptions.backlog`,
:mod:`~core.subscriptions.consumer`, :mod:`~core.subscriptions.subscription`
(one partition: how delivery works) and :mod:`~core.subscriptions.manager`.
"""

from core.subscriptions.consumer import DEFAULT_MAX_PERMITS, Consumer
from core.subscriptions.delayed import DEFAULT_MAX_DELAYED
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
    "DEFAULT_MAX_DELAYED",
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
