"""The broker: storage, core, protocol handlers and listeners, started and stopped in order.

Start-up (:meth:`Broker.run`):

1. (in the constructor, before any I/O) resolve the configured listeners against
   the handler registry and instantiate each handler once; unknown handlers and
   import failures surface here;
2. open the storage backend (``open_storage``) and the core (``open_core``);
3. bind every listener, so that port 0 is resolved;
4. ``await handler.start(HandlerContext(...))`` for each handler, with its
   listeners' bound addresses and a nursery for its background tasks;
5. start accepting; log one ``listening: NAME on HOST:PORT (handler H)`` line
   per bound socket, then ``ready: ...``.

Shutdown (:meth:`Broker.stop`, e.g. on SIGTERM): stop accepting, let connections
finish within ``shutdown_grace_s``, cancel the rest, ``handler.close()`` each
handler, cancel handler background tasks, close the core, flush and close the
storage, log ``stopped``.  A second stop request with ``force=True`` skips what
is left of the grace period.
"""

from __future__ import annotations

import logging
import signal
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager
from typing import TYPE_CHECKING

import trio

from core.config import Config, CoreSettings, ListenerConfig
from core.handler import HandlerContext, ListenerAddress, ProtocolHandler
from core.listeners import BoundListener, ConnectionServer, ListenerBindError, bind_listener
from core.listeners import format_host_port as _hp
from core.registry import ENTRY_POINT_GROUP, HandlerRegistry
from storage.api import DurabilityPolicy, Storage

if TYPE_CHECKING:
    from core.api import Core  # type: ignore[import-not-found,unused-ignore]

log = logging.getLogger(__name__)

StorageOpener = Callable[[str, DurabilityPolicy], AbstractAsyncContextManager[Storage]]
CoreOpener = Callable[[Storage, CoreSettings], "AbstractAsyncContextManager[Core]"]

#: upper bound on one ``handler.close()`` during shutdown
HANDLER_CLOSE_TIMEOUT_S = 10.0


class StartupError(Exception):
    """The broker could not start (a port in use, a handler's ``start`` failed, ...)."""


def _default_storage_opener(url: str, policy: DurabilityPolicy
                            ) -> AbstractAsyncContextManager[Storage]:
    from storage import open_storage

    return open_storage(url, policy)


def _default_core_opener(storage: Storage, settings: CoreSettings
                         ) -> AbstractAsyncContextManager[Core]:
    from core.api import open_core  # type: ignore[import-not-found,unused-ignore]

    opened: AbstractAsyncContextManager[Core] = open_core(storage, settings)
    return opened


