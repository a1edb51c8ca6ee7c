"""RabbitMQ's ``x-death`` header on dead letters (sans-IO).

:func:`dead_letter` turns a message leaving a queue (``rejected``, ``expired``, ``maxlen``) into
the message its dead-letter exchange receives, as RabbitMQ does:

* the ``x-death`` header is an array of tables, most recent first, one per (queue, reason):
  ``count``, ``reason``, ``queue``, ``time`` (a timestamp), ``exchange`` (where the message was
  published) and ``routing-keys``; dead-lettering again from the same queue for the same reason
  increments ``count`` and moves that entry to the front;
* ``x-first-death-reason``/``-queue``/``-exchange`` are set the first time only;
* a per-message ``expiration`` is removed (kept as the entry's ``original-expiration``) so the
  dead letter does not expire again at once;
* the routing key becomes ``x-dead-letter-routing-key`` when the queue sets one.

Two paths lead here.  A message rejected (``basic.reject``/``basic.nack`` without requeue) is
dead-lettered by the session: :func:`dead_letter` and then routed through the dead-letter
exchange like a publish (its type and bindings apply).  Messages that expire (``x-message-ttl``,
a per-message ``expiration``) or are dropped from the head of a full queue (``x-max-length``,
reason ``maxlen``) are dead-lettered by the core: each queue subscription's redelivery policy
carries :func:`rewriter`, so the core appends the same ``x-death`` message (instead of its
``ps.dlq.*`` headers) to the dead-letter exchange's topic.
"""

from __future__ import annotations

import datetime
from collections.abc import Callable
from typing import Any

from core.records import Message
from core.subscriptions.redelivery import DeadLetterReason, DeadLetterRewrite
from handlers.amqp.mapping import message_to_amqp, properties_to_message

__all__ = ["dead_letter", "rewriter"]


def dead_letter(message: Message, *, queue: str, reason: str, exchange: str, now_ms: int,
                routing_key: str | None = None) -> Message:
    """``message`` as dead-lettered from ``queue`` for ``reason`` (see the module docstring)."""
    out = message_to_amqp(message)
    props = out.properties
    headers: dict[str, Any] = dict(props.headers or {})
    deaths = [d for d in headers.get("x-death") or [] if isinstance(d, dict)]
    entry: dict[str, Any] | None = None
    for death in deaths:
        if death.get("queue") == queue and death.get("reason") == reason:
            entry = death
            break
    if entry is not None:
        deaths.remove(entry)
        entry = dict(entry)
        count = entry.get("count")
        entry["count"] = (count if isinstance(count, int) else 0) + 1
    else:
        entry = {
            "count": 1, "reason": reason, "queue": queue, "exchange": exchange,
            "routing-keys": [out.routing_key],
            "time": datetime.datetime.fromtimestamp(now_ms // 1000, datetime.UTC),
        }
        if props.expiration:
            entry["original-expiration"] = props.expiration
    props.expiration = None
    headers["x-death"] = [entry, *deaths]
    if "x-first-death-reason" not in headers:
        headers["x-first-death-reason"] = reason
        headers["x-first-death-queue"] = queue
        headers["x-first-death-exchange"] = exchange
    props.headers = headers
    key = routing_key if routing_key is not None else out.routing_key
    return properties_to_message(key, props, bytes(out.body), message.timestamp_ms)


def rewriter(*, queue: str, exchange: str, routing_key: str | None,
             clock_ms: Callable[[], int]) -> DeadLetterRewrite:
    """The core's dead-letter hook for ``queue``'s subscription on ``exchange`` (the exchange
    its messages were published to; ``""``: the default exchange): :func:`dead_letter` with
    the core's reason, the time from ``clock_ms`` and the queue's
    ``x-dead-letter-routing-key``."""

    def rewrite(message: Message, reason: DeadLetterReason) -> Message:
        return dead_letter(message, queue=queue, reason=reason.value, exchange=exchange,
                           now_ms=clock_ms(), routing_key=routing_key)

    return rewrite
