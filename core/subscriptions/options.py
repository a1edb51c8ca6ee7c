"""The options the first consumer of an idle subscription chooses (filter, redelivery, expiry)."""

from __future__ import annotations

from dataclasses import dataclass, field

from core.headers import is_expired
from core.records import Message
from core.subscriptions.filters import MessageFilter
from core.subscriptions.redelivery import RedeliveryPolicy
from core.transactions.visibility import IsolationLevel

__all__ = ["SubscriptionOptions"]


@dataclass(frozen=True, slots=True)
class SubscriptionOptions:
    """What the first consumer of an idle subscription chooses for everyone.

    ``filter``: deliver only matching messages (the others are acknowledged).
    ``message_ttl_ms``: messages published longer ago than this (broker publish
    time) are acknowledged instead of delivered (None: never).
    ``honour_expiry``: the same for messages whose ``ps.expiry-ms`` header has
    run out (:func:`core.headers.is_expired`).  ``dead_letter_expired``: expired
    messages are dead-lettered rather than dropped (when the redelivery policy
    has dead letters on).  ``isolation``: READ_COMMITTED (the default) delivers
    committed transactional data only, holding back at the last stable offset;
    READ_UNCOMMITTED delivers open and aborted transactions' data too.

    How dead letters look is the redelivery policy's
    (:attr:`RedeliveryPolicy.dead_letter_rewrite`, e.g. AMQP's ``x-death``).
    """

    filter: MessageFilter | None = None
    redelivery: RedeliveryPolicy = field(default_factory=RedeliveryPolicy)
    message_ttl_ms: int | None = None
    honour_expiry: bool = True
    dead_letter_expired: bool = False
    isolation: IsolationLevel = IsolationLevel.READ_COMMITTED

    @property
    def expired_to_dead_letters(self) -> bool:
        """Whether expired messages go to the dead letter topic."""
        return self.dead_letter_expired and self.redelivery.dead_letters

    def expired(self, message: Message, publish_time_ms: int, now_ms: int) -> bool:
        """Whether ``message`` (published at ``publish_time_ms``) has expired at ``now_ms``
        under ``message_ttl_ms`` and ``honour_expiry``."""
        ttl = self.message_ttl_ms
        if ttl is not None and publish_time_ms + ttl <= now_ms:
            return True
        return self.honour_expiry and bool(message.headers) and is_expired(
            message.headers, message.timestamp_ms, now_ms)
