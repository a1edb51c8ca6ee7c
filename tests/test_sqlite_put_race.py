"""Write order of one key in the SQLite metadata store: puts, deletes and coalesced writes.

A review reported that ``put`` read the coalesced writes it supersedes only once it
held the store's lock, so a ``put_coalesced`` made while the ``put`` waited was
taken as older and dropped.  These tests make a ``put``/``delete`` wait
deterministically (a ``get`` holds the lock, stuck in the worker thread), write
meanwhile, and check what a read returns, what the file holds and what a reopened
store returns: the write made last (in call order) wins, whichever API made it.
"""

from __future__ import annotations

import pathlib
import sqlite3
import tempfile
import threading
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass

import pytest
import trio
import trio.testing
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from storage.api import VersionConflictError, Versioned
from storage.sqlite import SqliteMetadataStore, open_sqlite_metadata


@pytest.fixture
def db_path(tmp_path: pathlib.Path) -> pathlib.Path:
    return tmp_path / "metadata.sqlite"


def _raw_rows(path: pathlib.Path) -> dict[str, tuple[bytes, int]]:
    with sqlite3.connect(path) as conn:
        return {k: (v, n) for k, v, n in conn.execute("SELECT key, value, version FROM metadata")}


async def _rows(path: pathlib.Path) -> dict[str, tuple[bytes, int]]:
    return await trio.to_thread.run_sync(_raw_rows, path)


async def _reopened(path: pathlib.Path, key: str) -> Versioned | None:
    async with open_sqlite_metadata(path) as store:
        return await store.get(key)


def _hold(monkeypatch: pytest.MonkeyPatch, store: SqliteMetadataStore,
          method: str) -> threading.Event:
    """Make the database's ``method`` wait in the worker thread until the event is set."""
    release = threading.Event()
    db = store._db
    original = getattr(db, method)

    def held(*args: object) -> object:
        assert release.wait(30)
        return original(*args)

    monkeypatch.setattr(db, method, held)
    return release


@asynccontextmanager
async def _lock_held(
    monkeypatch: pytest.MonkeyPatch, store: SqliteMetadataStore
) -> AsyncIterator[trio.Nursery]:
    """A ``get`` holds the store's lock (stuck in the worker thread) until the block ends.

    Calls started in the yielded nursery queue behind it; the block ends once they are done.
    """
    release = _hold(monkeypatch, store, "get")
    async with trio.open_nursery() as nursery:
        nursery.start_soon(store.get, "unrelated")
        await trio.testing.wait_all_tasks_blocked()
        try:
            yield nursery
        finally:
            await trio.testing.wait_all_tasks_blocked()
            release.set()  # later gets pass straight through


async def _started(nursery: trio.Nursery, fn: Callable[[], Awaitable[object]]) -> list[object]:
    """Start ``fn`` in ``nursery`` and let it run until it waits.

    Its result (or the exception it raised) lands in the list returned.
    """
    out: list[object] = []

    async def run() -> None:
        try:
            out.append(await fn())
        except Exception as exc:  # handed to the test
            out.append(exc)

    nursery.start_soon(run)
    await trio.testing.wait_all_tasks_blocked()
    return out


