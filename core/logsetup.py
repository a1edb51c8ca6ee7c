"""Process-wide logging for the ``polystream`` command: one line per record on stderr.

Lines look like ``2026-01-01 12:00:00,123 INFO core.broker: listening: kafka on
127.0.0.1:9092 (handler kafka)``; tests and scripts parse the message part.
"""

from __future__ import annotations

import logging
import sys

LEVELS = ("debug", "info", "warning", "error")
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def setup_logging(level: str = "info") -> None:
    """Send log records at ``level`` and above to stderr (replacing earlier set-up)."""
    numeric = logging.getLevelNamesMapping().get(level.upper())
    if numeric is None:
        raise ValueError(f"unknown log level {level!r} (one of: {', '.join(LEVELS)})")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(LOG_FORMAT))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(numeric)
