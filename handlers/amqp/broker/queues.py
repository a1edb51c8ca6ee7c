"""Queues: declared attributes, arguments, server-generated names, and their core names.

A queue ``Q`` is a set of durable core subscriptions named ``amqp-queue:Q`` — one on the core
topic of every exchange it is bound to, whose filter is the union of its bindings from that
exchange.  Publishing through the default exchange with routing key ``Q`` appends to the queue's
own core topic ``amq.queue.Q`` (see
:meth:`handlers.amqp.broker.vhosts.VirtualHost.queue_topic`), on which the queue always has its
subscription (the implicit default binding); so a direct-to-queue message is stored once and
never scanned by other queues.

Queue arguments (:class:`QueueArguments`) and how they map onto the core:

* ``x-message-ttl`` → the subscription's ``message_ttl_ms`` (age by broker publish time);
  per-message ``expiration`` is honoured too (``ps.expiry-ms``).  Expired messages are dropped
  or dead-lettered when the queue is next *read* (a consumer or ``basic.get``), not on a timer,
  and count in ``message_count`` until then.
* ``x-dead-letter-exchange`` / ``x-dead-letter-routing-key`` → the redelivery policy's dead
  letter topic (the DLX's topic; with the default exchange, the queue named by the routing key)
  and key, used for expired messages: the core appends them to that one topic (the DLX's own
  exchange-to-exchange bindings are not applied) with its ``ps.dlq.*`` headers.  A message
  rejected (``basic.reject``/``nack`` without requeue) is dead-lettered by the session instead:
  routed through the DLX like a publish, with RabbitMQ's ``x-death``
  (:mod:`handlers.amqp.deadletter`).
* ``x-max-length`` with ``x-overflow`` ``drop-head`` (default: the oldest ready messages are
  acknowledged after each publish) or ``reject-publish``/``reject-publish-dlx`` (a publish
  routed to a full queue is nacked and not stored at all, for every queue).  Lengths are exact
  for messages that came through the default exchange; for a queue bound to other exchanges
  the core counts messages its binding filter will skip until a read passes them.
* ``x-expires`` → a timer on trio's clock per queue; the queue is deleted once it had no
  consumer and no declare/get for that long.
* ``x-single-active-consumer`` → a Failover subscription; the first consumer is active.
* ``x-max-priority`` (0..255) → consumers deliver the highest priority first among the messages they
  hold (prefetch plus a lookahead window, :mod:`handlers.amqp.priority`); ``basic.get`` still
  reads in publish order.
"""

from __future__ import annotations

import base64
import os
from dataclasses import dataclass, field

from pamqp import common

from handlers.amqp.errors import AMQPChannelError, ReplyCode

__all__ = ["SUBSCRIPTION_PREFIX", "Queue", "QueueArguments", "server_generated_name"]

SUBSCRIPTION_PREFIX = "amqp-queue:"

_INT_ARGUMENTS = ("x-message-ttl", "x-expires", "x-max-length", "x-max-priority")


def server_generated_name() -> str:
    """A queue name like RabbitMQ's: ``amq.gen-`` and 22 URL-safe base64 characters."""
    return "amq.gen-" + base64.urlsafe_b64encode(os.urandom(16)).rstrip(b"=").decode("ascii")


@dataclass(frozen=True, slots=True)
class QueueArguments:
    """The ``x-`` arguments of ``queue.declare`` the broker understands (validated)."""

    message_ttl_ms: int | None = None
    expires_ms: int | None = None
    max_length: int | None = None
    overflow: str = "drop-head"
    dead_letter_exchange: str | None = None
    dead_letter_routing_key: str | None = None
    single_active_consumer: bool = False
    max_priority: int | None = None

    @classmethod
    def parse(cls, arguments: common.FieldTable) -> QueueArguments:
        """Validate; a bad value is 406 PRECONDITION_FAILED as in RabbitMQ."""
        values: dict[str, int] = {}
        for name in _INT_ARGUMENTS:
            if name not in arguments:
                continue
            value = arguments[name]
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise AMQPChannelError(
                    ReplyCode.PRECONDITION_FAILED,
                    f"invalid arg '{name}' for queue: {value!r}", 50, 10,
                )
            values[name] = value
        if values.get("x-max-priority", 0) > 255:
            raise AMQPChannelError(
                ReplyCode.PRECONDITION_FAILED,
                f"invalid arg 'x-max-priority': {values['x-max-priority']} (max 255)", 50, 10
            )
        if values.get("x-expires") == 0:
            raise AMQPChannelError(
                ReplyCode.PRECONDITION_FAILED, "invalid arg 'x-expires': 0", 50, 10
            )
        overflow = _text(arguments.get("x-overflow")) or "drop-head"
        if overflow not in ("drop-head", "reject-publish", "reject-publish-dlx"):
            raise AMQPChannelError(
                ReplyCode.PRECONDITION_FAILED, f"invalid arg 'x-overflow': {overflow!r}", 50, 10
            )
        sac = arguments.get("x-single-active-consumer", False)
        return cls(
            message_ttl_ms=values.get("x-message-ttl"),
            expires_ms=values.get("x-expires"),
            max_length=values.get("x-max-length"),
            overflow=overflow,
            dead_letter_exchange=_text(arguments.get("x-dead-letter-exchange")),
            dead_letter_routing_key=_text(arguments.get("x-dead-letter-routing-key")),
            single_active_consumer=bool(sac),
            max_priority=values.get("x-max-priority"),
        )


def _text(value: common.FieldValue) -> str | None:
    if isinstance(value, bytes | bytearray):
        return bytes(value).decode("utf-8", "replace")
    return value if isinstance(value, str) else None


@dataclass(slots=True, eq=False)
class Queue:
    """A declared queue.  ``owner`` is the connection id of an exclusive queue's owner."""

    name: str
    durable: bool = False
    auto_delete: bool = False
    owner: int | None = None
    arguments: common.FieldTable = field(default_factory=dict)
    parsed: QueueArguments = field(default_factory=QueueArguments)
    #: consumers attached (any connection); objects owned by the sessions
    consumers: list[object] = field(default_factory=list)
    #: whether it ever had a consumer (auto-delete only applies after the first one)
    had_consumers: bool = False
    #: trio time of the last declare, get or consumer change (for ``x-expires``)
    last_used: float = 0.0

    @property
    def exclusive(self) -> bool:
        return self.owner is not None

    @property
    def subscription(self) -> str:
        """The name of the queue's core subscriptions."""
        return SUBSCRIPTION_PREFIX + self.name
