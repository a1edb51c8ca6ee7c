"""Redelivery policy (nack backoff, ack timeout, dead letters) and the redelivery queue.

Sans-IO: times are plain floats (the subscription passes ``trio.current_time()``),
so this module is tested without a clock.

A message leaves a consumer without being acknowledged in three ways: a
negative ack (redelivered after the backoff :meth:`RedeliveryPolicy.nack_delay`),
an ack timeout, or its consumer going away (both redelivered at once).  Each
time, the cursor's redelivery count grows; once a message would be redelivered
more than ``max_redeliveries`` times it goes to the dead letter topic instead
(published there, then acknowledged).

Dead letters
------------
A message is dead-lettered for one of four reasons (:class:`DeadLetterReason`):
rejected by its consumer, past the redelivery limit, expired (TTL or its own
expiry), or dropped from the head of a full queue (``maxlen``, AMQP
``x-max-length``).  By default the dead letter is the message plus the
``ps.dlq.*`` headers saying where it came from and why
(:func:`dead_letter_message`); a protocol that has its own convention supplies
:attr:`RedeliveryPolicy.dead_letter_rewrite`, which turns (message, reason) into
the dead letter instead (AMQP adds RabbitMQ's ``x-death``).
:func:`dead_letters` applies the one or the other to the subscription's dead
letter list, and :func:`dead_letter_dropped` publishes the dead letters of
messages dropped by drop-head.
"""

from __future__ import annotations

import bisect
import contextlib
import enum
import logging
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from core.errors import CoreError, OffsetOutOfRange, TopicAlreadyExists, UnknownTopic
from core.headers import PREFIX, format_uint
from core.names import TopicName
from core.records import Message, decode_batch
from core.subscriptions.items import Buffered

if TYPE_CHECKING:
    from core.api import Core
    from core.subscriptions.options import SubscriptionOptions

__all__ = [
    "DLQ_OFFSET_HEADER",
    "DLQ_PARTITION_HEADER",
    "DLQ_REASON_HEADER",
    "DLQ_TOPIC_HEADER",
    "DeadLetter",
    "DeadLetterReason",
    "DeadLetterRewrite",
    "RedeliveryPolicy",
    "RedeliveryQueue",
    "Waiting",
    "dead_letter_dropped",
    "dead_letter_message",
    "dead_letter_topic",
    "dead_letters",
    "publish_dead_letters",
]

log = logging.getLogger(__name__)

#: gateway headers (``ps.*``, see :mod:`core.headers`) on a dead-lettered message:
#: where it came from
DLQ_TOPIC_HEADER = f"{PREFIX}dlq.topic"
DLQ_PARTITION_HEADER = f"{PREFIX}dlq.partition"
DLQ_OFFSET_HEADER = f"{PREFIX}dlq.offset"
#: ... and why (a :class:`DeadLetterReason` value)
DLQ_REASON_HEADER = f"{PREFIX}dlq.reason"
_NOT_TOPIC_CHARS = re.compile(r"[^A-Za-z0-9._=-]")
#: dead letters published at a time; bytes read at a time for drop-head's dead letters
_DEAD_LETTER_BATCH = 100
_DROPPED_READ_BYTES = 1 << 20


class DeadLetterReason(enum.StrEnum):
    """Why a message is dead-lettered (the values are RabbitMQ's ``x-death`` reasons)."""

    #: negatively acknowledged for good (AMQP ``basic.reject``/``nack`` without requeue)
    REJECTED = "rejected"
    #: its subscription's TTL or its own expiry (``ps.expiry-ms``) ran out
    EXPIRED = "expired"
    #: dropped from the head of a full queue (AMQP ``x-max-length``, drop-head)
    MAXLEN = "maxlen"
    #: due for redelivery more than ``max_redeliveries`` times
    DELIVERY_LIMIT = "delivery_limit"


#: turns (message, reason) into the message appended to the dead letter topic
DeadLetterRewrite = Callable[[Message, DeadLetterReason], Message]


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
    #: builds the dead letter instead of :func:`dead_letter_message` (its result is
    #: appended as is: ``dead_letter_key`` is then the rewrite's business)
    dead_letter_rewrite: DeadLetterRewrite | None = field(default=None, compare=False)

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
    message: Message, topic: TopicName, partition: int, offset: int, key: bytes | None = None,
    reason: DeadLetterReason | None = None,
) -> Message:
    """``message`` as published to a dead letter topic: headers name where it came from
    (and why, when ``reason`` is given); ``key`` (when given) replaces its key."""
    headers = [
        *message.headers,
        (DLQ_TOPIC_HEADER, str(topic.base).encode()),
        (DLQ_PARTITION_HEADER, format_uint(partition)),
        (DLQ_OFFSET_HEADER, format_uint(offset)),
    ]
    if reason is not None:
        headers.append((DLQ_REASON_HEADER, reason.value.encode()))
    return Message(message.key if key is None else key, message.value, headers,
                   message.timestamp_ms)


