"""The publish path of an AMQP session: routing, appends and publisher confirms (a mixin).

The reader collects the ``basic.publish`` events of one read (see :mod:`handlers.amqp.session`)
and hands them to :meth:`PublishMixin._store_publishes`: routes come from the registry's cache,
the ``x-max-length`` checks run only while some queue of the vhost has a limit, the messages
are appended with one batch per core topic (sharing the storage's group commit), and once they
are durable the ``basic.return`` frames of unroutable mandatory messages and the confirms of
the batch go out, one ``multiple`` ack per channel and run
(:class:`~handlers.amqp.broker.confirms.ConfirmTracker`).  A transactional channel's publishes
are routed with the others but appended inside its transaction.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from pamqp import base, commands

from core.api import wall_clock_ms
from core.errors import CoreError
from core.records import Message
from core.subscriptions import SubscriptionError
from core.transactions import TransactionError
from handlers.amqp.broker.registry import Registry, Route
from handlers.amqp.channels import Channel
from handlers.amqp.connection import ServerConnection
from handlers.amqp.errors import AMQPChannelError, ReplyCode
from handlers.amqp.events import Publish
from handlers.amqp.mapping import publish_to_message

if TYPE_CHECKING:
    from handlers.amqp.broker.vhosts import VirtualHost

__all__ = ["PublishMixin"]

log = logging.getLogger(__name__)

#: (channel, publish, message, route, confirm sequence number or None)
_Accepted = tuple[Channel, Publish, Message, Route, int | None]


class PublishMixin:
    """``basic.publish`` handling of :class:`~handlers.amqp.session.AmqpSession`."""

    conn: ServerConnection
    peer: str
    _channels: dict[int, Channel]
    _publishes: list[Publish]

    if TYPE_CHECKING:
        @property
        def vhost(self) -> VirtualHost: ...

        async def _drop_channel(self, chan: Channel) -> None: ...

    async def _store_publishes(self) -> None:
        """Route the collected publishes and store them (see the module docstring)."""
        batch, self._publishes = self._publishes, []
        vhost = self.vhost
        registry = vhost.registry
        # x-max-length checks cost an await per message: only when some queue has a limit
        limited = registry.length_limited > 0
        accepted: list[_Accepted] = []
        refused: list[tuple[Channel, int | None]] = []
        pending: dict[str, int] = {}
        failed: set[int] = set()
        transactional: dict[Channel, list[tuple[Publish, Message, Route]]] = {}
        now = wall_clock_ms()
        for publish in batch:
            chan = self._channels.get(publish.channel)
            if chan is None or chan.closed or publish.channel in failed:
                continue
            try:
                message, route = self._route(publish, now, registry)
            except AMQPChannelError as exc:
                failed.add(publish.channel)
                self.conn.close_channel(publish.channel, exc.reply_code, exc.reply_text,
                                        exc.class_id, exc.method_id)
                await self._drop_channel(chan)
                continue
            if chan.tx is not None:
                transactional.setdefault(chan, []).append((publish, message, route))
                continue
            seq = chan.confirms.publish() if chan.confirms is not None else None
            if limited and await vhost.refuses(route, pending):
                refused.append((chan, seq))  # x-overflow=reject-publish: nacked, not stored
                continue
            accepted.append((chan, publish, message, route, seq))
        for chan, routed in transactional.items():
            await self._store_in_tx(chan, routed)
        ok = True
        if accepted:
            try:
                await vhost.store([(msg, route) for _, _, msg, route, _ in accepted])
                if limited:
                    await vhost.trim([route for _, _, _, route, _ in accepted])
            except (CoreError, SubscriptionError) as exc:
                ok = False
                log.warning("amqp %s: storing %d published message(s) failed: %s", self.peer,
                            len(accepted), exc)
        self._publishes_settled(accepted, refused, ok)

    def _publishes_settled(self, accepted: list[_Accepted],
                           refused: list[tuple[Channel, int | None]], ok: bool) -> None:
        """Queue the returns of unroutable mandatory publishes and the confirms (nacks when
        not ``ok``, and for ``refused``) of stored publishes."""
        settle: dict[int, tuple[list[int], list[int]]] = {}
        for chan, publish, _, route, seq in accepted:
            if ok and publish.method.mandatory and not route.routed:
                self.conn.send_unroutable(chan.number, publish)
            if seq is not None:
                settle.setdefault(chan.number, ([], []))[0 if ok else 1].append(seq)
        for chan, seq in refused:
            if seq is not None:
                settle.setdefault(chan.number, ([], []))[1].append(seq)
        for number, (acks, nacks) in settle.items():
            channel = self._channels.get(number)
            if channel is None or channel.closed or channel.confirms is None:
                continue  # closed meanwhile: its confirms are moot
            confirms = channel.confirms
            for confirm in confirms.settle(acks, True) + confirms.settle(nacks, False):
                method: base.Frame
                if confirm.ack:
                    method = commands.Basic.Ack(delivery_tag=confirm.delivery_tag,
                                                multiple=confirm.multiple)
                else:
                    method = commands.Basic.Nack(delivery_tag=confirm.delivery_tag,
                                                 multiple=confirm.multiple, requeue=False)
                self.conn.send_method(number, method)

    async def _store_in_tx(self, chan: Channel,
                           routed: list[tuple[Publish, Message, Route]]) -> None:
        """Append a transactional channel's publishes inside its transaction."""
        if chan.tx is None or chan.closed:
            return
        try:
            await chan.tx.publish(self.vhost, routed)
        except (TransactionError, AMQPChannelError) as exc:
            log.info("amqp %s: channel %d: transactional publish failed: %s", self.peer,
                     chan.number, exc)
            code, text = ReplyCode.PRECONDITION_FAILED, f"transactional publish failed: {exc}"
            if isinstance(exc, AMQPChannelError):
                code, text = exc.reply_code, exc.reply_text
            self.conn.close_channel(chan.number, code, text, 60, 40)
            await self._drop_channel(chan)

    def _route(self, publish: Publish, now_ms: int, registry: Registry) -> tuple[Message, Route]:
        method = publish.method
        exchange = registry.exchange(method.exchange, 60, 40)
        if exchange.internal:
            raise AMQPChannelError(
                ReplyCode.ACCESS_REFUSED,
                f"cannot publish to internal exchange '{exchange.name}' in vhost "
                f"'{self.vhost.name}'", 60, 40)
        message = publish_to_message(publish, now_ms)
        # the routing key as published (what the message key decodes back to)
        return message, registry.route(exchange.name, method.routing_key, message.headers)
