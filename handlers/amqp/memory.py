"""The broker-wide memory alarm behind ``connection.blocked`` / ``connection.unblocked``.

How it works
------------
What is measured is the **process resident set size**, read from ``/proc/self/statm`` (one
tiny read of a kernel-generated file, well under a microsecond of blocking) every
:data:`SAMPLE_INTERVAL` seconds of trio's clock.  RSS covers everything the broker holds for
every protocol — the storage's write buffers, deliveries queued for slow sockets, AMQP publishes
not yet appended — which is what RabbitMQ's ``vm_memory_high_watermark`` watches too.  Where
``/proc`` is missing the peak RSS from :func:`resource.getrusage` stands in (it never falls, so
such a platform unblocks only if the watermark is raised).

The alarm has hysteresis: it is raised when a sample reaches the **high** watermark and cleared
only once a sample is below the **low** watermark, so a broker hovering at the line does not
flap its clients between blocked and unblocked.

:class:`MemoryAlarm` is the sans-IO state (``observe(bytes)`` → did it change?);
:class:`MemoryMonitor` adds the sampling task and lets sessions wait for the alarm to clear.
Sessions (:mod:`handlers.amqp.session`) block a connection when it publishes while the alarm
is raised: they send ``connection.blocked`` (if the client announced the capability) and stop
reading from its socket until the alarm clears; deliveries to its consumers keep flowing.

Settings (``[handlers.amqp]``)::

    memory_high_watermark_bytes = 0   # 0: 40 % of physical memory (RabbitMQ's default ratio)
    memory_low_watermark_bytes = 0    # 0: 90 % of the high watermark
"""

from __future__ import annotations

import logging
import os
import resource
from collections.abc import Callable

import trio

__all__ = [
    "DEFAULT_HIGH_RATIO",
    "DEFAULT_LOW_RATIO",
    "SAMPLE_INTERVAL",
    "MemoryAlarm",
    "MemoryMonitor",
    "default_high_watermark",
    "process_rss_bytes",
]

log = logging.getLogger(__name__)

SAMPLE_INTERVAL = 0.25
DEFAULT_HIGH_RATIO = 0.4
DEFAULT_LOW_RATIO = 0.9
_FALLBACK_PHYSICAL = 4 * 1024**3


def process_rss_bytes() -> int:
    """The process's resident set size in bytes (peak RSS where ``/proc`` is missing)."""
    try:
        with open("/proc/self/statm", "rb") as statm:
            fields = statm.read().split()
        return int(fields[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def default_high_watermark() -> int:
    """:data:`DEFAULT_HIGH_RATIO` of physical memory (of 4 GiB when that is unknown)."""
    try:
        physical = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (OSError, ValueError):
        physical = _FALLBACK_PHYSICAL
    if physical <= 0:
        physical = _FALLBACK_PHYSICAL
    return int(physical * DEFAULT_HIGH_RATIO)


class MemoryAlarm:
    """Hysteresis between a high and a low watermark (sans-IO)."""

    def __init__(self, high: int, low: int | None = None) -> None:
        if high <= 0:
            raise ValueError(f"high watermark must be positive, got {high}")
        low = int(high * DEFAULT_LOW_RATIO) if low is None else low
        if not 0 <= low <= high:
            raise ValueError(f"low watermark {low} must be in 0..{high}")
        self.high = high
        self.low = low
        self.raised = False
        self.last_sample = 0

    def observe(self, used: int) -> bool:
        """Take one sample; True when the alarm was raised or cleared by it."""
        self.last_sample = used
        if not self.raised and used >= self.high:
            self.raised = True
            return True
        if self.raised and used < self.low:
            self.raised = False
            return True
        return False


class MemoryMonitor:
    """The alarm plus its sampling task; sessions read :attr:`alarmed` and wait on it."""

    def __init__(self, high: int, low: int | None = None, *,
                 sample: Callable[[], int] = process_rss_bytes,
                 interval: float = SAMPLE_INTERVAL) -> None:
        self.alarm = MemoryAlarm(high, low)
        self.sample = sample
        self.interval = interval
        self._cleared = trio.Event()
        self._cleared.set()

    @property
    def alarmed(self) -> bool:
        """True while the memory alarm is raised."""
        return self.alarm.raised

    def check(self) -> None:
        """Sample now and update the alarm (the sampling task calls this every interval)."""
        if not self.alarm.observe(self.sample()):
            return
        if self.alarm.raised:
            log.warning("amqp: memory alarm raised (%d bytes used, high watermark %d): "
                        "blocking publishing connections", self.alarm.last_sample,
                        self.alarm.high)
            self._cleared = trio.Event()
        else:
            log.warning("amqp: memory alarm cleared (%d bytes used, low watermark %d)",
                        self.alarm.last_sample, self.alarm.low)
            self._cleared.set()

    async def wait_cleared(self) -> None:
        """Return once the alarm is not raised."""
        while self.alarm.raised:
            await self._cleared.wait()

    async def run(self) -> None:
        """Sample every :attr:`interval` seconds of trio's clock, forever."""
        while True:
            self.check()
            await trio.sleep(self.interval)
