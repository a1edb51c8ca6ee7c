"""A settable epoch-millisecond clock for the core's broker publish times."""

from __future__ import annotations

T0 = 1_700_000_000_000


class FakeClock:
    """Pass as ``open_core(..., clock_ms=clock)``; tests move ``now`` by hand."""

    def __init__(self, now: int = T0) -> None:
        self.now = now

    def __call__(self) -> int:
        return self.now
