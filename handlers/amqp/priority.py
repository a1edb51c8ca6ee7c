"""Priority queues (``x-max-priority``): the consumer-side reordering buffer (sans-IO).

How it works
------------
A priority queue is still one core subscription per source exchange; priorities are applied by
the AMQP consumer.  Its core consumer is granted a **lookahead** of :data:`PRIORITY_LOOKAHEAD`
permits beyond the client's prefetch, so the core hands over up to that many ready messages at
once.  The delivery pump moves them into a :class:`PriorityBuffer` and, whenever the client has
prefetch credit, delivers the highest priority first (publish order among equal priorities).

RabbitMQ's rules for a message's priority: no ``priority`` property is 0, and a priority above
the queue's ``x-max-priority`` is treated as that maximum.

Limits (documented for users): the ordering holds among the messages the consumer holds at once —
the lookahead window (plus the prefetch) of the oldest ready messages of one source exchange,
not the whole backlog; ``basic.get`` likewise hands out the highest priority among a window of
:data:`~handlers.amqp.delivery.GET_PRIORITY_WINDOW` messages per source exchange, which its
channel holds between gets; messages held in a buffer when the consumer stops (or the
channel closes) go back to the queue flagged as redelivered.
"""

from __future__ import annotations

import heapq
from itertools import count

from core import headers as h
from core.subscriptions import Delivery

__all__ = ["PRIORITY_LOOKAHEAD", "PriorityBuffer", "message_priority"]

#: permits a priority queue's consumer asks the core for beyond the client's prefetch
PRIORITY_LOOKAHEAD = 256


def message_priority(delivery: Delivery, max_priority: int) -> int:
    """The message's AMQP priority, 0 when absent or unreadable, capped at ``max_priority``."""
    for name, value in delivery.message.headers:
        if name == h.AMQP_PRIORITY:
            try:
                return max(0, min(int(value), max_priority))
            except ValueError:
                return 0
    return 0


class PriorityBuffer:
    """Deliveries ordered by priority (highest first), then by arrival."""

    def __init__(self, max_priority: int) -> None:
        self.max_priority = max_priority
        self._heap: list[tuple[int, int, Delivery]] = []
        self._seq = count()

    def __len__(self) -> int:
        return len(self._heap)

    def push(self, delivery: Delivery) -> None:
        """Hold ``delivery`` until :meth:`pop` returns it."""
        priority = message_priority(delivery, self.max_priority)
        heapq.heappush(self._heap, (-priority, next(self._seq), delivery))

    def top_priority(self) -> int:
        """The priority :meth:`pop` would return next (IndexError when empty)."""
        return -self._heap[0][0]

    def pop(self) -> Delivery:
        """The held delivery with the highest priority (IndexError when empty)."""
        return heapq.heappop(self._heap)[2]

    def drain(self) -> list[Delivery]:
        """Every held delivery, in delivery order; the buffer is left empty."""
        out = [entry[2] for entry in sorted(self._heap)]
        self._heap.clear()
        return out
