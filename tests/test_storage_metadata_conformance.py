"""One conformance suite for the MetadataStore contract, run against every backend.

A backend joins by adding a :class:`Backend` to ``BACKENDS``: a way to open the
store (reopening the same data when ``persistent``) and, optionally, a way to
count the write transactions it made (for the coalescing test).
"""

from __future__ import annotations

import pathlib
import sqlite3
import tempfile
import threading
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass

import pytest
import trio
import trio.testing
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from storage.api import MetadataStore, StorageError, VersionConflictError, Versioned
from storage.memory import MemoryMetadataStore
from storage.sqlite import SqliteMetadataStore, open_sqlite_metadata

Opener = Callable[[], AbstractAsyncContextManager[MetadataStore]]


@dataclass
class Backend:
    name: str
    open: Opener
    persistent: bool
    transactions: Callable[[MetadataStore], int] | None


@asynccontextmanager
async def _open_memory() -> AsyncIterator[MetadataStore]:
    store = MemoryMetadataStore()
    try:
        yield store
    finally:
        await store.close()


def _memory_backend(tmp_path: pathlib.Path) -> Backend:
    return Backend("memory", _open_memory, persistent=False, transactions=None)


def _sqlite_transactions(store: MetadataStore) -> int:
    assert isinstance(store, SqliteMetadataStore)
    return store.write_transactions


def _sqlite_backend(tmp_path: pathlib.Path) -> Backend:
    path = tmp_path / "meta" / "metadata.sqlite"
    return Backend(
        "sqlite", lambda: open_sqlite_metadata(path), persistent=True,
        transactions=_sqlite_transactions,
    )


BACKENDS = {"memory": _memory_backend, "sqlite": _sqlite_backend}


@pytest.fixture(params=sorted(BACKENDS))
def backend(request: pytest.FixtureRequest, tmp_path: pathlib.Path) -> Backend:
    return BACKENDS[request.param](tmp_path)


@pytest.fixture
async def store(backend: Backend) -> AsyncIterator[MetadataStore]:
    async with backend.open() as opened:
        yield opened


# -- versions and compare-and-set -------------------------------------------------------------


async def test_missing_key(store: MetadataStore) -> None:
    assert await store.get("nope") is None
    assert await store.delete("nope") is False
    assert await store.list("") == []


async def test_versions_start_at_one_and_grow_by_one(store: MetadataStore) -> None:
    assert await store.put("k", b"a") == 1
    assert await store.put("k", b"b") == 2
    assert await store.put("k", b"c") == 3
    assert await store.get("k") == Versioned(b"c", 3)


async def test_cas_create_only_when_absent(store: MetadataStore) -> None:
    assert await store.put("k", b"a", expected_version=0) == 1
    with pytest.raises(VersionConflictError) as info:
        await store.put("k", b"b", expected_version=0)
    assert (info.value.key, info.value.expected, info.value.actual) == ("k", 0, 1)
    assert await store.get("k") == Versioned(b"a", 1)


async def test_cas_on_version(store: MetadataStore) -> None:
    await store.put("k", b"a")
    assert await store.put("k", b"b", expected_version=1) == 2
    with pytest.raises(VersionConflictError) as info:
        await store.put("k", b"c", expected_version=1)
    assert info.value.actual == 2
    assert await store.get("k") == Versioned(b"b", 2)


async def test_cas_on_missing_key_with_version(store: MetadataStore) -> None:
    with pytest.raises(VersionConflictError) as info:
        await store.put("k", b"a", expected_version=3)
    assert info.value.actual is None
    assert await store.get("k") is None


async def test_delete(store: MetadataStore) -> None:
    await store.put("k", b"a")
    await store.put("k", b"b")
    with pytest.raises(VersionConflictError):
        await store.delete("k", expected_version=1)
    assert await store.get("k") == Versioned(b"b", 2)
    assert await store.delete("k", expected_version=2) is True
    assert await store.get("k") is None
    assert await store.delete("k") is False
    # a deleted key starts again at version 1
    assert await store.put("k", b"c", expected_version=0) == 1


async def test_delete_expecting_absent(store: MetadataStore) -> None:
    assert await store.delete("k", expected_version=0) is False
    await store.put("k", b"a")
    with pytest.raises(VersionConflictError):
        await store.delete("k", expected_version=0)


