"""The embedded metadata store: SQLite in WAL mode, one table of versioned records.

Theory of operation
-------------------
Every SQLite call runs in one worker thread at a time
(:func:`storage.worker.run_in_worker` under a ``CapacityLimiter(1)``), never on the
event-loop thread.  The table is ``metadata(key TEXT PRIMARY KEY, value BLOB,
version INTEGER)``; ``synchronous=FULL`` makes a returned write durable.  Writes
run in ``BEGIN IMMEDIATE`` transactions so a compare-and-set's read and write are
atomic even against another process (the ``polystream users`` CLI opens the same
file while the server runs; the busy timeout makes it wait for the write lock).

Coalesced writes (:meth:`SqliteMetadataStore.put_coalesced`) go to a bounded
dict, ``key -> (latest value, number of coalesced writes since the last flush)``.
The logical state of the store is always *database + pending writes*: a pending
key's version is its database version (0 when absent) plus its count, exactly as
if each coalesced write had been a ``put``.  So the rule for mixing both kinds of
write on one key is simple: **a coalesced write is a write**; it bumps the version
by one at once, and a CAS ``put``/``delete`` must name that version.

Write order of a key
--------------------
The writes of one key take effect in the order they were *called*, whichever API
made them: the last one called wins.  A coalesced write is done when called; a
``put``/``delete`` waits for the lock and a worker thread, and coalesced writes
of its key may be made meanwhile.  Those are newer and must stay on top of it.

So a ``put``/``delete`` *claims* its key when called (before any checkpoint): a
:class:`_Claim` in ``_claims[key]``, in call order, which is also the order the
lock (a :class:`trio.StrictFIFOLock`) runs them in.  A coalesced write of a
claimed key goes to the key's newest claim (``claim.newer``) instead of the
pending dict.  The pending dict thus only holds writes older than every claim of
their key, and only it is flushed: no flush stores a value under a ``put`` that
would then overwrite it.  When the ``put``/``delete`` runs, the key's pending
writes are exactly the ones it supersedes: its CAS sees their count, and once it
has committed they are dropped and its ``newer`` writes become the key's pending
writes.  When it fails (or is cancelled while waiting) nothing is superseded: its
``newer`` writes join the writes before it.  Reads
(:meth:`~SqliteMetadataStore.get`/``list``) see every coalesced write, claimed
ones included.

The pending dict is written in one transaction per flush: by the background
flusher ``flush_interval`` seconds after the first pending write, sooner once
``flush_threshold`` keys are pending, on :meth:`~SqliteMetadataStore.flush`, and
on close.  The lock is held across every database call *and* the merge with
the pending writes, so no reader sees a batch twice or not at all.  A batch whose
transaction fails is merged back into the pending dict and retried.  The writes
held by claims are bounded by the number of ``put``/``delete`` calls in progress.
"""

from __future__ import annotations

import builtins
import logging
import pathlib
import sqlite3
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import TypeVar

import trio

from storage.api import MetadataStore, StorageError, VersionConflictError, Versioned
from storage.worker import run_in_worker

log = logging.getLogger(__name__)

T = TypeVar("T")

DEFAULT_FLUSH_INTERVAL_S = 0.05
DEFAULT_FLUSH_THRESHOLD = 1024
DEFAULT_MAX_PENDING = 100_000
DEFAULT_BUSY_TIMEOUT_S = 10.0

_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS metadata ("
    " key TEXT PRIMARY KEY NOT NULL, value BLOB NOT NULL, version INTEGER NOT NULL"
    ") WITHOUT ROWID"
)
_UPSERT = (
    "INSERT INTO metadata (key, value, version) VALUES (?, ?, ?)"
    " ON CONFLICT (key) DO UPDATE SET value = excluded.value, version = excluded.version"
)
# a coalesced batch adds its count of writes to whatever version the row has
_UPSERT_ADD = (
    "INSERT INTO metadata (key, value, version) VALUES (?, ?, ?)"
    " ON CONFLICT (key) DO UPDATE SET value = excluded.value,"
    " version = metadata.version + excluded.version"
)


@dataclass(frozen=True, slots=True)
class _Pending:
    """The latest coalesced value of a key and how many coalesced writes it stands for."""

    value: bytes
    count: int


def _merge(older: _Pending | None, newer: _Pending) -> _Pending:
    """The pending writes ``older`` followed by ``newer``."""
    return newer if older is None else _Pending(newer.value, older.count + newer.count)


