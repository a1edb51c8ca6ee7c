"""Redelivery policy (nack backoff, ack timeout, dead letters) and the redelivery queue.

Sans-IO: times are plain floats (the subscription passes ``trio.current_time()``),
so this module is tested without a clock.

A message leaves a consumer without being acknowledged in three ways: a
negative ack (redelivered after the backoff :meth:`RedeliveryPolicy.nack_delay`),
an ack timeout, or its consumer going away (both redelivered at once).  Each
time, the cursor's redelivery count grows; once a message would be redelivered
more than ``max_redeliveries`` times it goes to the dead letter topic instead
(published there, then acknowledged).
"""

from __future__ import annotations

import bisect
import contextlib
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

from core.errors import TopicAlreadyExists, UnknownTopic
from core.headers import PREFIX, format_uint
from core.names import TopicName
from core.records import Message

if TYPE_CHECKING:
    from core.api import Core

__all__ = [
    "DLQ_OFFSET_HEADER",
    "DLQ_PARTITION_HEADER",
    "DLQ_TOPIC_HEADER",
    "RedeliveryPolicy",
    "RedeliveryQueue",
    "Waiting",
    "dead_letter_message",
    "dead_letter_topic",
    "publish_dead_letters",
]

#: gateway headers (``ps.*``, see :mod:`core.headers`) on a dead-lettered message:
#: where it came from
DLQ_TOPIC_HEADER = f"{PREFIX}dlq.topic"
DLQ_PARTITION_HEADER = f"{PREFIX}dlq.partition"
DLQ_OFFSET_HEADER = f"{PREFIX}dlq.offset"
_NOT_TOPIC_CHARS = re.compile(r"[^A-Za-z0-9._=-]")


@dataclass(frozen=True, slots=True)
class RedeliveryPolicy:
    """How unacknowledged messages come back.

    ``nack_delay_s * nack_multiplier ** (n - 1)``, capped at
    ``nack_max_delay_s``, is the wait before the ``n``-th redelivery after a
    negative ack.  ``ack_timeout_s`` (None: never) redelivers a message its
    consumer holds that long without acking.  With ``max_redeliveries`` set, a
    message is redelivered at most that many times, then dead-lettered to
    ``dead_letter_topic`` (default ``<topic>-<subscription>-DLQ``).  Dead letters
    are on when either is set (:attr:`dead_letters`): rejected messages go there
    too, and expired ones when the subscription asks for it.
    """

    nack_delay_s: float = 1.0
    nack_max_delay_s: float = 60.0
    nack_multiplier: float = 2.0
    ack_timeout_s: float | None = None
    max_redeliveries: int | None = None
    dead_letter_topic: str | None = None
    #: the key dead letters get (AMQP ``x-dead-letter-routing-key``); None keeps theirs
    dead_letter_key: bytes | None = None

    def __post_init__(self) -> None:
        if self.nack_delay_s < 0 or self.nack_max_delay_s < self.nack_delay_s:
            raise ValueError("need 0 <= nack_delay_s <= nack_max_delay_s")
        if self.nack_multiplier < 1:
            raise ValueError("nack_multiplier must be >= 1")
        if self.ack_timeout_s is not None and self.ack_timeout_s <= 0:
            raise ValueError("ack_timeout_s must be positive")
        if self.max_redeliveries is not None and self.max_redeliveries < 0:
            raise ValueError("max_redeliveries must be >= 0")

    def nack_delay(self, redelivery_count: int) -> float:
        """Seconds before redelivering a message nacked for the ``redelivery_count``-th time."""
        if redelivery_count <= 1:
            return self.nack_delay_s
        # cap the exponent first: large counts must not overflow the float
        exponent = min(redelivery_count - 1, 1024)
        try:
            delay = self.nack_delay_s * self.nack_multiplier**exponent
        except OverflowError:
            return self.nack_max_delay_s
        return min(delay, self.nack_max_delay_s)

    @property
    def dead_letters(self) -> bool:
        """Whether messages can be dead-lettered (a topic or a redelivery limit is set)."""
        return self.dead_letter_topic is not None or self.max_redeliveries is not None

    def should_dead_letter(self, redelivery_count: int) -> bool:
        """Whether a message due for its ``redelivery_count``-th redelivery goes to the DLQ."""
        return self.max_redeliveries is not None and redelivery_count > self.max_redeliveries