async def test_binary_safe_values(store: MetadataStore) -> None:
    values = [b"", b"\x00", bytes(range(256)), b"\xff\xfe\x00\x00" * 1000]
    for i, value in enumerate(values):
        await store.put(f"bin/{i}", value)
    store.put_coalesced("bin/c", b"\x00\xff\x00")
    for i, value in enumerate(values):
        got = await store.get(f"bin/{i}")
        assert got is not None and got.value == value and isinstance(got.value, bytes)
    await store.flush()
    got = await store.get("bin/c")
    assert got == Versioned(b"\x00\xff\x00", 1)


async def test_put_accepts_bytes_like(store: MetadataStore) -> None:
    buf = bytearray(b"abc")
    await store.put("k", bytes(memoryview(buf)))
    buf[0] = ord("z")  # later changes to the caller's buffer do not leak in
    assert await store.get("k") == Versioned(b"abc", 1)


async def test_unicode_keys(store: MetadataStore) -> None:
    await store.put("t/é", b"1")
    await store.put("t/\U0001f600", b"2")
    await store.put("t/z", b"3")
    assert [k for k, _ in await store.list("t/")] == sorted(["t/é", "t/\U0001f600", "t/z"])
    assert await store.get("t/\U0001f600") == Versioned(b"2", 1)


# -- prefix listing ----------------------------------------------------------------------------


async def test_list_prefix_ordering_and_isolation(store: MetadataStore) -> None:
    for key in ["a/2", "ab/1", "a/1", "a", "a/1/x", "b/1", "a0", "a/10"]:
        await store.put(key, key.encode())
    listed = await store.list("a/")
    assert [k for k, _ in listed] == ["a/1", "a/1/x", "a/10", "a/2"]
    assert all(v.value == k.encode() and v.version == 1 for k, v in listed)
    assert [k for k, _ in await store.list("ab/")] == ["ab/1"]
    assert [k for k, _ in await store.list("a")] == ["a", "a/1", "a/1/x", "a/10", "a/2",
                                                     "a0", "ab/1"]
    assert len(await store.list("")) == 8
    assert await store.list("c") == []


async def test_list_prefix_with_highest_code_point(store: MetadataStore) -> None:
    await store.put("x\U0010ffff", b"1")
    await store.put("x\U0010ffffy", b"2")
    await store.put("y", b"3")
    assert [k for k, _ in await store.list("x\U0010ffff")] == ["x\U0010ffff", "x\U0010ffffy"]


# -- coalesced writes --------------------------------------------------------------------------


async def test_coalesced_visible_at_once(store: MetadataStore) -> None:
    store.put_coalesced("cur/a", b"1")
    assert await store.get("cur/a") == Versioned(b"1", 1)
    store.put_coalesced("cur/a", b"2")
    store.put_coalesced("cur/b", b"x")
    assert await store.get("cur/a") == Versioned(b"2", 2)
    assert await store.list("cur/") == [("cur/a", Versioned(b"2", 2)),
                                        ("cur/b", Versioned(b"x", 1))]
    await store.flush()
    assert await store.list("cur/") == [("cur/a", Versioned(b"2", 2)),
                                        ("cur/b", Versioned(b"x", 1))]


async def test_coalesced_write_counts_as_a_write_for_cas(store: MetadataStore) -> None:
    """The rule: each coalesced write bumps the version by one at once, like a put."""
    await store.put("cur", b"0")
    store.put_coalesced("cur", b"1")
    store.put_coalesced("cur", b"2")
    with pytest.raises(VersionConflictError) as info:
        await store.put("cur", b"stale", expected_version=1)
    assert info.value.actual == 3
    assert await store.put("cur", b"3", expected_version=3) == 4
    await store.flush()  # the flush must not resurrect the older coalesced value
    assert await store.get("cur") == Versioned(b"3", 4)
    store.put_coalesced("cur", b"4")
    await store.flush()
    assert await store.get("cur") == Versioned(b"4", 5)
    assert await store.put("cur", b"5", expected_version=5) == 6


async def test_coalesced_then_delete(store: MetadataStore) -> None:
    store.put_coalesced("cur", b"1")
    with pytest.raises(VersionConflictError):
        await store.delete("cur", expected_version=0)
    assert await store.delete("cur", expected_version=1) is True
    assert await store.get("cur") is None
    await store.flush()
    assert await store.get("cur") is None
    assert await store.list("") == []
    store.put_coalesced("cur", b"2")
    await store.flush()
    assert await store.get("cur") == Versioned(b"2", 1)