@dataclass(slots=True, eq=False)
class _Claim:
    """A ``put``/``delete`` of one key, from its call to its end (see the module docstring).

    ``newer``: the coalesced writes of the key made after the call (and before the
    key's next claim), which the ``put``/``delete`` must not supersede.
    """

    newer: _Pending | None = None


def _prefix_upper_bound(prefix: str) -> str | None:
    """The smallest string greater than every string starting with ``prefix`` (None: no bound).

    SQLite compares TEXT as UTF-8 bytes, which orders like code points.
    """
    chars = list(prefix)
    while chars:
        code = ord(chars.pop()) + 1
        if 0xD800 <= code <= 0xDFFF:
            code = 0xE000
        if code <= 0x10FFFF:
            return "".join(chars) + chr(code)
    return None


class _Database:
    """The blocking side: one SQLite connection, used from one worker thread at a time."""

    def __init__(self, path: pathlib.Path, busy_timeout_s: float) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.conn = sqlite3.connect(
            str(path), timeout=busy_timeout_s, isolation_level=None, check_same_thread=False
        )
        try:
            self.conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout_s * 1000)}")
            mode = self.conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                raise StorageError(f"{path}: SQLite refused WAL mode (got {mode!r})")
            self.conn.execute("PRAGMA synchronous = FULL")
            self.conn.execute(_SCHEMA)
        except BaseException:
            self.conn.close()
            raise

    def _version(self, key: str) -> int:
        row = self.conn.execute("SELECT version FROM metadata WHERE key = ?", (key,)).fetchone()
        return int(row[0]) if row else 0

    def _write(self, body: Callable[[], T]) -> T:
        self.conn.execute("BEGIN IMMEDIATE")
        try:
            result = body()
        except BaseException:
            self.conn.execute("ROLLBACK")
            raise
        self.conn.execute("COMMIT")
        return result

    def get(self, key: str) -> Versioned | None:
        row = self.conn.execute(
            "SELECT value, version FROM metadata WHERE key = ?", (key,)
        ).fetchone()
        return Versioned(bytes(row[0]), int(row[1])) if row else None

    def list(self, prefix: str) -> builtins.list[tuple[str, Versioned]]:
        upper = _prefix_upper_bound(prefix)
        if upper is None:
            cursor = self.conn.execute(
                "SELECT key, value, version FROM metadata WHERE key >= ? ORDER BY key", (prefix,)
            )
        else:
            cursor = self.conn.execute(
                "SELECT key, value, version FROM metadata WHERE key >= ? AND key < ?"
                " ORDER BY key",
                (prefix, upper),
            )
        return [
            (key, Versioned(bytes(value), int(version)))
            for key, value, version in cursor
            if key.startswith(prefix)
        ]

    def put(self, key: str, value: bytes, expected: int | None, pending: int) -> int:
        def body() -> int:
            actual = self._version(key) + pending
            if expected is not None and expected != actual:
                raise VersionConflictError(key, expected, actual or None)
            self.conn.execute(_UPSERT, (key, value, actual + 1))
            return actual + 1

        return self._write(body)

    def delete(self, key: str, expected: int | None, pending: int) -> bool:
        def body() -> bool:
            actual = self._version(key) + pending
            if expected is not None and expected != actual:
                raise VersionConflictError(key, expected, actual or None)
            self.conn.execute("DELETE FROM metadata WHERE key = ?", (key,))
            return actual > 0

        return self._write(body)

    def write_batch(self, batch: Iterable[tuple[str, _Pending]]) -> None:
        rows = [(key, p.value, p.count) for key, p in batch]
        self._write(lambda: self.conn.executemany(_UPSERT_ADD, rows))

    def close(self) -> None:
        self.conn.close()


