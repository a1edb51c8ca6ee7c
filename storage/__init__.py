"""Storage backends: partition logs and a metadata store (see :mod:`storage.api`)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from storage.api import DurabilityPolicy, Storage


@asynccontextmanager
async def open_storage(url: str, policy: DurabilityPolicy | None = None) -> AsyncIterator[Storage]:
    """Open a backend by URL: ``memory://`` or ``file:///path`` (a plain path means file)."""
    if url.startswith("memory://"):
        from storage.memory import open_memory_storage

        async with open_memory_storage(policy) as storage:
            yield storage
        return
    path = url.removeprefix("file://")
    from storage.local import open_local_storage

    async with open_local_storage(path, policy or DurabilityPolicy()) as storage:
        yield storage
