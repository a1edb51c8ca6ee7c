"""The embedded storage backend: segment-file logs and SQLite metadata under one directory.

Layout::

    <data_dir>/metadata.db             the metadata store (storage.sqlite)
    <data_dir>/logs/<log name>/        one directory per log (names are path-like)
        00000000000000000000.log       segments, see storage.segment
        00000000000000000000.idx       index of a sealed segment

:func:`open_local_storage` owns a nursery: one writer task per open log and,
under ``interval:<ms>``, the task that fsyncs every log with unsynced writes.
"""

from __future__ import annotations

import logging
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import trio

from storage.api import (
    DurabilityPolicy,
    MetadataStore,
    PartitionLog,
    Storage,
    StorageError,
    SyncMode,
)
from storage.memory import check_log_name
from storage.partition_log import DEFAULT_SEGMENT_BYTES, LocalLog
from storage.segment import parse_segment_name
from storage.sqlite import open_sqlite_metadata

log = logging.getLogger(__name__)


class LocalStorage(Storage):
    """Named :class:`LocalLog` s under ``<data_dir>/logs`` plus the SQLite metadata store."""

    def __init__(
        self,
        data_dir: Path,
        policy: DurabilityPolicy,
        metadata: MetadataStore,
        nursery: trio.Nursery,
        segment_bytes: int = DEFAULT_SEGMENT_BYTES,
    ) -> None:
        self._data_dir = data_dir
        self._logs_dir = data_dir / "logs"
        self._policy = policy
        self._metadata = metadata
        self._nursery = nursery
        self._segment_bytes = segment_bytes
        self._logs: dict[str, LocalLog] = {}
        self._open_lock = trio.Lock()

    @property
    def metadata(self) -> MetadataStore:
        return self._metadata

    @property
    def policy(self) -> DurabilityPolicy:
        return self._policy

    @property
    def data_dir(self) -> Path:
        """The directory everything is stored under."""
        return self._data_dir

    async def open_log(self, name: str) -> PartitionLog:
        check_log_name(name)
        found = self._logs.get(name)
        if found is not None:
            await trio.lowlevel.checkpoint()
            return found
        async with self._open_lock:
            found = self._logs.get(name)
            if found is None:
                found = await LocalLog.open(
                    name, self._logs_dir / name, self._policy, self._segment_bytes
                )
                self._logs[name] = found
                self._nursery.start_soon(found.run_writer, name=f"log writer {name}")
            return found

    async def delete_log(self, name: str) -> None:
        check_log_name(name)
        async with self._open_lock:
            found = self._logs.pop(name, None)
            if found is not None:
                await found.close()
            await trio.to_thread.run_sync(_delete_log_files, self._logs_dir, name)

    async def list_logs(self) -> list[str]:
        return await trio.to_thread.run_sync(_list_logs, self._logs_dir)

    async def close(self) -> None:
        """Close every open log (queued appends are written first)."""
        while self._logs:
            _name, found = self._logs.popitem()
            await found.close()

    async def sync_dirty_logs(self) -> None:
        """fsync every open log that has writes not yet synced."""
        for found in list(self._logs.values()):
            if found.needs_sync:
                try:
                    await found.sync()
                except StorageError as exc:  # the log is marked failed; keep syncing others
                    log.warning("periodic sync of %s failed: %r", found.name, exc)

    async def _sync_every(self, interval_ms: int) -> None:
        deadline = trio.current_time()
        while True:
            deadline = max(deadline + interval_ms / 1000, trio.current_time())
            await trio.sleep_until(deadline)
            await self.sync_dirty_logs()


def _delete_log_files(logs_dir: Path, name: str) -> None:
    directory = logs_dir / name
    if not directory.is_dir():
        return
    for item in os.scandir(directory):
        # only this log's own files: another log may live in a subdirectory
        base = parse_segment_name(item.name)
        if item.is_file() and (
            base is not None or item.name.endswith((".idx", ".tmp"))
        ):
            os.unlink(item.path)
    rel = Path(name)
    for part in [rel, *rel.parents]:
        if part == Path("."):
            break
        try:
            (logs_dir / part).rmdir()
        except OSError:
            break  # not empty: another log lives below


def _list_logs(logs_dir: Path) -> list[str]:
    names: list[str] = []
    if not logs_dir.is_dir():
        return names
    for dirpath, _dirnames, filenames in os.walk(logs_dir):
        if any(parse_segment_name(f) is not None for f in filenames):
            names.append(Path(dirpath).relative_to(logs_dir).as_posix())
    return sorted(names)


@asynccontextmanager
async def open_local_storage(
    path: str | os.PathLike[str],
    policy: DurabilityPolicy | None = None,
    *,
    segment_bytes: int = DEFAULT_SEGMENT_BYTES,
) -> AsyncIterator[LocalStorage]:
    """Open (creating if needed) the embedded backend in directory ``path``.

    ``segment_bytes`` is the size at which a log rolls to a new segment file.
    On exit every log is closed (queued appends written and fsynced).
    """
    if segment_bytes <= 0:
        raise ValueError("segment_bytes must be positive")
    policy = policy or DurabilityPolicy()
    data_dir = Path(path)
    await trio.to_thread.run_sync(lambda: (data_dir / "logs").mkdir(parents=True, exist_ok=True))
    try:
        async with (
            open_sqlite_metadata(data_dir / "metadata.db") as metadata,
            trio.open_nursery() as nursery,
        ):
            storage = LocalStorage(data_dir, policy, metadata, nursery, segment_bytes)
            if policy.mode is SyncMode.INTERVAL:
                nursery.start_soon(storage._sync_every, policy.interval_ms)
            try:
                yield storage
            finally:
                with trio.CancelScope(shield=True):
                    await storage.close()
                nursery.cancel_scope.cancel()
    except BaseExceptionGroup as group:
        # Our tasks do not raise: a lone exception comes from the caller's block.  Give it
        # back as it was raised rather than wrapped by our nursery.
        if len(group.exceptions) == 1:
            raise group.exceptions[0] from None
        raise