class SqliteMetadataStore(MetadataStore):
    """The :class:`~storage.api.MetadataStore` on a SQLite file; open it with
    :func:`open_sqlite_metadata`, which runs its background flusher.

    ``write_transactions`` counts committed write transactions (puts, deletes
    and flushes); ``flush_transactions`` counts the flushes of coalesced writes.
    """

    def __init__(
        self,
        db: _Database,
        *,
        flush_interval_s: float = DEFAULT_FLUSH_INTERVAL_S,
        flush_threshold: int = DEFAULT_FLUSH_THRESHOLD,
        max_pending: int = DEFAULT_MAX_PENDING,
    ) -> None:
        if flush_interval_s <= 0 or flush_threshold < 1 or max_pending < flush_threshold:
            raise ValueError("need flush_interval_s > 0 and 1 <= flush_threshold <= max_pending")
        self._db = db
        self._limiter = trio.CapacityLimiter(1)
        self._lock = trio.StrictFIFOLock()  # the write order of a key relies on FIFO
        #: coalesced writes older than every claim of their key: what a flush writes
        self._pending: dict[str, _Pending] = {}
        #: put/delete calls in progress, per key, in call order
        self._claims: dict[str, list[_Claim]] = {}
        self._flush_interval_s = flush_interval_s
        self._flush_threshold = flush_threshold
        self._max_pending = max_pending
        self._have_pending = trio.Event()
        self._urgent = trio.Event()
        self._closed = False
        self.write_transactions = 0
        self.flush_transactions = 0

    @classmethod
    async def open(
        cls,
        path: pathlib.Path,
        *,
        busy_timeout_s: float = DEFAULT_BUSY_TIMEOUT_S,
        flush_interval_s: float = DEFAULT_FLUSH_INTERVAL_S,
        flush_threshold: int = DEFAULT_FLUSH_THRESHOLD,
        max_pending: int = DEFAULT_MAX_PENDING,
    ) -> SqliteMetadataStore:
        """Open (creating if needed) the database; the caller must run :meth:`run_flusher`."""
        db = await cls._to_thread_unlocked(lambda: _Database(path, busy_timeout_s))
        return cls(
            db,
            flush_interval_s=flush_interval_s,
            flush_threshold=flush_threshold,
            max_pending=max_pending,
        )

    @staticmethod
    async def _to_thread_unlocked(fn: Callable[[], T]) -> T:
        try:
            return await trio.to_thread.run_sync(fn)
        except sqlite3.Error as exc:
            raise StorageError(f"sqlite: {exc}") from exc

    async def _call(self, fn: Callable[[], T]) -> T:
        """Run ``fn`` in the worker thread; the caller holds ``self._lock``."""
        try:
            return await run_in_worker(fn, self._limiter)
        except sqlite3.Error as exc:
            raise StorageError(f"sqlite: {exc}") from exc

    def _check_open(self) -> None:
        if self._closed:
            raise StorageError("metadata store is closed")

    def _wake_flusher(self) -> None:
        self._have_pending.set()
        if len(self._pending) >= self._flush_threshold:
            self._urgent.set()

    def _unclaim(self, key: str, claim: _Claim, applied: bool) -> None:
        """End ``claim``: its put/delete committed (``applied``), failed or was cancelled."""
        claims = self._claims[key]
        i = next(n for n, c in enumerate(claims) if c is claim)
        del claims[i]
        if not claims:
            del self._claims[key]
        newer = claim.newer
        if applied:
            # the FIFO lock runs a key's claims in call order: the earlier ones have ended
            assert i == 0, "a put/delete ran before an earlier one of its key"
            self._pending.pop(key, None)  # superseded
            if newer is not None:
                self._pending[key] = newer
                self._wake_flusher()
        elif newer is not None:
            if i > 0:
                before = claims[i - 1]
                before.newer = _merge(before.newer, newer)
            else:
                self._pending[key] = _merge(self._pending.get(key), newer)
                self._wake_flusher()

    async def _claimed(self, key: str, write: Callable[[int], T]) -> T:
        """Run ``write(pending count)`` in the worker thread, in ``key``'s write order.

        The claim is made before the first checkpoint, so the call's place in the
        order is the moment it was made.
        """
        claim = _Claim()
        self._claims.setdefault(key, []).append(claim)
        applied = False
        try:
            async with self._lock:
                older = self._pending.get(key)
                count = older.count if older else 0
                result = await self._call(lambda: write(count))
                applied = True
                self.write_transactions += 1
        finally:
            self._unclaim(key, claim, applied)
        return result

    def _overlay(self, key: str) -> _Pending | None:
        """All coalesced writes of ``key`` not in the database yet, claimed ones included."""
        merged = self._pending.get(key)
        claims = self._claims.get(key)
        if claims:
            for claim in claims:
                if claim.newer is not None:
                    merged = _merge(merged, claim.newer)
        return merged

    async def get(self, key: str) -> Versioned | None:
        self._check_open()
        async with self._lock:
            stored = await self._call(lambda: self._db.get(key))
            pending = self._overlay(key)
        if pending is None:
            return stored
        return Versioned(pending.value, (stored.version if stored else 0) + pending.count)

    async def put(self, key: str, value: bytes, expected_version: int | None = None) -> int:
        self._check_open()
        data = bytes(value)
        return await self._claimed(
            key, lambda older: self._db.put(key, data, expected_version, older)
        )

    async def delete(self, key: str, expected_version: int | None = None) -> bool:
        self._check_open()
        return await self._claimed(
            key, lambda older: self._db.delete(key, expected_version, older)
        )

    def put_coalesced(self, key: str, value: bytes) -> None:
        """Record ``value`` as the latest for ``key``; it counts as one write (version + 1).

        It is newer than every ``put``/``delete`` of ``key`` called before it, even
        one still waiting to run.  Raises :class:`~storage.api.StorageError` if
        ``max_pending`` distinct keys are already waiting (the database is not
        keeping up).
        """
        self._check_open()
        claims = self._claims.get(key)
        if claims:
            newest = claims[-1]
            count = newest.newer.count if newest.newer else 0
            newest.newer = _Pending(bytes(value), count + 1)
            return
        current = self._pending.get(key)
        if current is None and len(self._pending) >= self._max_pending:
            raise StorageError(f"{len(self._pending)} coalesced writes pending; database stalled?")
        self._pending[key] = _Pending(bytes(value), (current.count if current else 0) + 1)
        self._wake_flusher()

    async def list(self, prefix: str) -> builtins.list[tuple[str, Versioned]]:
        self._check_open()
        async with self._lock:
            rows = dict(await self._call(lambda: self._db.list(prefix)))
            keys = [k for k in self._pending if k.startswith(prefix)]
            keys += [k for k in self._claims if k.startswith(prefix) and k not in self._pending]
            for key in keys:
                pending = self._overlay(key)
                if pending is not None:
                    stored = rows.get(key)
                    rows[key] = Versioned(
                        pending.value, (stored.version if stored else 0) + pending.count
                    )
        return sorted(rows.items())

    async def _flush_pending(self) -> None:
        async with self._lock:
            if not self._pending:
                await trio.lowlevel.checkpoint()
                return
            batch, self._pending = self._pending, {}
            try:
                await self._call(lambda: self._db.write_batch(batch.items()))
            except BaseException:
                # put the batch back under any newer coalesced writes
                for key, older in batch.items():
                    newer = self._pending.get(key)
                    self._pending[key] = older if newer is None else _merge(older, newer)
                raise
            self.write_transactions += 1
            self.flush_transactions += 1

    async def flush(self) -> None:
        """Write every coalesced write made so far in one transaction, and wait for it."""
        self._check_open()
        await self._flush_pending()

    async def run_flusher(
        self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Background task: flush coalesced writes every ``flush_interval_s`` (or sooner)."""
        task_status.started()
        while not self._closed:
            if not self._pending:
                self._have_pending = trio.Event()
                await self._have_pending.wait()
            with trio.move_on_after(self._flush_interval_s):
                self._urgent = trio.Event()
                if len(self._pending) < self._flush_threshold:
                    await self._urgent.wait()
            if self._closed:
                return
            try:
                await self._flush_pending()
            except StorageError as exc:
                log.warning("flushing %d coalesced metadata writes failed, will retry: %s",
                            len(self._pending), exc)
                await trio.sleep(self._flush_interval_s)

    async def close(self) -> None:
        """Flush pending coalesced writes and close the database (idempotent)."""
        if self._closed:
            await trio.lowlevel.checkpoint()
            return
        self._closed = True  # from here on put_coalesced refuses, so nothing is lost
        with trio.CancelScope(shield=True):
            try:
                await self._flush_pending()
            finally:
                self._have_pending.set()
                self._urgent.set()
                async with self._lock:
                    await self._call(self._db.close)


@asynccontextmanager
async def open_sqlite_metadata(
    path: pathlib.Path,
    *,
    busy_timeout_s: float = DEFAULT_BUSY_TIMEOUT_S,
    flush_interval_s: float = DEFAULT_FLUSH_INTERVAL_S,
    flush_threshold: int = DEFAULT_FLUSH_THRESHOLD,
    max_pending: int = DEFAULT_MAX_PENDING,
) -> AsyncIterator[SqliteMetadataStore]:
    """Open the SQLite metadata store at ``path`` with its background flusher.

    Leaving the block flushes pending coalesced writes and closes the file.
    """
    store = await SqliteMetadataStore.open(
        path,
        busy_timeout_s=busy_timeout_s,
        flush_interval_s=flush_interval_s,
        flush_threshold=flush_threshold,
        max_pending=max_pending,
    )
    body_error: BaseException | None = None
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(store.run_flusher)
            try:
                yield store
            except BaseException as exc:
                # re-raised below as is, not wrapped in the nursery's ExceptionGroup
                body_error = exc
            finally:
                nursery.cancel_scope.cancel()
    finally:
        await store.close()
    if body_error is not None:
        raise body_error
