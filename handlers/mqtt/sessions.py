"""The registry of MQTT client sessions: one live connection per client id, takeover, expiry.

A session belongs to a client id and may outlive its connection (MQTT 5 session expiry
interval; a 3.1.1 ``clean session = 0`` session lives up to ``max_session_expiry``).

* :meth:`SessionRegistry.attach` is called by a new connection after CONNECT was accepted.
  An existing connection with the same client id is *taken over*: it is told to go (MQTT 5:
  DISCONNECT 0x8E) and the new one waits until it has finished.  With clean start, an old
  session is discarded; otherwise it is resumed (``session present``).
* :meth:`SessionRegistry.detach` is called when the connection ends: a session with expiry
  interval 0 is discarded, any other is kept and an expiry timer starts.
* Persistent sessions are stored in the metadata store under ``mqtt/sessions/<client id>``
  (subscriptions, expiry interval, when the client went away); :meth:`load` restores them at
  start-up and restarts their timers with the time left.  The messages themselves are not
  here: they stay in the log, behind each session's durable core subscriptions.

Discarding a session calls the ``discard`` hook (the handler deletes the core subscriptions
and publishes a pending will).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, Protocol
from urllib.parse import quote, unquote

import trio

from storage.api import MetadataStore, StorageError

from .session_state import SessionState

__all__ = ["NEVER_EXPIRES", "SESSIONS_PREFIX", "Attachment", "SessionRegistry"]

log = logging.getLogger(__name__)

SESSIONS_PREFIX = "mqtt/sessions/"
NEVER_EXPIRES = 0xFFFFFFFF
#: how long a new connection waits for the one it takes over to finish
TAKEOVER_TIMEOUT_S = 10.0

AnyState = SessionState[Any]


class Attachment(Protocol):
    """What the registry needs from a live connection."""

    def kick(self, reason_code: int) -> None:
        """Ask the connection to close (sending DISCONNECT with ``reason_code`` on MQTT 5)."""

    async def wait_finished(self) -> None:
        """Return once the connection has fully ended (and detached)."""


def _wall_ms() -> int:
    return time.time_ns() // 1_000_000


class SessionRegistry:
    """Sessions by client id (see the module docstring)."""

    def __init__(
        self,
        metadata: MetadataStore,
        nursery: trio.Nursery,
        discard: Callable[[AnyState], Awaitable[None]],
        *,
        wall_ms: Callable[[], int] = _wall_ms,
    ) -> None:
        self._metadata = metadata
        self._nursery = nursery
        self._discard_hook = discard
        self._wall_ms = wall_ms
        self._live: dict[str, Attachment] = {}
        self._states: dict[str, AnyState] = {}
        self._timers: dict[str, trio.CancelScope] = {}
        self._locks: dict[str, trio.Lock] = {}

    # ------------------------------------------------------------ queries

    def live(self, client_id: str) -> Attachment | None:
        """The connection currently attached to ``client_id``."""
        return self._live.get(client_id)

    def state(self, client_id: str) -> AnyState | None:
        """The session of ``client_id`` (online or offline)."""
        return self._states.get(client_id)

    @property
    def online(self) -> int:
        return len(self._live)

    @property
    def sessions(self) -> int:
        return len(self._states)

    # ------------------------------------------------------------ start-up

    async def load(self) -> int:
        """Restore stored sessions and restart their expiry timers; return how many."""
        now = self._wall_ms()
        for key, record in await self._metadata.list(SESSIONS_PREFIX):
            client_id = unquote(key[len(SESSIONS_PREFIX):])
            try:
                raw = json.loads(record.value)
                state: AnyState = SessionState.from_json(json.dumps(raw["state"]).encode())
                gone_ms = raw.get("disconnected_ms")
            except (ValueError, KeyError, TypeError):
                log.warning("mqtt: ignoring unreadable stored session %r", client_id)
                continue
            self._states[client_id] = state
            since = 0.0 if gone_ms is None else max(0, now - int(gone_ms)) / 1000
            self._start_timer(state, since)
        return len(self._states)

    # ------------------------------------------------------------ attach / detach

    def _lock(self, client_id: str) -> trio.Lock:
        lock = self._locks.get(client_id)
        if lock is None:
            lock = self._locks[client_id] = trio.Lock()
        return lock

    def _unlock(self, client_id: str, lock: trio.Lock) -> None:
        """Forget an idle lock (one lock per client id would otherwise pile up)."""
        if not lock.locked() and not lock.statistics().tasks_waiting:
            self._locks.pop(client_id, None)

    async def attach(
        self, client_id: str, conn: Attachment, *, clean_start: bool, protocol_level: int,
        expiry_interval: int, takeover_reason: int = 0x8E,
    ) -> tuple[AnyState, bool]:
        """Make ``conn`` the live connection of ``client_id``; return ``(session, present)``."""
        lock = self._lock(client_id)
        try:
            async with lock:
                return await self._attach(client_id, conn, clean_start, protocol_level,
                                          expiry_interval, takeover_reason)
        finally:
            self._unlock(client_id, lock)

    async def _attach(
        self, client_id: str, conn: Attachment, clean_start: bool, protocol_level: int,
        expiry_interval: int, takeover_reason: int,
    ) -> tuple[AnyState, bool]:
        old = self._live.pop(client_id, None)
        if old is not None:
            log.info("mqtt: client %r connected again: taking over its session", client_id)
            old.kick(takeover_reason)
            with trio.move_on_after(TAKEOVER_TIMEOUT_S):
                await old.wait_finished()
        self._stop_timer(client_id)
        state = self._states.get(client_id)
        present = state is not None and not clean_start
        if state is not None and clean_start:
            await self._discard(state)
            state = None
        if state is None:
            state = SessionState(client_id, protocol_level, expiry_interval)
            self._states[client_id] = state
        state.protocol_level = protocol_level
        state.expiry_interval = expiry_interval
        self._live[client_id] = conn
        if expiry_interval > 0:
            await self.save(state, online=True)
        return state, present

    async def detach(self, client_id: str, conn: Attachment) -> None:
        """``conn`` ended: keep its session until it expires, or discard it now."""
        if self._live.get(client_id) is not conn:
            return  # taken over: the new connection owns the session now
        del self._live[client_id]
        state = self._states.get(client_id)
        if state is None:
            return
        if state.expiry_interval == 0:
            await self._discard(state)
            return
        await self.save(state, online=False)
        self._start_timer(state, 0.0)

    def _record(self, state: AnyState, online: bool) -> tuple[str, bytes]:
        record = {"state": json.loads(state.to_json()),
                  "disconnected_ms": None if online else self._wall_ms()}
        return (SESSIONS_PREFIX + quote(state.client_id, safe=""),
                json.dumps(record, separators=(",", ":")).encode())

    async def save(self, state: AnyState, *, online: bool = True) -> None:
        """Store a persistent session (no-op for expiry interval 0); durable on return (a
        metadata store ``put``: SQLite with ``synchronous=FULL`` in the embedded backend)."""
        if state.expiry_interval == 0:
            return
        await self._metadata.put(*self._record(state, online))

    def save_soon(self, state: AnyState) -> None:
        """Store an online persistent session with a coalesced write, not waiting for it
        (best effort: where a crash must not lose the change, use :meth:`save`)."""
        if state.expiry_interval and self._live.get(state.client_id) is not None:
            try:
                self._metadata.put_coalesced(*self._record(state, True))
            except StorageError as exc:  # best effort: the next save writes it
                log.warning("mqtt: cannot save the session of %r now: %s", state.client_id, exc)

    async def _discard(self, state: AnyState) -> None:
        if self._states.get(state.client_id) is state:
            del self._states[state.client_id]
        self._stop_timer(state.client_id)
        try:
            await self._metadata.delete(SESSIONS_PREFIX + quote(state.client_id, safe=""))
        finally:
            await self._discard_hook(state)

    # ------------------------------------------------------------ expiry

    def _start_timer(self, state: AnyState, elapsed_s: float) -> None:
        self._stop_timer(state.client_id)
        if state.expiry_interval >= NEVER_EXPIRES:
            return
        scope = trio.CancelScope()
        try:
            self._nursery.start_soon(self._expire_after, state,
                                     state.expiry_interval - elapsed_s, scope)
        except RuntimeError:  # shutting down: the stored session restarts its timer on load
            return
        self._timers[state.client_id] = scope

    def _stop_timer(self, client_id: str) -> None:
        scope = self._timers.pop(client_id, None)
        if scope is not None:
            scope.cancel()

    async def _expire_after(self, state: AnyState, delay: float, scope: trio.CancelScope) -> None:
        with scope:
            await trio.sleep(max(0.0, delay))
            lock = self._lock(state.client_id)
            try:
                async with lock:
                    await self._expire(state, scope)
            finally:
                self._unlock(state.client_id, lock)

    async def _expire(self, state: AnyState, scope: trio.CancelScope) -> None:
        client_id = state.client_id
        if self._timers.get(client_id) is not scope:
            return
        del self._timers[client_id]
        if client_id in self._live or self._states.get(client_id) is not state:
            return
        log.info("mqtt: session of %r expired", client_id)
        try:
            await self._discard(state)
        except Exception:
            log.exception("mqtt: discarding the session of %r failed", client_id)
