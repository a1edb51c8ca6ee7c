"""AMQP transactions (``tx.select/commit/rollback``) on the core's transaction engine.

How it works
------------
After ``tx.select`` a channel holds a :class:`ChannelTx`.  The first publish or ack opens a
core transaction (``core.transactions.begin()``, an anonymous producer).  Publishes are routed
at once and appended *transactionally* (``add_partitions`` + ``append_messages`` per core
topic), so they are stored but invisible to READ_COMMITTED readers — every AMQP queue reads
that way — until the commit marker is written.  ``basic.ack`` becomes ``ack_in_txn``: the
message stays unacked at its subscription until commit, and is redelivered after a rollback.
``basic.nack``/``basic.reject`` are held here and applied at commit (given back to the
client's unacked set at rollback, as RabbitMQ does).

``tx.commit`` is ``end(txn, commit=True)``: its commit point is the coordinator's log
record, so a commit-ok the client saw survives a crash, and a transaction that was never
committed is aborted after restart (its messages are never delivered).  ``tx.rollback`` and a
channel closed with an open transaction are ``end(txn, commit=False)``.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field

import trio
from pamqp import commands

from core.names import TopicName
from core.records import Message
from core.transactions import TransactionError, TxnId
from core.transactions.coordinator import TransactionCoordinator
from handlers.amqp.broker.confirms import ConfirmTracker
from handlers.amqp.broker.consumers import Unacked
from handlers.amqp.broker.registry import Route
from handlers.amqp.broker.vhosts import VirtualHost
from handlers.amqp.channels import Channel
from handlers.amqp.delivery import DeliveryMixin
from handlers.amqp.errors import AMQPChannelError, ReplyCode
from handlers.amqp.events import Publish

__all__ = ["ChannelTx", "TxMixin", "TxOutcome"]

log = logging.getLogger(__name__)

#: most publishes a transaction may leave to return (mandatory, unroutable) at commit
MAX_RETURNS = 10_000


@dataclass
class TxOutcome:
    """What a finished transaction leaves for the session to do."""

    committed: bool
    #: messages acked inside the transaction (committed or released by the core)
    acked: list[Unacked] = field(default_factory=list)
    #: nacks/rejects held until the end: ``(message, "requeue" | "drop")``
    held: list[tuple[Unacked, str]] = field(default_factory=list)
    #: routes of the published messages (for queue length limits)
    routes: list[Route] = field(default_factory=list)
    #: mandatory publishes that reached no queue (``basic.return`` at commit)
    returns: list[Publish] = field(default_factory=list)


class ChannelTx:
    """One transactional channel's current transaction (opened lazily on first use)."""

    def __init__(self, coordinator: TransactionCoordinator) -> None:
        self.coordinator = coordinator
        self.txn: TxnId | None = None
        self._topics: set[TopicName] = set()
        self._work = TxOutcome(committed=False)

    async def _open(self) -> TxnId:
        if self.txn is None:
            self.txn = await self.coordinator.begin()
        return self.txn

    async def publish(self, vhost: VirtualHost,
                      routed: Sequence[tuple[Publish, Message, Route]]) -> None:
        """Append ``routed`` transactionally (invisible until commit)."""
        per_topic = await vhost.per_topic([(message, route) for _, message, route in routed])
        txn = await self._open()
        new = [topic for topic in per_topic if topic not in self._topics]
        if new:
            await self.coordinator.add_partitions(txn, [(topic, 0) for topic in new])
            self._topics.update(new)
        for topic, messages in per_topic.items():
            await self.coordinator.append_messages(txn, topic, 0, messages)
        for publish, _, route in routed:
            self._work.routes.append(route)
            if publish.method.mandatory and not route.routed:
                if len(self._work.returns) >= MAX_RETURNS:
                    raise AMQPChannelError(ReplyCode.PRECONDITION_FAILED,
                                           "too many unroutable publishes in transaction",
                                           60, 40)
                self._work.returns.append(publish)

    async def ack(self, items: Sequence[Unacked]) -> None:
        """Acknowledge ``items`` inside the transaction (effective at commit)."""
        txn = await self._open()
        for item in items:
            self.coordinator.ack_in_txn(txn, item.core.topic, item.core.subscription,
                                        item.partition, item.offset)
            self._work.acked.append(item)

    def hold(self, items: Sequence[Unacked], how: str) -> None:
        """Keep a nack/reject until the transaction ends."""
        self._work.held.extend((item, how) for item in items)

    async def end(self, commit: bool) -> TxOutcome:
        """Commit or roll back; the channel's next transaction starts fresh.

        Runs shielded: once the client asked, a cancelled session does not leave it half done.
        """
        txn, work = self.txn, self._work
        self.txn, self._topics, self._work = None, set(), TxOutcome(committed=False)
        work.committed = commit
        if txn is not None:
            with trio.CancelScope(shield=True):
                await self.coordinator.end(txn, commit)
        return work