async def test_coalesced_ack_storm(
    backend: Backend, autojump_clock: trio.testing.MockClock
) -> None:
    """10,000 coalesced writes on 10 keys, spread over 100 ms: only a handful of transactions."""
    async with backend.open() as store:
        before = backend.transactions(store) if backend.transactions else 0
        for i in range(10_000):
            store.put_coalesced(f"cursor/{i % 10}", str(i).encode())
            if i % 100 == 99:
                await trio.sleep(0.001)
        await store.flush()
        if backend.transactions is not None:
            made = backend.transactions(store) - before
            assert 1 <= made <= 10
        listed = await store.list("cursor/")
        assert [k for k, _ in listed] == [f"cursor/{k}" for k in range(10)]
        for key, stored in listed:
            k = int(key.rsplit("/", 1)[1])
            assert stored == Versioned(str(9990 + k).encode(), 1000)


# -- concurrency -------------------------------------------------------------------------------


async def test_concurrent_cas_increments(store: MetadataStore) -> None:
    tasks, increments = 8, 5

    async def incrementer() -> None:
        done = 0
        while done < increments:
            current = await store.get("counter")
            value = int(current.value) if current else 0
            try:
                await store.put("counter", str(value + 1).encode(),
                                expected_version=current.version if current else 0)
            except VersionConflictError:
                continue
            done += 1

    async with trio.open_nursery() as nursery:
        for _ in range(tasks):
            nursery.start_soon(incrementer)
    assert await store.get("counter") == Versioned(str(tasks * increments).encode(),
                                                   tasks * increments)


# -- differential: random operations against the reference model ------------------------------

_KEYS = st.sampled_from(["a", "a/b", "a/c", "ab", "b/x"])
_VALUES = st.binary(max_size=8)
_OPS = st.lists(
    st.one_of(
        st.tuples(st.just("put"), _KEYS, _VALUES, st.sampled_from([None, 0, 1, 2, 3, 4])),
        st.tuples(st.just("delete"), _KEYS, st.just(b""), st.sampled_from([None, 0, 1, 2, 3])),
        st.tuples(st.just("coalesce"), _KEYS, _VALUES, st.none()),
        st.tuples(st.just("flush"), _KEYS, st.just(b""), st.none()),
        st.tuples(st.just("list"), st.sampled_from(["", "a", "a/", "b"]), st.just(b""), st.none()),
    ),
    max_size=20,
)


async def _apply(store: MetadataStore, op: tuple[str, str, bytes, int | None]) -> object:
    kind, key, value, expected = op
    try:
        if kind == "put":
            return await store.put(key, value, expected_version=expected)
        if kind == "delete":
            return await store.delete(key, expected_version=expected)
        if kind == "coalesce":
            store.put_coalesced(key, value)
            return None
        if kind == "flush":
            await store.flush()
            return None
        return await store.list(key)
    except VersionConflictError as exc:
        return ("conflict", exc.expected, exc.actual)


@pytest.mark.parametrize("name", sorted(set(BACKENDS) - {"memory"}))
@settings(max_examples=25, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ops=_OPS)
def test_matches_reference_model(
    name: str, tmp_path: pathlib.Path, ops: list[tuple[str, str, bytes, int | None]]
) -> None:
    async def run() -> None:
        directory = pathlib.Path(await trio.to_thread.run_sync(tempfile.mkdtemp, "", "", tmp_path))
        model = MemoryMetadataStore()
        async with BACKENDS[name](directory).open() as store:
            for op in ops:
                assert await _apply(store, op) == await _apply(model, op), op
                assert await store.list("") == await model.list(""), op
        if BACKENDS[name](directory).persistent:
            async with BACKENDS[name](directory).open() as store:
                assert await store.list("") == await model.list("")

    trio.run(run)


# -- persistence (backends with durable storage) -----------------------------------------------


async def test_persistence_across_reopen(backend: Backend) -> None:
    if not backend.persistent:
        pytest.skip(f"{backend.name} keeps nothing across close")
    async with backend.open() as store:
        await store.put("p/a", b"\x00a")
        await store.put("p/a", b"\x00b")
        await store.put("p/gone", b"x")
        await store.delete("p/gone")
        store.put_coalesced("p/cur", b"7")
        store.put_coalesced("p/cur", b"8")
        # no flush: closing flushes
    async with backend.open() as store:
        assert await store.list("p/") == [("p/a", Versioned(b"\x00b", 2)),
                                          ("p/cur", Versioned(b"8", 2))]
        assert await store.put("p/cur", b"9", expected_version=2) == 3