@dataclass(slots=True)
class DeadLetter(Buffered):
    """An entry of a subscription's dead letter list that says why it is there.

    The read-ahead puts plain :class:`Buffered` items there for expired
    messages: a plain item counts as :attr:`DeadLetterReason.EXPIRED`.
    """

    reason: DeadLetterReason


def dead_letters(
    items: Iterable[Buffered], topic: TopicName, partition: int, policy: RedeliveryPolicy
) -> list[Message]:
    """The messages to append to the dead letter topic for ``items`` (taken from
    ``partition`` of ``topic``): the policy's rewrite of each, else
    :func:`dead_letter_message` with the policy's key.

    A rewrite that raises is logged and the default dead letter used: a dead
    letter is never lost to it.
    """
    rewrite = policy.dead_letter_rewrite
    out = []
    for item in items:
        reason = item.reason if isinstance(item, DeadLetter) else DeadLetterReason.EXPIRED
        if rewrite is not None:
            try:
                out.append(rewrite(item.message, reason))
                continue
            except Exception:
                log.exception("dead letter rewrite failed for offset %d of %s; using the "
                              "default dead letter", item.offset, topic.log_name(partition))
        out.append(dead_letter_message(item.message, topic, partition, item.offset,
                                       policy.dead_letter_key, reason))
    return out


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


async def dead_letter_dropped(
    core: Core, topic: TopicName, partition: int, subscription: str,
    options: SubscriptionOptions, dropped: Sequence[tuple[int, int]], now_ms: int,
) -> int:
    """Publish the dead letters of the offsets drop-head just acknowledged (``dropped``:
    ascending half-open ranges); return how many were published.

    Read back from the log ``_DROPPED_READ_BYTES`` at a time and published
    ``_DEAD_LETTER_BATCH`` at a time.  Skipped: control records, messages the
    subscription's filter rejects (not the queue's), and expired ones unless
    ``options`` dead-letter those (reason ``expired``); the rest go with reason
    ``maxlen``.  As the offsets are acknowledged already, a failure is logged and
    the remaining dead letters are lost (RabbitMQ's at-most-once dead-lettering).
    """
    policy = options.redelivery
    if not policy.dead_letters or not dropped:
        return 0
    target = dead_letter_topic(topic, subscription, policy)
    batch: list[Buffered] = []
    published = 0
    try:
        for lo, hi in dropped:
            position = lo
            while position < hi:
                try:
                    entries = await core.read(topic, partition, position, _DROPPED_READ_BYTES)
                except OffsetOutOfRange as exc:
                    if exc.earliest <= position:
                        raise
                    position = exc.earliest  # retention removed the rest: nothing to send
                    continue
                if not entries:
                    break
                for entry in entries:
                    for stored in decode_batch(entry.batch):
                        if not position <= stored.offset < hi or stored.control:
                            continue
                        item = _dropped_item(options, stored.offset, stored.message,
                                             entry.broker_timestamp, now_ms)
                        if item is None:
                            continue
                        batch.append(item)
                        if len(batch) >= _DEAD_LETTER_BATCH:
                            await publish_dead_letters(
                                core, target, dead_letters(batch, topic, partition, policy))
                            published += len(batch)
                            batch.clear()
                    position = max(position, entry.last_offset + 1)
                    if position >= hi:
                        break
        if batch:
            await publish_dead_letters(core, target, dead_letters(batch, topic, partition, policy))
            published += len(batch)
    except CoreError:
        log.exception("dead letters of messages dropped from %s on %s failed", subscription,
                      topic.log_name(partition))
    return published


def _dropped_item(
    options: SubscriptionOptions, offset: int, message: Message, publish_time_ms: int,
    now_ms: int,
) -> DeadLetter | None:
    """What a message dropped by drop-head becomes on the dead letter list (None: nothing)."""
    if options.filter is not None and not options.filter(message):
        return None
    if options.expired(message, publish_time_ms, now_ms):
        if not options.dead_letter_expired:
            return None
        return DeadLetter(offset, message, publish_time_ms, DeadLetterReason.EXPIRED)
    return DeadLetter(offset, message, publish_time_ms, DeadLetterReason.MAXLEN)


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