class Broker:
    """One gateway process: see the module docstring for the lifecycle.

    The constructor does no I/O; it raises :class:`~core.config.ConfigError`
    (including :class:`~core.registry.UnknownHandlerError`) or
    :class:`~core.registry.HandlerLoadError`.  ``storage_opener`` and
    ``core_opener`` default to :func:`storage.open_storage` and
    :func:`core.api.open_core`; tests pass stand-ins.
    """

    def __init__(
        self,
        config: Config,
        registry: HandlerRegistry | None = None,
        *,
        storage_opener: StorageOpener | None = None,
        core_opener: CoreOpener | None = None,
    ) -> None:
        self.config = config
        self.registry = registry if registry is not None else HandlerRegistry.from_environment()
        self.listener_configs: list[ListenerConfig] = self.registry.resolve_listeners(config)
        self.handlers: dict[str, ProtocolHandler] = {}
        for lc in self.listener_configs:
            if lc.handler not in self.handlers:
                self.handlers[lc.handler] = self.registry.create(lc.handler)
        self._open_storage = storage_opener or _default_storage_opener
        self._open_core = core_opener or _default_core_opener
        self._stop_requested = trio.Event()
        self._stopping = trio.Event()
        self._force = False
        self._server: ConnectionServer | None = None
        #: every bound socket, once :meth:`run` has reported ready
        self.addresses: list[ListenerAddress] = []

    def stop(self, *, force: bool = False) -> None:
        """Ask :meth:`run` to shut down; ``force`` cancels open connections at once."""
        self._stop_requested.set()
        if force:
            self._force = True
            if self._server is not None:
                self._server.cancel_connections()

    @property
    def server(self) -> ConnectionServer | None:
        """The connection server while the broker accepts connections."""
        return self._server

    async def run(
        self, *, task_status: trio.TaskStatus[list[ListenerAddress]] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Start, serve until :meth:`stop`, shut down; ``task_status`` gets the bound addresses."""
        cfg = self.config
        if not self.registry.names():
            log.warning("no protocol handler is installed (entry-point group %s is empty): "
                        "nothing to serve", ENTRY_POINT_GROUP)
        elif not self.listener_configs:
            log.warning("no listeners configured: nothing to serve")
        url = cfg.storage_url
        log.info("opening storage %s (durability %s)", url, cfg.durability)
        opened: list[str] = []
        try:
            async with self._open_storage(url, cfg.durability) as storage:
                opened.append("storage")
                try:
                    async with self._open_core(storage, cfg.core) as core:
                        opened.append("core")
                        await self._serve(core, task_status)
                finally:
                    if "core" in opened:
                        log.info("core closed")
        finally:
            if "storage" in opened:
                log.info("storage closed")
        log.info("stopped")

    async def _serve(
        self, core: Core, task_status: trio.TaskStatus[list[ListenerAddress]]
    ) -> None:
        async with trio.open_nursery() as handler_nursery:
            bound = await self._bind_all()
            started: list[str] = []
            try:
                await self._start_handlers(core, handler_nursery, bound, started)
                server = ConnectionServer()
                for b in bound:
                    server.add(b, self.handlers[b.config.handler])
                self._server = server
                async with trio.open_nursery() as nursery:
                    await nursery.start(server.run)
                    for b in bound:
                        for addr in b.addresses:
                            log.info("listening: %s on %s (handler %s)", addr.name,
                                     _hp(addr.host, addr.port), b.config.handler)
                    self.addresses = [a for b in bound for a in b.addresses]
                    log.info("ready: %d listener(s), %d socket(s)", len(bound),
                             len(self.addresses))
                    task_status.started(list(self.addresses))
                    await self._stop_requested.wait()
                    grace = 0.0 if self._force else self.config.shutdown_grace_s
                    self._stopping.set()
                    log.info("stopping: no longer accepting; %d connection(s) open, "
                             "grace %gs", server.active_connections, grace)
                    await server.stop(grace)
                self._server = None
            finally:
                for b in bound:
                    await b.aclose()
                await self._close_handlers(started)
                handler_nursery.cancel_scope.cancel()

    async def _bind_all(self) -> list[BoundListener]:
        bound: list[BoundListener] = []
        try:
            for lc in self.listener_configs:
                bound.append(await bind_listener(lc))
        except ListenerBindError as exc:
            for b in bound:
                await b.aclose()
            raise StartupError(str(exc)) from exc
        except BaseException:
            for b in bound:
                await b.aclose()
            raise
        return bound

    async def _start_handlers(
        self, core: Core, nursery: trio.Nursery, bound: list[BoundListener], started: list[str]
    ) -> None:
        for name, handler in self.handlers.items():
            addresses = [a for b in bound if b.config.handler == name for a in b.addresses]
            context = HandlerContext(core=core, settings=self.config.handler_settings(name),
                                     nursery=nursery, listeners=addresses,
                                     stopping=self._stopping)
            try:
                await handler.start(context)
            except Exception as exc:
                log.exception("handler %s failed to start", name)
                raise StartupError(
                    f"handler {name!r} failed to start: {type(exc).__name__}: {exc}"
                ) from exc
            started.append(name)
            log.debug("handler %s started", name)

    async def _close_handlers(self, started: list[str]) -> None:
        for name in reversed(started):
            with trio.move_on_after(HANDLER_CLOSE_TIMEOUT_S, shield=True) as scope:
                try:
                    await self.handlers[name].close()
                except Exception:
                    log.exception("handler %s failed while closing", name)
            if scope.cancelled_caught:
                log.error("handler %s did not close within %gs", name, HANDLER_CLOSE_TIMEOUT_S)
            else:
                log.debug("handler %s closed", name)


async def _watch_signals(broker: Broker, signals: AsyncIterator[int]) -> None:
    count = 0
    async for signum in signals:
        count += 1
        name = signal.Signals(signum).name
        if count == 1:
            log.info("received %s: shutting down (again to skip the grace period)", name)
            broker.stop()
        else:
            log.warning("received %s again: closing connections now", name)
            broker.stop(force=True)


async def run_until_signalled(broker: Broker) -> None:
    """Run ``broker`` until SIGINT or SIGTERM (main thread only); a second signal forces."""
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_watch_signals, broker, signals)
            await broker.run()
            nursery.cancel_scope.cancel()
