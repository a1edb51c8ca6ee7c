"""What a partition subscription holds per message: read ahead, or delivered and pending."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, NamedTuple

from core.records import Message

if TYPE_CHECKING:
    from core.subscriptions.consumer import Consumer

__all__ = ["Buffered", "Pending", "new_pending"]


@dataclass(slots=True)
class Buffered:
    """A message read from the log and not delivered (read-ahead, due, dead letters)."""

    offset: int
    message: Message
    publish_time_ms: int


class Pending(NamedTuple):
    """A message delivered to ``consumer`` and not acknowledged (``deadline``: ack timeout).

    A named tuple: one is built per delivered message (:func:`new_pending`).
    """

    consumer: Consumer
    message: Message
    publish_time_ms: int
    deadline: float | None


_new_tuple: Callable[[type[Pending], tuple[Consumer, Message, int, float | None]], Pending] = (
    tuple.__new__
)


def new_pending(
    consumer: Consumer, message: Message, publish_time_ms: int, deadline: float | None
) -> Pending:
    """``Pending(...)`` for the dispatch hot path (the tuple built directly)."""
    return _new_tuple(Pending, (consumer, message, publish_time_ms, deadline))
