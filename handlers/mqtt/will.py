"""Will messages: published when a client goes away without a clean DISCONNECT.

A connection registers its will at CONNECT.  When it ends abruptly (socket closed, keep-alive
timeout, protocol error, DISCONNECT 0x04 "with will message", takeover) it calls
:meth:`WillScheduler.trigger`: the will is published after its Will Delay Interval (MQTT 5),
or at once.  A new connection of the same client id before the delay is over cancels it
(:meth:`WillScheduler.cancel`); the session ending first publishes it at once
(:meth:`WillScheduler.session_ended`).  A clean DISCONNECT (0x00) just drops it.

The timers are tasks in the handler's nursery and sleep on trio's clock.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import replace

import trio

from .packets import Publish, Will

__all__ = ["WillScheduler", "will_to_publish"]

log = logging.getLogger(__name__)


def will_to_publish(will: Will) -> Publish:
    """The PUBLISH a will becomes (the Will Delay Interval is not a PUBLISH property)."""
    props = will.properties
    if props.will_delay_interval is not None:
        props = replace(props, will_delay_interval=None)
    return Publish(will.topic, will.payload, will.qos, will.retain, False,
                   1 if will.qos else None, props)


class WillScheduler:
    """Pending wills by client id (see the module docstring)."""

    def __init__(
        self, nursery: trio.Nursery, publish: Callable[[str, Publish], Awaitable[None]]
    ) -> None:
        self._nursery = nursery
        self._publish = publish
        self._pending: dict[str, tuple[Publish, trio.CancelScope]] = {}

    @property
    def pending(self) -> int:
        return len(self._pending)

    def trigger(self, client_id: str, will: Will, delay: float) -> None:
        """The client went away abruptly: publish ``will`` after ``delay`` seconds."""
        self.cancel(client_id)
        publish = will_to_publish(will)
        if delay <= 0:
            self._nursery.start_soon(self._send, client_id, publish)
            return
        scope = trio.CancelScope()
        self._pending[client_id] = (publish, scope)
        self._nursery.start_soon(self._after, client_id, publish, delay, scope)

    def cancel(self, client_id: str) -> bool:
        """Drop a pending will (the client is back); True when there was one."""
        found = self._pending.pop(client_id, None)
        if found is None:
            return False
        found[1].cancel()
        return True

    def session_ended(self, client_id: str) -> None:
        """The session ended before the delay did: publish the will now."""
        found = self._pending.pop(client_id, None)
        if found is not None:
            found[1].cancel()
            self._nursery.start_soon(self._send, client_id, found[0])

    async def _after(
        self, client_id: str, publish: Publish, delay: float, scope: trio.CancelScope
    ) -> None:
        with scope:
            await trio.sleep(max(0.0, delay))
            if self._pending.get(client_id, (None, None))[1] is scope:
                del self._pending[client_id]
                await self._send(client_id, publish)

    async def _send(self, client_id: str, publish: Publish) -> None:
        try:
            await self._publish(client_id, publish)
            log.info("mqtt: published the will of %r to %r", client_id, publish.topic)
        except Exception:
            log.exception("mqtt: publishing the will of %r failed", client_id)
