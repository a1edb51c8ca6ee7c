"""Transactional acks and offset commits: held until commit, released at abort.

An ack inside a transaction (:meth:`TransactionCoordinator.ack_in_txn`) changes
nothing at once: the message stays delivered-and-unacknowledged at its
subscription, and :class:`PendingAcks` records which transaction holds it, so a
second transaction cannot ack it too (:class:`~core.transactions.errors.AckConflict`).
At commit every held ack is applied to the subscription's cursor
(:meth:`PartitionSubscription.commit_txn_ack`); at abort every held message is
given back for immediate redelivery (:meth:`PartitionSubscription.release_txn_ack`).

Offset commits inside a transaction (Kafka's TxnOffsetCommit) are held the same
way and applied at commit by an *offset committer*: by default
:func:`commit_offsets_to_cursors` (a live subscription is seeked, otherwise
the stored cursor is rewritten); the Kafka handler may install its own so that
its group-offset cache stays in step.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Iterable
from typing import TYPE_CHECKING

from core.cursor import Cursor
from core.cursor_store import CursorStore
from core.transactions.errors import AckConflict
from core.transactions.state import AckRef, OffsetRef, TxnId

if TYPE_CHECKING:
    from core.api import Core
    from core.subscriptions.subscription import PartitionSubscription

__all__ = [
    "OffsetCommitter",
    "PendingAcks",
    "apply_acks",
    "commit_offsets_to_cursors",
    "partition_subscription",
]

log = logging.getLogger(__name__)

#: applies committed transactional offsets: ``{OffsetRef: offset}``
OffsetCommitter = Callable[["Core", dict[OffsetRef, int]], Awaitable[None]]


class PendingAcks:
    """Which transaction holds the ack of which message (sans-IO)."""

    def __init__(self) -> None:
        self._owner: dict[AckRef, TxnId] = {}

    def __len__(self) -> int:
        return len(self._owner)

    def owner(self, ack: AckRef) -> TxnId | None:
        return self._owner.get(ack)

    def claim(self, ack: AckRef, txn: TxnId) -> None:
        """Record that ``txn`` holds ``ack``; :class:`AckConflict` if another one does."""
        owner = self._owner.get(ack)
        if owner is not None and owner != txn:
            raise AckConflict(f"{ack} is held by transaction {owner}")
        self._owner[ack] = txn

    def release(self, acks: Iterable[AckRef], txn: TxnId) -> None:
        """Forget the acks ``txn`` held."""
        for ack in acks:
            if self._owner.get(ack) == txn:
                del self._owner[ack]


def partition_subscription(
    core: Core, topic: str, subscription: str, partition: int
) -> PartitionSubscription | None:
    """The live (or restored) subscription on one partition, or None."""
    group = core.subscriptions.get(topic, subscription)
    return None if group is None else group.partitions.get(partition)


def apply_acks(core: Core, acks: Iterable[AckRef], commit: bool) -> None:
    """Commit: acknowledge every message; abort: redeliver every one still pending."""
    for ack in acks:
        sub = partition_subscription(core, ack.topic, ack.subscription, ack.partition)
        if sub is None:
            log.info("transactional ack of %s dropped: the subscription is gone", ack)
            continue
        if commit:
            sub.commit_txn_ack(ack.offset)
        else:
            sub.release_txn_ack(ack.offset)


async def commit_offsets_to_cursors(core: Core, offsets: dict[OffsetRef, int]) -> None:
    """The default offset committer: move each subscription's cursor to the offset."""
    store: CursorStore = core.subscriptions.store
    for ref, offset in offsets.items():
        name = core.parse_topic(ref.topic).base
        sub = partition_subscription(core, str(name), ref.subscription, ref.partition)
        if sub is not None:
            await sub.reset(offset)
            continue
        log_name = name.log_name(ref.partition)
        cursor = await store.load(log_name, ref.subscription) or Cursor(offset)
        cursor.reset(offset)
        store.save(log_name, ref.subscription, cursor)
    await store.flush()
