"""What the MQTT and AMQP load generators share: the worker plumbing and the receiver's result."""

from __future__ import annotations

import os
from array import array
from dataclasses import dataclass, field
from typing import Any, Protocol


class ResultQueue(Protocol):
    """The part of ``multiprocessing.Queue`` the workers use."""

    def put(self, obj: Any, block: bool = True, timeout: float | None = None) -> None: ...


class SharedInt(Protocol):
    """A ``multiprocessing.Value('q')``: the publisher writes how many it sent."""

    value: int


@dataclass(slots=True)
class ReceiverResult:
    """What one subscriber/consumer received; ``latencies_us`` only when asked for."""

    index: int
    received: int = 0
    t_first_ns: int = 0
    t_last_ns: int = 0
    latencies_us: array[int] = field(default_factory=lambda: array("q"))
    cpu_s: float = 0.0
    wall_s: float = 0.0
    error: str = ""


def cpu_seconds() -> float:
    """User + system CPU time of this process."""
    t = os.times()
    return t.user + t.system