# -- SQLite specifics --------------------------------------------------------------------------


@pytest.fixture
def db_path(tmp_path: pathlib.Path) -> pathlib.Path:
    return tmp_path / "metadata.sqlite"


def _raw_rows(path: pathlib.Path) -> dict[str, tuple[bytes, int]]:
    with sqlite3.connect(path) as conn:
        return {k: (v, n) for k, v, n in conn.execute("SELECT key, value, version FROM metadata")}


async def test_sqlite_wal_and_schema(db_path: pathlib.Path) -> None:
    async with open_sqlite_metadata(db_path) as store:
        await store.put("k", b"v")
        rows = await trio.to_thread.run_sync(_raw_rows, db_path)
        assert rows == {"k": (b"v", 1)}
    with sqlite3.connect(db_path) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


async def test_sqlite_background_flusher_writes_without_flush(db_path: pathlib.Path) -> None:
    async with open_sqlite_metadata(db_path, flush_interval_s=0.01) as store:
        store.put_coalesced("cur", b"1")
        store.put_coalesced("cur", b"2")
        with trio.fail_after(30):  # a guard, not a speed assertion
            # the flusher commits in a worker thread; nothing to wait on but its counter
            while store.flush_transactions == 0:  # noqa: ASYNC110
                await trio.sleep(0.01)
        rows = await trio.to_thread.run_sync(_raw_rows, db_path)
        assert rows == {"cur": (b"2", 2)}


async def test_sqlite_size_bound_flushes_early(
    db_path: pathlib.Path, autojump_clock: trio.testing.MockClock
) -> None:
    async with open_sqlite_metadata(db_path, flush_interval_s=3600, flush_threshold=5) as store:
        for i in range(5):
            store.put_coalesced(f"cur/{i}", b"x")
        # The flusher commits in a worker thread; nothing to wait on but its counter.  With
        # the autojump clock every idle poll advances virtual time, so the guard is virtual
        # seconds that a slow, loaded machine cannot exhaust (~6 s of real polling) while
        # staying below the 3600 s interval that would also trigger a flush.
        with trio.fail_after(3000):
            while store.flush_transactions == 0:  # noqa: ASYNC110
                await trio.sleep(0.01)
        assert trio.current_time() < 3600
        rows = await trio.to_thread.run_sync(_raw_rows, db_path)
        assert sorted(rows) == [f"cur/{i}" for i in range(5)]


async def test_sqlite_pending_bound(db_path: pathlib.Path) -> None:
    async with open_sqlite_metadata(
        db_path, flush_interval_s=3600, flush_threshold=2, max_pending=3
    ) as store:
        for i in range(3):
            store.put_coalesced(f"cur/{i}", b"x")
        store.put_coalesced("cur/0", b"y")  # an existing key still fits
        with pytest.raises(StorageError):
            store.put_coalesced("cur/new", b"x")
        await store.flush()
        store.put_coalesced("cur/new", b"x")


async def test_sqlite_cas_across_two_openers(db_path: pathlib.Path) -> None:
    """Another process (the users CLI) may open the same file while the server runs."""
    async with open_sqlite_metadata(db_path) as first, open_sqlite_metadata(db_path) as second:
        await first.put("users/a", b"1")
        assert await second.get("users/a") == Versioned(b"1", 1)
        await second.put("users/a", b"2", expected_version=1)
        with pytest.raises(VersionConflictError):
            await first.put("users/a", b"3", expected_version=1)
        assert await first.get("users/a") == Versioned(b"2", 2)


def _hold_in_thread(
    monkeypatch: pytest.MonkeyPatch, store: SqliteMetadataStore, method: str
) -> threading.Event:
    """Make the database's ``method`` wait (in the worker thread) until the event is set."""
    release = threading.Event()
    db = store._db
    original = getattr(db, method)

    def held(*args: object) -> object:
        assert release.wait(30)
        return original(*args)

    monkeypatch.setattr(db, method, held)
    return release