class TxMixin(DeliveryMixin):
    """``confirm.select`` and ``tx.select/commit/rollback`` of :class:`AmqpSession`."""

    async def _confirm_select(self, chan: Channel, m: commands.Confirm.Select) -> None:
        if chan.tx is not None:
            raise AMQPChannelError(ReplyCode.PRECONDITION_FAILED,
                                   "cannot switch from tx to confirm mode", 85, 10)
        if chan.confirms is None:
            chan.confirms = ConfirmTracker()
        self._reply(chan, commands.Confirm.SelectOk(), m.nowait)

    async def _tx_select(self, chan: Channel, m: commands.Tx.Select) -> None:
        if chan.confirms is not None:
            raise AMQPChannelError(ReplyCode.PRECONDITION_FAILED,
                                   "cannot switch from confirm to tx mode", 90, 10)
        if chan.tx is None:
            chan.tx = ChannelTx(self.vhost.core.transactions)
        self._reply(chan, commands.Tx.SelectOk())

    def _transactional(self, chan: Channel, method_id: int) -> ChannelTx:
        if chan.tx is None:
            raise AMQPChannelError(ReplyCode.PRECONDITION_FAILED,
                                   "channel is not transactional", 90, method_id)
        return chan.tx

    async def _tx_commit(self, chan: Channel, m: commands.Tx.Commit) -> None:
        tx = self._transactional(chan, 20)
        try:
            outcome = await tx.end(commit=True)
        except TransactionError as exc:
            raise AMQPChannelError(ReplyCode.PRECONDITION_FAILED,
                                   f"transaction failed: {exc}", 90, 20) from exc
        await self.vhost.trim(outcome.routes)
        for publish in outcome.returns:
            self.conn.send_unroutable(chan.number, publish)
        for item, how in outcome.held:
            self._settle(chan, [item], how)
        self._release_owners(outcome.acked)
        chan.credit_changed()
        self._reply(chan, commands.Tx.CommitOk())

    async def _tx_rollback(self, chan: Channel, m: commands.Tx.Rollback) -> None:
        tx = self._transactional(chan, 30)
        try:
            outcome = await tx.end(commit=False)
        except TransactionError as exc:
            raise AMQPChannelError(ReplyCode.PRECONDITION_FAILED,
                                   f"rollback failed: {exc}", 90, 30) from exc
        self._after_rollback(chan, outcome)
        self._reply(chan, commands.Tx.RollbackOk())

    def _after_rollback(self, chan: Channel, outcome: TxOutcome) -> None:
        # Rolled-back nacks/rejects leave their messages unacked (as in RabbitMQ); rolled-back
        # acks were released by the core, which redelivers them.
        if not chan.closed:
            for item, _ in outcome.held:
                chan.deliveries.restore(item)
        else:
            self._settle(chan, [item for item, _ in outcome.held], "requeue")
        self._release_owners(outcome.acked)
        chan.credit_changed()

    async def _abort_tx(self, chan: Channel) -> None:
        """The channel closes: roll back its open transaction (shielded)."""
        if chan.tx is None:
            return
        tx, chan.tx = chan.tx, None
        try:
            outcome = await tx.end(commit=False)
        except TransactionError as exc:
            log.warning("amqp %s: channel %d: abort failed: %s", self.peer, chan.number, exc)
            return
        self._after_rollback(chan, outcome)
