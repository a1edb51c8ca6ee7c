"""The exchanges, queues and bindings of one virtual host, in memory, and routing over them.

Sans-IO: every method is synchronous and either changes the model or raises an
:class:`~handlers.amqp.errors.AMQPChannelError` with RabbitMQ's reply code and text.  The async
layer (:mod:`handlers.amqp.broker.vhosts`) persists changes and drives the core.

Routing (:meth:`Registry.route`) answers, for one published message, which *exchanges' topics*
get a copy and which *queues* will see it:

* the exchange published to always gets the message on its topic (so Kafka and MQTT clients read
  every message published to it), its queues pick it up through their binding filters;
* an exchange-to-exchange binding that matches routes on, recursively (each exchange at most
  once): the destination exchange's topic gets a **copy**, which its own queues filter;
* when no queue matched and the exchange has an ``alternate-exchange``, the message is routed
  through that one the same way (a copy on its topic);
* the default exchange (``""``) routes to the queue named by the routing key only: the copy goes
  to the queue's own topic (see :mod:`handlers.amqp.broker.queues`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import NoReturn

from pamqp import common

from handlers.amqp.broker.bindings import Binding, DestinationKind
from handlers.amqp.broker.exchanges import PREDECLARED, Exchange, ExchangeType, make_matcher
from handlers.amqp.broker.queues import Queue
from handlers.amqp.errors import AMQPChannelError, AMQPConnectionError, ReplyCode

__all__ = ["Registry", "Route"]

DEFAULT_EXCHANGE = ""


#: routes :meth:`Registry.route` keeps per (exchange, routing key) until the model changes
ROUTE_CACHE_SIZE = 1024


@dataclass(slots=True)
class Route:
    """Where one message goes: exchanges whose topics get it, and the queues that match.

    Routes returned by :meth:`Registry.route` may be shared by many messages: read-only.
    """

    exchanges: list[str] = field(default_factory=list)
    queues: set[str] = field(default_factory=set)
    #: the queue named by the routing key when published to the default exchange
    direct_queue: str | None = None

    @property
    def routed(self) -> bool:
        return bool(self.queues) or self.direct_queue is not None


def _inequivalent(
    what: str, name: str, vhost: str, arg: str, got: object, cur: object
) -> NoReturn:
    raise AMQPChannelError(
        ReplyCode.PRECONDITION_FAILED,
        f"inequivalent arg '{arg}' for {what} '{name}' in vhost '{vhost}': "
        f"received '{got}' but current is '{cur}'",
    )


class Registry:
    """Exchanges, queues and bindings of the virtual host ``vhost`` (see the module docstring)."""

    def __init__(self, vhost: str) -> None:
        self.vhost = vhost
        self.exchanges: dict[str, Exchange] = {
            DEFAULT_EXCHANGE: Exchange(DEFAULT_EXCHANGE, ExchangeType.DIRECT)
        }
        for name, type_ in PREDECLARED.items():
            self.exchanges[name] = Exchange(name, type_)
        self.queues: dict[str, Queue] = {}
        #: how many queues have ``x-max-length`` (publishes skip the length checks at 0)
        self.length_limited = 0
        self._routes: dict[tuple[str, str], Route] = {}
        self._by_source: dict[str, set[Binding]] = {}
        self._by_destination: dict[tuple[DestinationKind, str], set[Binding]] = {}

    # ------------------------------------------------------------ lookups

    def exchange(self, name: str, class_id: int = 0, method_id: int = 0) -> Exchange:
        """The exchange, or 404 NOT_FOUND."""
        found = self.exchanges.get(name)
        if found is None:
            raise AMQPChannelError(
                ReplyCode.NOT_FOUND, f"no exchange '{name}' in vhost '{self.vhost}'",
                class_id, method_id,
            )
        return found

    def queue(self, name: str, class_id: int = 0, method_id: int = 0) -> Queue:
        """The queue, or 404 NOT_FOUND."""
        found = self.queues.get(name)
        if found is None:
            raise AMQPChannelError(
                ReplyCode.NOT_FOUND, f"no queue '{name}' in vhost '{self.vhost}'",
                class_id, method_id,
            )
        return found

    def bindings_from(self, source: str) -> set[Binding]:
        return self._by_source.get(source, set())

    def bindings_to(self, kind: DestinationKind, name: str) -> set[Binding]:
        return self._by_destination.get((kind, name), set())

    def queue_bindings(self, queue: str, source: str) -> list[Binding]:
        """Bindings of ``queue`` from exchange ``source``."""
        return [b for b in self.bindings_to(DestinationKind.QUEUE, queue) if b.source == source]

    # ------------------------------------------------------------ exchanges

    def declare_exchange(
        self,
        name: str,
        type_name: str,
        *,
        durable: bool,
        auto_delete: bool,
        internal: bool,
        arguments: common.FieldTable,
        passive: bool,
    ) -> tuple[Exchange, bool]:
        """Declare (or check) an exchange; returns it and whether it is new."""
        found = self.exchanges.get(name)
        if passive:
            return self.exchange(name, 40, 10), False
        try:
            type_ = ExchangeType(type_name)
        except ValueError:
            if found is None:  # RabbitMQ: a connection error
                raise AMQPConnectionError(
                    ReplyCode.COMMAND_INVALID, f"invalid exchange type '{type_name}'", 40, 10
                ) from None
            _inequivalent("exchange", name, self.vhost, "type", type_name, found.type.value)
        if found is not None:
            for arg, got, cur in (
                ("type", type_.value, found.type.value),
                ("durable", durable, found.durable),
                ("auto_delete", auto_delete, found.auto_delete),
                ("internal", internal, found.internal),
            ):
                if got != cur:
                    _inequivalent("exchange", name, self.vhost, arg, got, cur)
            return found, False
        exchange = Exchange(name, type_, durable, auto_delete, internal, dict(arguments))
        self.exchanges[name] = exchange
        self._routes.clear()
        return exchange, True

    def delete_exchange(self, name: str, if_unused: bool) -> list[Binding]:
        """Delete an exchange and every binding from or to it; returns those bindings.

        Deleting an exchange that does not exist succeeds (RabbitMQ 3.x behaviour).
        """
        if name not in self.exchanges:
            return []
        if if_unused and self.bindings_from(name):
            raise AMQPChannelError(
                ReplyCode.PRECONDITION_FAILED,
                f"exchange '{name}' in vhost '{self.vhost}' in use", 40, 20,
            )
        removed = list(self.bindings_from(name)) + list(
            self.bindings_to(DestinationKind.EXCHANGE, name)
        )
        for b in removed:
            self._remove_binding(b)
        del self.exchanges[name]
        self._routes.clear()
        return removed

    # ------------------------------------------------------------ queues

    def add_queue(self, queue: Queue) -> None:
        old = self.queues.get(queue.name)
        if old is not None and old.parsed.max_length is not None:
            self.length_limited -= 1
        self.queues[queue.name] = queue
        if queue.parsed.max_length is not None:
            self.length_limited += 1
        self._routes.clear()

    def remove_queue(self, name: str) -> list[Binding]:
        """Forget a queue and its bindings; returns the bindings."""
        removed = list(self.bindings_to(DestinationKind.QUEUE, name))
        for b in removed:
            self._remove_binding(b)
        old = self.queues.pop(name, None)
        if old is not None and old.parsed.max_length is not None:
            self.length_limited -= 1
        self._routes.clear()
        return removed

    # ------------------------------------------------------------ bindings

    def add_binding(self, binding: Binding) -> bool:
        """Add a binding (source and destination must exist); False when already there."""
        if binding in self.bindings_from(binding.source):
            return False
        self._by_source.setdefault(binding.source, set()).add(binding)
        self._routes.clear()
        self._by_destination.setdefault((binding.kind, binding.destination), set()).add(binding)
        return True

    def _remove_binding(self, binding: Binding) -> bool:
        found = self._by_source.get(binding.source)
        if found is None or binding not in found:
            return False
        found.discard(binding)
        self._routes.clear()
        if not found:
            del self._by_source[binding.source]
        key = (binding.kind, binding.destination)
        dest = self._by_destination.get(key)
        if dest is not None:
            dest.discard(binding)
            if not dest:
                del self._by_destination[key]
        return True

    def remove_binding(self, binding: Binding) -> bool:
        """Remove a binding; False when it did not exist."""
        return self._remove_binding(binding)

    # ------------------------------------------------------------ routing

    def forget_routes(self) -> None:
        """Drop cached routes (call after changing :attr:`exchanges` or :attr:`queues` directly)."""
        self._routes.clear()

    def route(
        self, exchange: str, routing_key: str, headers: Sequence[tuple[str, bytes]]
    ) -> Route:
        """Route one message published to ``exchange`` (which must exist).

        Routes that do not depend on headers (no headers exchange on the way) are cached per
        (exchange, routing key) until an exchange, queue or binding changes.
        """
        cache_key = (exchange, routing_key)
        found = self._routes.get(cache_key)
        if found is not None:
            return found
        route = Route()
        if exchange == DEFAULT_EXCHANGE:
            if routing_key in self.queues:
                route.direct_queue = routing_key
        elif not self._route_into(exchange, routing_key, headers, route, set()):
            return route
        if len(self._routes) >= ROUTE_CACHE_SIZE:
            self._routes.clear()
        self._routes[cache_key] = route
        return route

    def _route_into(
        self,
        name: str,
        routing_key: str,
        headers: Sequence[tuple[str, bytes]],
        route: Route,
        seen: set[str],
    ) -> bool:
        """Add ``name``'s part of the route; False if headers decided any of it."""
        if name in seen:
            return True
        exchange = self.exchanges.get(name)
        if exchange is None or name == DEFAULT_EXCHANGE:
            return True
        cacheable = exchange.type is not ExchangeType.HEADERS
        seen.add(name)
        route.exchanges.append(name)
        before = len(route.queues)
        for b in self.bindings_from(name):
            if not make_matcher(exchange.type, b.routing_key, b.arguments)(routing_key, headers):
                continue
            if b.kind is DestinationKind.QUEUE:
                if b.destination in self.queues:
                    route.queues.add(b.destination)
            elif not self._route_into(b.destination, routing_key, headers, route, seen):
                cacheable = False
        alternate = exchange.alternate_exchange
        if (len(route.queues) == before and alternate is not None
                and not self._route_into(alternate, routing_key, headers, route, seen)):
            cacheable = False
        return cacheable
