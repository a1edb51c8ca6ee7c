"""What a partition subscription holds per message: read ahead, or delivered and pending."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from core.records import Message

if TYPE_CHECKING:
    from core.subscriptions.consumer import Consumer

__all__ = ["Buffered", "Pending"]


@dataclass(slots=True)
class Buffered:
    """A message read from the log and not delivered (read-ahead, due, dead letters)."""

    offset: int
    message: Message
    publish_time_ms: int


@dataclass(slots=True)
class Pending:
    """A message delivered to ``consumer`` and not acknowledged (``deadline``: ack timeout)."""

    consumer: Consumer
    message: Message
    publish_time_ms: int
    deadline: float | None
