"""Listening sockets and the connections accepted on them.

The broker, not the handlers, owns listeners.  Start-up happens in two steps so
that port 0 resolves before any handler starts:

1. :func:`bind_listener` binds every socket of one :class:`ListenerConfig` and
   reports the addresses actually bound.
2. :class:`ConnectionServer` runs one accept loop per socket; every accepted
   connection is a task in one connection nursery that calls
   ``handler.serve(stream, conn)`` and always ends in
   ``trio.aclose_forcefully(stream)``.

How shutdown works: :meth:`ConnectionServer.stop` cancels the accept loops
(closing the sockets, so new clients are refused by the kernel), then waits up
to a grace period for the connection nursery to empty on its own, and finally
cancels whatever connections remain.

Accept errors that mean "out of file descriptors / memory" (EMFILE, ENFILE,
ENOMEM, ENOBUFS) are logged and retried after a short sleep, as trio's own
``serve_listeners`` does; an exception from ``handler.serve`` is logged and
closes only that connection.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
from dataclasses import dataclass, field
from typing import Any

import trio

from core.config import ListenerConfig
from core.handler import ConnectionInfo, ListenerAddress, ProtocolHandler

log = logging.getLogger(__name__)

#: accept(2) errors that mean the process or system is out of a resource
ACCEPT_CAPACITY_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOBUFS})
#: how long an accept loop sleeps after such an error
CAPACITY_RETRY_S = 0.1
#: how long an accept loop sleeps after any other accept error
OTHER_ERROR_RETRY_S = 1.0
#: at most one "connection limit reached" log line per listener per this many seconds
REJECT_LOG_INTERVAL_S = 5.0

AnyListener = trio.abc.Listener[Any]


class ListenerBindError(Exception):
    """A listening socket could not be opened (address in use, no permission, ...)."""


def format_host_port(host: str, port: int) -> str:
    """``host:port``, with IPv6 hosts in brackets."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


@dataclass(slots=True)
class BoundListener:
    """One configured listener with its sockets bound (``listeners`` may be wrapped for TLS)."""

    config: ListenerConfig
    listeners: list[AnyListener]
    addresses: list[ListenerAddress]

    async def aclose(self) -> None:
        for listener in self.listeners:
            await trio.aclose_forcefully(listener)


def _socket_address(sock: trio.socket.SocketType) -> tuple[str, int]:
    addr = sock.getsockname()
    return str(addr[0]), int(addr[1])


def _wrap_transport(config: ListenerConfig, listener: trio.SocketListener) -> AnyListener:
    """The seam for transport security.

    TLS goes here: when :class:`ListenerConfig` gains a ``tls`` section, return
    ``trio.SSLListener(listener, ssl_context, https_compatible=False)``; handlers
    then receive an :class:`trio.SSLStream` and nothing else changes
    (:func:`connection_info` already looks through ``transport_stream``).
    """
    return listener


async def bind_listener(config: ListenerConfig) -> BoundListener:
    """Bind every socket for ``config`` (a host may resolve to several addresses).

    Raises :class:`ListenerBindError` with a message naming the listener.
    """
    port = config.port if config.port is not None else 0
    host = config.host or None
    try:
        sockets = await trio.open_tcp_listeners(port, host=host)
    except OSError as exc:
        reason = exc.strerror or str(exc)
        raise ListenerBindError(
            f"cannot listen on {format_host_port(config.host, port)} "
            f"for listener {config.name!r} (handler {config.handler}): {reason}"
        ) from exc
    addresses = []
    for sock_listener in sockets:
        bound_host, bound_port = _socket_address(sock_listener.socket)
        addresses.append(ListenerAddress(config.name, bound_host, bound_port))
    return BoundListener(config, [_wrap_transport(config, s) for s in sockets], addresses)


def _host_port(raw: object) -> tuple[str, int]:
    if isinstance(raw, tuple) and len(raw) >= 2:
        return str(raw[0]), int(raw[1])
    return (str(raw) if raw else "?"), 0  # e.g. a Unix-domain socket path


def connection_info(stream: trio.abc.Stream, listener: str) -> ConnectionInfo:
    """Peer and local address of an accepted stream (``"?"``/0 when it has no socket)."""
    inner: object = stream
    while hasattr(inner, "transport_stream"):
        inner = inner.transport_stream
    sock = getattr(inner, "socket", None)
    peer: tuple[str, int] = ("?", 0)
    local: tuple[str, int] = ("?", 0)
    if sock is not None:
        with contextlib.suppress(OSError):  # the peer already left: serve() will see EOF
            peer = _host_port(sock.getpeername())
        with contextlib.suppress(OSError):
            local = _host_port(sock.getsockname())
    return ConnectionInfo(listener=listener, peer_host=peer[0], peer_port=peer[1],
                          local_host=local[0], local_port=local[1])


@dataclass(slots=True)
class _Served:
    """One configured listener being served: its handler and live connection count."""

    name: str
    handler_name: str
    handler: ProtocolHandler
    max_connections: int
    listeners: list[AnyListener]
    active: int = 0
    rejected: int = 0
    rejected_unlogged: int = 0
    last_reject_log: float = field(default=float("-inf"))


