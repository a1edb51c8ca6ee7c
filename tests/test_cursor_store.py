"""CursorStore on the memory and SQLite metadata stores: save/load/delete/list,
coalescing of ack storms, and survival across close/reopen."""

from __future__ import annotations

import pathlib
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager

import pytest
import trio
import trio.testing

from core.cursor import CorruptCursor, Cursor
from core.cursor_store import CURSORS_PREFIX, CursorStore, cursor_key
from core.names import TopicName
from core.rangeset import RangeSet
from storage.api import MetadataStore
from storage.memory import MemoryMetadataStore
from storage.sqlite import SqliteMetadataStore, open_sqlite_metadata

LOG = TopicName.parse("orders").log_name(0)  # persistent/public/default/orders/p-0
OTHER_LOG = TopicName.parse("orders").log_name(1)

Opener = Callable[[], AbstractAsyncContextManager[MetadataStore]]


@asynccontextmanager
async def _open_memory() -> AsyncIterator[MetadataStore]:
    store = MemoryMetadataStore()
    try:
        yield store
    finally:
        await store.close()


@pytest.fixture(params=["memory", "sqlite"])
def open_metadata(request: pytest.FixtureRequest, tmp_path: pathlib.Path) -> Opener:
    if request.param == "memory":
        return _open_memory
    return lambda: open_sqlite_metadata(tmp_path / "metadata.sqlite")


def same_state(a: Cursor | None, b: Cursor) -> bool:
    return (
        a is not None
        and a.mark_delete == b.mark_delete
        and a.individually_acked == b.individually_acked
    )


def test_cursor_key_layout_and_escaping() -> None:
    assert cursor_key(LOG, "group-1") == f"{CURSORS_PREFIX}{LOG}/group-1"
    assert cursor_key(LOG, "a/b c%") == f"{CURSORS_PREFIX}{LOG}/a%2Fb%20c%25"
    for bad_log, bad_sub in [("", "s"), ("a//b", "s"), (LOG, "")]:
        with pytest.raises(ValueError):
            cursor_key(bad_log, bad_sub)


async def test_save_load_delete_list(open_metadata: Opener) -> None:
    async with open_metadata() as md:
        store = CursorStore(md)
        assert await store.load(LOG, "g") is None
        assert await store.list(LOG) == []
        cursor = Cursor(10, RangeSet([(12, 15)]))
        store.save(LOG, "g", cursor)
        assert same_state(await store.load(LOG, "g"), cursor)  # seen before any flush
        await store.flush()
        assert same_state(await store.load(LOG, "g"), cursor)
        await store.save_now(LOG, "queue/with spaces", Cursor(3))
        store.save(OTHER_LOG, "g", Cursor(99))
        assert await store.list(LOG) == ["g", "queue/with spaces"]
        loaded = await store.load_all(LOG)
        assert sorted(loaded) == ["g", "queue/with spaces"]
        assert loaded["queue/with spaces"].mark_delete == 3
        assert await store.delete(LOG, "g") is True
        assert await store.delete(LOG, "g") is False
        assert await store.load(LOG, "g") is None
        assert await store.list(LOG) == ["queue/with spaces"]
        assert await store.list(OTHER_LOG) == ["g"]
        assert await store.delete_all(LOG) == 1
        assert await store.list(LOG) == []
        assert same_state(await store.load(OTHER_LOG, "g"), Cursor(99))


async def test_list_ignores_records_of_longer_log_names(open_metadata: Opener) -> None:
    async with open_metadata() as md:
        store = CursorStore(md)
        store.save("a/p-0", "s", Cursor(1))
        store.save("a/p-0/x", "t", Cursor(2))  # a different (longer) log name
        store.save("a/p-01", "u", Cursor(3))
        assert await store.list("a/p-0") == ["s"]
        assert await store.list("a/p-0/x") == ["t"]


async def test_loaded_cursors_get_the_store_limits(open_metadata: Opener) -> None:
    async with open_metadata() as md:
        store = CursorStore(md, max_persisted_ranges=2)
        cursor = Cursor(max_persisted_ranges=2)
        for offset in (1, 3, 5, 7):
            cursor.ack(offset)
        store.save(LOG, "g", cursor)
        loaded = await store.load(LOG, "g")
        assert loaded is not None
        assert list(loaded.individually_acked) == [(1, 2), (3, 4)]  # the oldest two
        assert loaded.max_persisted_ranges == 2


async def test_corrupt_record_raises(open_metadata: Opener) -> None:
    async with open_metadata() as md:
        await md.put(cursor_key(LOG, "g"), b"\x07junk")
        with pytest.raises(CorruptCursor):
            await CursorStore(md).load(LOG, "g")


