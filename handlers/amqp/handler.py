"""The AMQP 0-9-1 protocol handler: settings, the vhost directory, one session per connection.

Settings (``[handlers.amqp]`` in the configuration file)::

    max_message_bytes = 16777216   # larger message bodies close the channel with 406
    frame_max = 131072             # proposed in connection.tune (>= 4096)
    channel_max = 2047             # proposed in connection.tune (1..65535)
    heartbeat = 60                 # proposed in connection.tune; the client's tune-ok decides
    memory_high_watermark_bytes = 0  # process RSS that raises the memory alarm; 0: 40 % of RAM
    memory_low_watermark_bytes = 0   # RSS below which the alarm clears; 0: 90 % of the high mark

While the memory alarm is raised, a connection that publishes gets ``connection.blocked`` and is
no longer read until the alarm clears (:mod:`handlers.amqp.memory`).

Queues are durable core subscriptions on the core's one
:class:`~core.subscriptions.SubscriptionManager` (``core.subscriptions``), which restores stored
cursors at start and flushes them at shutdown.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, fields
from typing import Any, ClassVar

import trio

from core.handler import ConnectionInfo, HandlerContext, ProtocolHandler
from handlers.amqp.broker.vhosts import VhostDirectory
from handlers.amqp.connection import ServerSettings
from handlers.amqp.frames import FRAME_MIN_SIZE
from handlers.amqp.memory import MemoryMonitor, default_high_watermark
from handlers.amqp.session import AmqpSession

__all__ = ["AmqpHandler", "AmqpSettings"]

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class AmqpSettings:
    """The handler's settings (see the module docstring); :meth:`parse` validates them."""

    max_message_bytes: int = 16 * 1024 * 1024
    frame_max: int = 131072
    channel_max: int = 2047
    heartbeat: int = 60
    memory_high_watermark_bytes: int = 0
    memory_low_watermark_bytes: int = 0

    @classmethod
    def parse(cls, raw: dict[str, Any]) -> AmqpSettings:
        """Build settings from the ``[handlers.amqp]`` table; ValueError names a bad key."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(raw) - known)
        if unknown:
            raise ValueError(f"unknown amqp handler settings: {', '.join(unknown)}")
        limits = {"max_message_bytes": (1, 2**31 - 1), "frame_max": (FRAME_MIN_SIZE, 2**31 - 1),
                  "channel_max": (1, 0xFFFF), "heartbeat": (0, 0xFFFF),
                  "memory_high_watermark_bytes": (0, 2**62),
                  "memory_low_watermark_bytes": (0, 2**62)}
        for key, (low, high) in limits.items():
            if key not in raw:
                continue
            value = raw[key]
            if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
                raise ValueError(f"handlers.amqp.{key}: expected an integer in {low}..{high}, "
                                 f"got {value!r}")
        settings = cls(**raw)
        high, low = settings.memory_watermarks()
        if low > high:
            raise ValueError(f"handlers.amqp.memory_low_watermark_bytes ({low}) is above the "
                             f"high watermark ({high})")
        return settings

    def memory_watermarks(self) -> tuple[int, int]:
        """The effective (high, low) memory watermarks in bytes, defaults applied."""
        high = self.memory_high_watermark_bytes or default_high_watermark()
        low = self.memory_low_watermark_bytes or int(high * 0.9)
        return high, low

    def server_settings(self) -> ServerSettings:
        return ServerSettings(channel_max=self.channel_max, frame_max=self.frame_max,
                              heartbeat=self.heartbeat, max_message_size=self.max_message_bytes)


class AmqpHandler(ProtocolHandler):
    """Serves AMQP 0-9-1 (RabbitMQ clients) on the core: exchanges are topics, queues are
    subscriptions."""

    name: ClassVar[str] = "amqp"
    default_port: ClassVar[int] = 5672

    def __init__(self) -> None:
        self.settings = AmqpSettings()
        self._server_settings = self.settings.server_settings()
        self._vhosts: VhostDirectory | None = None
        self._stopping: trio.Event | None = None
        self.memory: MemoryMonitor | None = None

    async def start(self, context: HandlerContext) -> None:
        """Validate settings; queues live on the core's subscription manager."""
        self.settings = AmqpSettings.parse(context.settings)
        self._server_settings = self.settings.server_settings()
        self._vhosts = VhostDirectory(context.core, context.core.subscriptions, context.nursery)
        self._stopping = context.stopping
        self.memory = MemoryMonitor(*self.settings.memory_watermarks())
        context.nursery.start_soon(self.memory.run)

    async def serve(self, stream: trio.abc.Stream, conn: ConnectionInfo) -> None:
        """Run an :class:`AmqpSession` on the connection until it ends."""
        if self._vhosts is None:
            raise RuntimeError("AmqpHandler.serve() before start()")
        session = AmqpSession(stream, conn, self._vhosts, self._server_settings, self._stopping,
                              memory=self.memory)
        await session.run()

