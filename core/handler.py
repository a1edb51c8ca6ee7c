"""The protocol handler plugin surface.

A handler translates one wire protocol onto the core.  Its lifecycle, driven by
the broker:

1. The broker finds the handler class through the ``polystream.handlers``
   entry-point group and instantiates it with no arguments.
2. ``await handler.start(context)`` once, before any listener accepts: the
   handler receives the narrow core API, its settings and a nursery for any
   background tasks (timers, coordinators) it owns.
3. ``await handler.serve(stream, conn)`` for every accepted connection, each in
   its own task.  The handler owns the stream for the call's duration; the
   broker closes it afterwards.  Raising from ``serve`` closes only that
   connection (the broker logs it).
4. ``await handler.close()`` at shutdown, after listeners stop accepting and
   connections have finished or been cancelled.

The broker owns listening sockets, TLS, connection limits and metrics.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

import trio

if TYPE_CHECKING:
    from core.api import Core


@dataclass(frozen=True, slots=True)
class ConnectionInfo:
    """Who connected, and on which listener."""

    listener: str
    peer_host: str
    peer_port: int
    local_host: str
    local_port: int

    @property
    def peer_is_loopback(self) -> bool:
        return self.peer_host in ("::1", "localhost") or self.peer_host.startswith("127.") or (
            self.peer_host.startswith("::ffff:127.")
        )


@dataclass(frozen=True, slots=True)
class ListenerAddress:
    """Where a listener of this handler is bound (as actually bound: port 0 is resolved)."""

    name: str
    host: str
    port: int


@dataclass(slots=True)
class HandlerContext:
    """What a handler receives at start-up."""

    core: Core
    settings: dict[str, Any]
    nursery: trio.Nursery
    listeners: list[ListenerAddress] = field(default_factory=list)
    #: set when shutdown begins: listeners stop accepting, and open connections have
    #: ``shutdown_grace_s`` to finish.  Sessions watch it to say goodbye in their protocol
    #: (MQTT DISCONNECT 0x8B, AMQP connection.close 320, ...) instead of idling out the grace.
    stopping: trio.Event = field(default_factory=trio.Event)


class ProtocolHandler(ABC):
    """One wire protocol.  Subclasses set ``name`` and ``default_port``."""

    name: ClassVar[str]
    default_port: ClassVar[int]

    @abstractmethod
    async def start(self, context: HandlerContext) -> None:
        """Prepare to serve connections; called once before listeners accept."""

    @abstractmethod
    async def serve(self, stream: trio.abc.Stream, conn: ConnectionInfo) -> None:
        """Serve one connected client until it disconnects or is cancelled."""

    async def close(self) -> None:  # noqa: B027 - optional hook
        """Release resources at shutdown (after every connection has ended)."""