async def test_state_survives_close_and_reopen(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "metadata.sqlite"
    cursor = Cursor()
    async with open_sqlite_metadata(path) as md:
        store = CursorStore(md)
        for offset in range(0, 5000, 3):  # leaves gaps: many individual ranges
            cursor.ack(offset)
            store.save(LOG, "g", cursor)
        cursor.ack_cumulative(1000)
        store.save(LOG, "g", cursor)
        store.save(LOG, "h", Cursor(7))
        await store.delete(LOG, "h")
        # no flush: closing the store must write what is pending
    async with open_sqlite_metadata(path) as md:
        store = CursorStore(md)
        loaded = await store.load(LOG, "g")
        assert same_state(loaded, cursor)
        assert loaded is not None and len(loaded.individually_acked) > 1000
        assert await store.list(LOG) == ["g"]


async def _wait_for_flushes(md: SqliteMetadataStore, count: int) -> None:
    """Let the flusher's worker thread finish (the mock clock does not move meanwhile)."""
    for _ in range(200_000):
        if md.flush_transactions >= count:
            return
        await trio.lowlevel.checkpoint()
    raise AssertionError(f"only {md.flush_transactions} flushes, wanted {count}")


async def test_an_ack_storm_is_not_a_write_storm(
    tmp_path: pathlib.Path, mock_clock: trio.testing.MockClock
) -> None:
    """100,000 acks, each followed by a save: one transaction per flush interval, not per ack."""
    path = tmp_path / "metadata.sqlite"
    subscriptions = ("kafka-group", "amqp-queue", "mqtt-session")
    cursors = {name: Cursor() for name in subscriptions}
    acks = 0
    async with open_sqlite_metadata(path, flush_interval_s=0.05) as md:
        store = CursorStore(md)
        start = md.write_transactions
        for block in range(334):  # each block of 100 offsets acked last-to-first
            for offset in range(block * 100 + 99, block * 100 - 1, -1):
                for name in subscriptions:
                    cursors[name].ack(offset)
                    store.save(LOG, name, cursors[name])
                    acks += 1
            await trio.lowlevel.checkpoint()  # acks arrive from the network
            if block % 100 == 99:  # three times: let one flush interval pass
                mock_clock.jump(0.05)
                await _wait_for_flushes(md, (block + 1) // 100)
        assert md.write_transactions - start == 3
        await store.flush()  # the acks of the last 34 blocks
        assert acks > 100_000
        assert md.write_transactions - start == 4
        assert md.flush_transactions == 4
    async with open_sqlite_metadata(path) as md:
        store = CursorStore(md)
        for name in subscriptions:
            loaded = await store.load(LOG, name)
            assert same_state(loaded, cursors[name])
            assert loaded is not None and loaded.mark_delete == 33_400


async def test_dirty_cursors_are_serialised_once_per_round(open_metadata: Opener) -> None:
    async with open_metadata() as md:
        store = CursorStore(md)
        cursor = Cursor()
        for offset in range(0, 200, 2):
            cursor.ack(offset)
            store.mark_dirty(LOG, "g", cursor)
        assert await md.get(cursor_key(LOG, "g")) is None  # nothing serialised yet
        assert store.save_dirty() == 1
        assert store.save_dirty() == 0
        record = await md.get(cursor_key(LOG, "g"))
        assert record is not None and record.value == cursor.to_bytes()


async def test_reads_never_see_an_older_state_than_a_dirty_cursor(open_metadata: Opener) -> None:
    async with open_metadata() as md:
        store = CursorStore(md)
        a, b = Cursor(), Cursor(5)
        store.save(LOG, "a", a)
        a.ack_range(0, 10)
        store.mark_dirty(LOG, "a", a)
        store.mark_dirty(LOG, "b", b)
        assert same_state(await store.load(LOG, "a"), a)
        assert await store.list(LOG) == ["a", "b"]
        store.mark_dirty(LOG, "c", Cursor(1))
        assert await store.delete(LOG, "c") is True  # dirty only: forgotten, never written
        await store.flush()
        assert await store.list(LOG) == ["a", "b"]


async def test_the_dirty_set_is_bounded(open_metadata: Opener) -> None:
    async with open_metadata() as md:
        store = CursorStore(md, max_dirty=3)
        store.mark_dirty(LOG, "a", Cursor(1))
        store.mark_dirty(LOG, "b", Cursor(2))
        assert await md.list(CURSORS_PREFIX) == []
        store.mark_dirty(LOG, "c", Cursor(3))  # the third one saves all three
        assert len(await md.list(CURSORS_PREFIX)) == 3
        assert store.save_dirty() == 0
