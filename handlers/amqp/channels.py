"""Per-channel state of an AMQP session: deliveries, confirm or tx mode, consumer tasks."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import trio

from core.subscriptions import Consumer
from handlers.amqp.broker.confirms import ConfirmTracker
from handlers.amqp.broker.consumers import ChannelDeliveries
from handlers.amqp.priority import PriorityBuffer

if TYPE_CHECKING:
    from handlers.amqp.tx import ChannelTx

__all__ = ["Channel"]


@dataclass(eq=False)
class Channel:
    """One open channel of a session.

    ``confirms`` is set by ``confirm.select``, ``tx`` by ``tx.select`` (never both).
    ``credit`` is replaced (after being set) whenever prefetch room may have opened up, so
    delivery tasks waiting for room wake up.
    """

    number: int
    deliveries: ChannelDeliveries = field(default_factory=ChannelDeliveries)
    confirms: ConfirmTracker | None = None
    tx: ChannelTx | None = None
    scopes: dict[str, trio.CancelScope] = field(default_factory=dict)
    nurseries: dict[str, trio.Nursery] = field(default_factory=dict)
    #: basic.get's core consumers per (queue, source), open until the channel closes
    getters: dict[tuple[str, str], Consumer] = field(default_factory=dict)
    #: what those consumers of priority queues hold, highest priority first
    get_buffers: dict[tuple[str, str], PriorityBuffer] = field(default_factory=dict)
    credit: trio.Event = field(default_factory=trio.Event)
    closed: bool = False
    tag_seq: int = 0

    def credit_changed(self) -> None:
        """Wake every task waiting for prefetch room on this channel."""
        self.credit.set()
        self.credit = trio.Event()
