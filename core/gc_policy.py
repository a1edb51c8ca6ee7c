"""Garbage-collector settings for a long-running broker process.

CPython's defaults (collect generation 0 every 700 net allocations, a full
collection every 100 of those) are tuned for short scripts.  A broker keeps a
large, stable heap (caches, read-aheads, sessions) and allocates a few objects
per message, so with the defaults full collections walk that whole heap several
times a second, pausing every connection for tens of milliseconds (seen as p99
latency spikes and ~10% of CPU in profiles).  :func:`tune_for_server` moves
what exists at start-up out of the collector's sight and makes collections
rarer; reference counting still frees almost everything at once, and cycles are
still collected.
"""

from __future__ import annotations

import gc

__all__ = ["SERVER_THRESHOLDS", "tune_for_server"]

#: (generation 0 allocations, generation-0 runs per generation-1 run,
#: generation-1 runs per full run).
SERVER_THRESHOLDS = (20_000, 20, 50)


def tune_for_server(thresholds: tuple[int, int, int] = SERVER_THRESHOLDS) -> None:
    """Freeze the start-up heap and set ``thresholds`` (call once, after imports)."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(*thresholds)