def dead_letter_topic(topic: TopicName, subscription: str, policy: RedeliveryPolicy) -> TopicName:
    """The dead letter topic of ``subscription`` on ``topic`` (characters a topic
    name cannot hold become ``_``)."""
    if policy.dead_letter_topic is not None:
        return TopicName.parse(policy.dead_letter_topic, topic.tenant, topic.namespace)
    sub = _NOT_TOPIC_CHARS.sub("_", subscription)
    return TopicName(topic.tenant, topic.namespace, f"{topic.base.local}-{sub}-DLQ")


def dead_letter_message(
    message: Message, topic: TopicName, partition: int, offset: int, key: bytes | None = None
) -> Message:
    """``message`` as published to a dead letter topic: headers name where it came from;
    ``key`` (when given) replaces its key."""
    headers = [
        *message.headers,
        (DLQ_TOPIC_HEADER, str(topic.base).encode()),
        (DLQ_PARTITION_HEADER, format_uint(partition)),
        (DLQ_OFFSET_HEADER, format_uint(offset)),
    ]
    return Message(message.key if key is None else key, message.value, headers,
                   message.timestamp_ms)


async def publish_dead_letters(core: Core, topic: TopicName, messages: list[Message]) -> None:
    """Append ``messages`` as one batch to partition 0 of ``topic`` (created if missing).

    Raises the core's errors (the caller keeps the messages and retries later).
    """
    try:
        await core.topic_metadata(topic, create_if_missing=True)
    except UnknownTopic:  # auto-creation is off: dead letter topics are created anyway
        with contextlib.suppress(TopicAlreadyExists):
            await core.create_topic(topic)
    await core.append_messages(topic, 0, messages)


@dataclass(slots=True)
class Waiting:
    """A message waiting for redelivery."""

    offset: int
    message: Message
    publish_time_ms: int
    ready_at: float


class RedeliveryQueue:
    """Messages waiting for redelivery, iterated in offset order.

    Its size is bounded by what consumers held (permits), since only delivered
    messages come here.
    """

    __slots__ = ("_items", "_offsets")

    def __init__(self) -> None:
        self._items: dict[int, Waiting] = {}
        self._offsets: list[int] = []

    def __len__(self) -> int:
        return len(self._items)

    def __contains__(self, offset: object) -> bool:
        return offset in self._items

    def add(self, item: Waiting) -> None:
        """Queue ``item`` (replacing a queued message with the same offset)."""
        if item.offset not in self._items:
            bisect.insort(self._offsets, item.offset)
        self._items[item.offset] = item

    def remove(self, offset: int) -> Waiting | None:
        """Take ``offset`` out of the queue (acked meanwhile); return it if it was there."""
        item = self._items.pop(offset, None)
        if item is not None:
            i = bisect.bisect_left(self._offsets, offset)
            del self._offsets[i]
        return item

    def remove_below(self, bound: int) -> int:
        """Drop every offset ``< bound`` (a cumulative ack); return how many."""
        i = bisect.bisect_left(self._offsets, bound)
        for offset in self._offsets[:i]:
            del self._items[offset]
        del self._offsets[:i]
        return i

    def clear(self) -> None:
        self._items.clear()
        self._offsets.clear()

    def in_order(self) -> list[Waiting]:
        """Every queued message, lowest offset first (a snapshot: safe to change meanwhile)."""
        return [self._items[o] for o in self._offsets]

    def next_ready_at(self, now: float) -> float | None:
        """The earliest ``ready_at`` still in the future, or None."""
        future = [w.ready_at for w in self._items.values() if w.ready_at > now]
        return min(future) if future else None