class ConnectionServer:
    """Accept loops plus the nursery of connections for a set of bound listeners.

    Use::

        server = ConnectionServer()
        server.add(bound, handler)
        await nursery.start(server.run)   # returns once every accept loop runs
        ...
        await server.stop(grace_s)         # stop accepting, drain, cancel the rest
    """

    def __init__(self) -> None:
        self._served: list[_Served] = []
        self._accept_scope = trio.CancelScope()
        self._conn_scope: trio.CancelScope | None = None
        self._finished = trio.Event()
        self._running = False

    def add(self, bound: BoundListener, handler: ProtocolHandler) -> None:
        """Serve ``bound``'s sockets with ``handler`` (before :meth:`run`)."""
        if self._running:
            raise RuntimeError("add() after run()")
        self._served.append(_Served(
            name=bound.config.name, handler_name=bound.config.handler, handler=handler,
            max_connections=bound.config.max_connections, listeners=list(bound.listeners),
        ))

    @property
    def active_connections(self) -> int:
        """Connections currently being served, over all listeners."""
        return sum(s.active for s in self._served)

    def connections(self, listener: str) -> int:
        """Connections currently being served by the listener called ``listener``."""
        return sum(s.active for s in self._served if s.name == listener)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Accept and serve until :meth:`stop`; returns once every connection has ended."""
        if self._running:
            raise RuntimeError("run() called twice")
        self._running = True
        try:
            async with trio.open_nursery() as conn_nursery:
                self._conn_scope = conn_nursery.cancel_scope
                try:
                    with self._accept_scope:
                        async with trio.open_nursery() as accept_nursery:
                            for served in self._served:
                                for listener in served.listeners:
                                    accept_nursery.start_soon(
                                        self._accept_loop, served, listener, conn_nursery)
                            task_status.started()
                finally:
                    # closed sockets: new clients are refused while connections drain
                    await self._close_listeners()
        finally:
            await self._close_listeners()
            self._finished.set()

    async def _close_listeners(self) -> None:
        for served in self._served:
            for listener in served.listeners:
                await trio.aclose_forcefully(listener)

    async def stop(self, grace_s: float) -> None:
        """Stop accepting, give connections ``grace_s`` seconds to end, then cancel them."""
        self._accept_scope.cancel()
        if not self._running:
            return
        with trio.move_on_after(grace_s):
            await self._finished.wait()
        if not self._finished.is_set():
            log.info("shutdown grace period (%gs) over: closing %d connection(s)",
                     grace_s, self.active_connections)
            if self._conn_scope is not None:
                self._conn_scope.cancel()
            await self._finished.wait()

    def cancel_connections(self) -> None:
        """Stop accepting and cancel every connection now (a forced shutdown)."""
        self._accept_scope.cancel()
        if self._conn_scope is not None:
            self._conn_scope.cancel()

    async def _accept_loop(
        self, served: _Served, listener: AnyListener, conn_nursery: trio.Nursery
    ) -> None:
        while True:
            try:
                stream = await listener.accept()
            except OSError as exc:
                if exc.errno in ACCEPT_CAPACITY_ERRNOS:
                    log.error("listener %s: accept failed with %s (%s); retrying in %gs",
                              served.name, errno.errorcode.get(exc.errno, exc.errno),
                              os.strerror(exc.errno) if exc.errno else exc, CAPACITY_RETRY_S)
                    await trio.sleep(CAPACITY_RETRY_S)
                else:
                    log.exception("listener %s: accept failed; retrying in %gs",
                                  served.name, OTHER_ERROR_RETRY_S)
                    await trio.sleep(OTHER_ERROR_RETRY_S)
                continue
            except (trio.ClosedResourceError, trio.BrokenResourceError):
                log.error("listener %s: socket closed unexpectedly; no longer accepting",
                          served.name)
                return
            if served.active >= served.max_connections:
                self._note_rejected(served)
                await trio.aclose_forcefully(stream)
                continue
            served.active += 1
            conn_nursery.start_soon(self._serve_connection, served, stream)

    def _note_rejected(self, served: _Served) -> None:
        served.rejected += 1
        served.rejected_unlogged += 1
        now = trio.current_time()
        if now - served.last_reject_log >= REJECT_LOG_INTERVAL_S:
            log.warning("listener %s: connection limit (%d) reached; closed %d new "
                        "connection(s) (%d in total)", served.name, served.max_connections,
                        served.rejected_unlogged, served.rejected)
            served.last_reject_log = now
            served.rejected_unlogged = 0

    async def _serve_connection(self, served: _Served, stream: trio.abc.Stream) -> None:
        peer = "?"
        try:
            conn = connection_info(stream, served.name)
            peer = format_host_port(conn.peer_host, conn.peer_port)
            log.debug("listener %s: connection from %s", served.name, peer)
            await served.handler.serve(stream, conn)
        except* Exception as group:
            # except* so that an error raised together with a cancellation (both inside a
            # handler's own nursery) is logged here while the Cancelled goes on up
            error: BaseException = group
            while isinstance(error, BaseExceptionGroup) and len(error.exceptions) == 1:
                error = error.exceptions[0]
            log.error("listener %s: handler %s failed serving %s; connection closed",
                      served.name, served.handler_name, peer, exc_info=error)
        finally:
            served.active -= 1
            await trio.aclose_forcefully(stream)
        log.debug("listener %s: connection from %s closed", served.name, peer)