async def test_coalesced_write_made_while_put_waits_for_the_lock_wins(
    db_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with open_sqlite_metadata(db_path, flush_interval_s=3600) as store:
        await store.put("k", b"base")
        async with _lock_held(monkeypatch, store) as nursery:
            put = await _started(nursery, lambda: store.put("k", b"put"))
            store.put_coalesced("k", b"coalesced")  # made after the put: newer
            read = await _started(nursery, lambda: store.get("k"))  # queued behind the put
        assert put == [2]
        assert read == [Versioned(b"coalesced", 3)]
        assert await store.get("k") == Versioned(b"coalesced", 3)
        assert await _rows(db_path) == {"k": (b"put", 2)}
        await store.flush()
        assert await _rows(db_path) == {"k": (b"coalesced", 3)}
    assert await _reopened(db_path, "k") == Versioned(b"coalesced", 3)


async def test_coalesced_write_older_than_a_waiting_put_is_superseded(
    db_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with open_sqlite_metadata(db_path, flush_interval_s=3600) as store:
        store.put_coalesced("k", b"older")
        async with _lock_held(monkeypatch, store) as nursery:
            put = await _started(nursery, lambda: store.put("k", b"put"))
        assert put == [2]
        assert await store.get("k") == Versioned(b"put", 2)
    assert await _rows(db_path) == {"k": (b"put", 2)}


async def test_flush_queued_before_a_put_never_stores_a_newer_write_under_it(
    db_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The flush takes its batch after the put was called; the newer write must stay on top."""
    async with open_sqlite_metadata(db_path, flush_interval_s=3600) as store:
        store.put_coalesced("k", b"older")
        async with _lock_held(monkeypatch, store) as nursery:
            await _started(nursery, store.flush)
            put = await _started(nursery, lambda: store.put("k", b"put"))
            store.put_coalesced("k", b"newer")
            store.put_coalesced("other", b"x")
        assert put == [2]
        assert await store.get("k") == Versioned(b"newer", 3)
        await store.flush()
        assert await _rows(db_path) == {"k": (b"newer", 3), "other": (b"x", 1)}
    assert await _reopened(db_path, "k") == Versioned(b"newer", 3)


async def test_flush_returns_with_older_writes_stored_while_the_put_runs(
    db_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with open_sqlite_metadata(db_path, flush_interval_s=3600) as store:
        store.put_coalesced("k", b"older")
        put_release = _hold(monkeypatch, store, "put")
        async with trio.open_nursery() as nursery:
            get_release = _hold(monkeypatch, store, "get")
            nursery.start_soon(store.get, "unrelated")
            await trio.testing.wait_all_tasks_blocked()
            flushed = await _started(nursery, store.flush)
            put = await _started(nursery, lambda: store.put("k", b"put"))
            store.put_coalesced("k", b"newer")
            get_release.set()
            with trio.fail_after(30):
                while not flushed:  # noqa: ASYNC110 - the flush ends in the worker thread
                    await trio.sleep(0.001)
            # the put is stuck in its worker thread; the flush stored what came before it
            assert await _rows(db_path) == {"k": (b"older", 1)}
            put_release.set()
        assert put == [2]
        assert await store.get("k") == Versioned(b"newer", 3)


async def test_delete_waiting_for_the_lock_keeps_a_newer_coalesced_write(
    db_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with open_sqlite_metadata(db_path, flush_interval_s=3600) as store:
        await store.put("k", b"v")
        store.put_coalesced("k", b"older")
        async with _lock_held(monkeypatch, store) as nursery:
            deleted = await _started(nursery, lambda: store.delete("k"))
            store.put_coalesced("k", b"newer")
        assert deleted == [True]
        assert await store.get("k") == Versioned(b"newer", 1)
        assert await store.list("") == [("k", Versioned(b"newer", 1))]
    assert await _reopened(db_path, "k") == Versioned(b"newer", 1)


async def test_cas_put_is_checked_in_its_place_in_the_write_order(
    db_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with open_sqlite_metadata(db_path, flush_interval_s=3600) as store:
        store.put_coalesced("k", b"1")
        async with _lock_held(monkeypatch, store) as nursery:
            # version 1 is the version when the put is made; the write after it is newer
            put = await _started(nursery, lambda: store.put("k", b"cas", expected_version=1))
            store.put_coalesced("k", b"3")
        assert put == [2]
        assert await store.get("k") == Versioned(b"3", 3)
        async with _lock_held(monkeypatch, store) as nursery:
            stale = await _started(nursery, lambda: store.put("k", b"x", expected_version=1))
            store.put_coalesced("k", b"4")
        [error] = stale
        assert isinstance(error, VersionConflictError)
        assert (error.expected, error.actual) == (1, 3)
        assert await store.get("k") == Versioned(b"4", 4)
    assert await _reopened(db_path, "k") == Versioned(b"4", 4)


async def test_failed_put_keeps_the_coalesced_writes_around_it(
    db_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with open_sqlite_metadata(db_path, flush_interval_s=3600) as store:
        store.put_coalesced("k", b"1")
        async with _lock_held(monkeypatch, store) as nursery:
            stale = await _started(nursery, lambda: store.put("k", b"x", expected_version=7))
            store.put_coalesced("k", b"2")
        [error] = stale
        assert isinstance(error, VersionConflictError)
        assert (error.expected, error.actual) == (7, 1)
        assert await store.get("k") == Versioned(b"2", 2)
        await store.flush()
        assert await _rows(db_path) == {"k": (b"2", 2)}


async def test_put_cancelled_while_waiting_keeps_the_coalesced_writes(
    db_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with open_sqlite_metadata(db_path, flush_interval_s=3600) as store:
        store.put_coalesced("k", b"1")
        waiting = trio.CancelScope()

        async def put() -> None:
            with waiting:
                await store.put("k", b"never")

        async with _lock_held(monkeypatch, store) as nursery:
            nursery.start_soon(put)
            await trio.testing.wait_all_tasks_blocked()
            store.put_coalesced("k", b"2")
            waiting.cancel()
        assert waiting.cancelled_caught
        assert await store.get("k") == Versioned(b"2", 2)
        await store.flush()
        assert await _rows(db_path) == {"k": (b"2", 2)}


async def test_puts_and_coalesced_writes_interleaved_while_waiting(
    db_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with open_sqlite_metadata(db_path, flush_interval_s=3600) as store:
        async with _lock_held(monkeypatch, store) as nursery:
            first = await _started(nursery, lambda: store.put("k", b"p1"))
            store.put_coalesced("k", b"c1")
            second = await _started(nursery, lambda: store.put("k", b"p2"))
            store.put_coalesced("k", b"c2")
            store.put_coalesced("k", b"c3")
            read = await _started(nursery, lambda: store.get("k"))  # queued after both
        assert (first, second) == ([1], [3])
        assert read == [Versioned(b"c3", 5)]
        assert await store.get("k") == Versioned(b"c3", 5)
    assert await _rows(db_path) == {"k": (b"c3", 5)}  # closing flushed
    assert await _reopened(db_path, "k") == Versioned(b"c3", 5)


# -- a model: any interleaving of calls ends as if they ran one by one in call order ----------


@dataclass(frozen=True)
class _Op:
    kind: str  # "put" | "delete" | "coalesced" | "flush"
    key: str
    value: bytes


_OP = st.builds(
    _Op,
    st.sampled_from(["put", "delete", "coalesced", "coalesced", "flush"]),
    st.sampled_from(["a", "b"]),
    st.sampled_from([b"0", b"1", b"2"]),
)


def _model(ops: list[_Op]) -> dict[str, Versioned]:
    state: dict[str, Versioned] = {}
    for op in ops:
        current = state.get(op.key)
        version = current.version if current else 0
        if op.kind in ("put", "coalesced"):
            state[op.key] = Versioned(op.value, version + 1)
        elif op.kind == "delete":
            state.pop(op.key, None)
    return state


class _LockHolder:
    """Holds the store's lock from a helper task, between :meth:`hold` and :meth:`release`."""

    def __init__(self, nursery: trio.Nursery, store: SqliteMetadataStore) -> None:
        self._nursery, self._store = nursery, store
        self._done: trio.Event | None = None

    async def hold(self) -> None:
        if self._done is not None:
            return
        done = self._done = trio.Event()

        async def holder() -> None:
            async with self._store._lock:
                await done.wait()

        self._nursery.start_soon(holder)
        await trio.testing.wait_all_tasks_blocked()

    def release(self) -> None:
        if self._done is not None:
            self._done.set()
            self._done = None


async def _run_interleaved(path: pathlib.Path, ops: list[tuple[_Op, bool]]) -> None:
    """Make the calls in order; ``True`` beside a call: the lock is held (it queues)."""
    async with open_sqlite_metadata(path, flush_interval_s=3600, flush_threshold=2) as store:
        async with trio.open_nursery() as nursery:
            holder = _LockHolder(nursery, store)
            for op, held in ops:
                if held:
                    await holder.hold()
                else:
                    holder.release()
                if op.kind == "coalesced":
                    store.put_coalesced(op.key, op.value)
                    continue
                if op.kind == "put":
                    nursery.start_soon(store.put, op.key, op.value)
                elif op.kind == "delete":
                    nursery.start_soon(store.delete, op.key)
                else:
                    nursery.start_soon(store.flush)
                await trio.testing.wait_all_tasks_blocked()  # it is called (and may wait)
            holder.release()
        expected = _model([op for op, _ in ops])
        assert {k: await store.get(k) for k in "ab"} == {k: expected.get(k) for k in "ab"}
        assert await store.list("") == sorted(expected.items())
    assert await _rows(path) == {k: (v.value, v.version) for k, v in expected.items()}


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops=st.lists(st.tuples(_OP, st.booleans()), min_size=1, max_size=12))
async def test_any_interleaving_ends_as_the_calls_in_order(ops: list[tuple[_Op, bool]]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        await _run_interleaved(pathlib.Path(tmp) / "m.sqlite", ops)