async def test_sqlite_coalesced_writes_during_a_flush_are_kept(
    db_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with open_sqlite_metadata(db_path, flush_interval_s=3600) as store:
        store.put_coalesced("cur", b"1")
        store.put_coalesced("other", b"1")
        release = _hold_in_thread(monkeypatch, store, "write_batch")
        async with trio.open_nursery() as nursery:
            nursery.start_soon(store.flush)
            await trio.testing.wait_all_tasks_blocked()  # the batch is in the worker thread
            store.put_coalesced("cur", b"2")
            store.put_coalesced("cur", b"3")
            release.set()
        assert await trio.to_thread.run_sync(_raw_rows, db_path) == {
            "cur": (b"1", 1), "other": (b"1", 1)}
        assert await store.get("cur") == Versioned(b"3", 3)
        await store.flush()
        assert await trio.to_thread.run_sync(_raw_rows, db_path) == {
            "cur": (b"3", 3), "other": (b"1", 1)}


async def test_sqlite_coalesced_write_during_cas_put_is_newer(
    db_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with open_sqlite_metadata(db_path, flush_interval_s=3600) as store:
        store.put_coalesced("cur", b"1")
        versions: list[int] = []

        async def cas() -> None:
            versions.append(await store.put("cur", b"put", expected_version=1))

        release = _hold_in_thread(monkeypatch, store, "put")
        async with trio.open_nursery() as nursery:
            nursery.start_soon(cas)
            await trio.testing.wait_all_tasks_blocked()  # the put is in the worker thread
            store.put_coalesced("cur", b"2")
            release.set()
        assert versions == [2]
        assert await store.get("cur") == Versioned(b"2", 3)
        assert await trio.to_thread.run_sync(_raw_rows, db_path) == {"cur": (b"put", 2)}
        await store.flush()
        assert await store.get("cur") == Versioned(b"2", 3)
        assert await trio.to_thread.run_sync(_raw_rows, db_path) == {"cur": (b"2", 3)}


async def test_sqlite_failed_flush_keeps_the_writes(
    db_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with open_sqlite_metadata(db_path, flush_interval_s=3600) as store:
        store.put_coalesced("cur", b"1")
        store.put_coalesced("cur", b"2")
        original = store._db.write_batch

        def failing(*args: object) -> None:
            raise sqlite3.OperationalError("disk I/O error")

        monkeypatch.setattr(store._db, "write_batch", failing)
        with pytest.raises(StorageError, match="disk I/O error"):
            await store.flush()
        store.put_coalesced("cur", b"3")
        assert await store.get("cur") == Versioned(b"3", 3)
        monkeypatch.setattr(store._db, "write_batch", original)
        await store.flush()
        assert store.flush_transactions == 1
        assert await trio.to_thread.run_sync(_raw_rows, db_path) == {"cur": (b"3", 3)}


async def test_sqlite_closed_store_refuses(db_path: pathlib.Path) -> None:
    async with open_sqlite_metadata(db_path) as store:
        pass
    with pytest.raises(StorageError):
        await store.get("k")
    with pytest.raises(StorageError):
        store.put_coalesced("k", b"v")
    await store.close()  # idempotent


async def test_sqlite_close_flushes_even_when_body_fails(db_path: pathlib.Path) -> None:
    with pytest.raises(RuntimeError):
        async with open_sqlite_metadata(db_path, flush_interval_s=3600) as store:
            store.put_coalesced("cur", b"1")
            raise RuntimeError("boom")
    assert await trio.to_thread.run_sync(_raw_rows, db_path) == {"cur": (b"1", 1)}


async def test_sqlite_no_coalesced_write_lost_while_closing(
    db_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    refused: list[bool] = []

    async def late_writer(store: SqliteMetadataStore, release: threading.Event) -> None:
        # wakes once the closing task waits for the final flush in the worker thread
        await trio.testing.wait_all_tasks_blocked()
        try:
            store.put_coalesced("late", b"x")
        except StorageError:
            refused.append(True)
        finally:
            release.set()

    async with (
        trio.open_nursery() as nursery,
        open_sqlite_metadata(db_path, flush_interval_s=3600) as store,
    ):
        nursery.start_soon(late_writer, store, _hold_in_thread(monkeypatch, store, "write_batch"))
        store.put_coalesced("cur", b"1")
    assert refused == [True]
    assert await trio.to_thread.run_sync(_raw_rows, db_path) == {"cur": (b"1", 1)}
