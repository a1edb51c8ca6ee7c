"""Appended entries are handed to readers without decoding them again (core.entry_cache)."""

from __future__ import annotations

import pytest

from core.api import open_core
from core.config import CoreSettings
from core.entry import build_entry, decode_entry, framed_batch
from core.entry_cache import RecentEntries
from core.records import Message
from storage import open_storage


def test_recent_entries_match_by_identity_only() -> None:
    cache: RecentEntries[str] = RecentEntries(max_entries=2, max_bytes=100)
    a, b, c = b"a" * 10, b"b" * 10, b"c" * 10
    cache.add(a, "A")
    assert cache.get(a) == "A"
    assert cache.get(bytes(bytearray(a))) is None  # equal bytes, another object
    cache.add(b, "B")
    cache.add(c, "C")  # over max_entries: the oldest goes
    assert cache.get(a) is None and cache.get(b) == "B" and cache.get(c) == "C"
    assert len(cache) == 2 and cache.bytes == 20 and cache.hits == 3
    cache.add(b"x" * 101, "too big")
    assert len(cache) == 2
    cache.add(b"y" * 95, "Y")  # over max_bytes: older ones go until it fits
    assert len(cache) == 1 and cache.bytes == 95
    cache.clear()
    assert len(cache) == 0 and cache.bytes == 0
    with pytest.raises(ValueError):
        RecentEntries(max_entries=0)


def test_framed_batch_is_what_decode_entry_returns() -> None:
    batch = bytes(range(61)) * 2
    entry = build_entry(42, 1_700_000_000_000, memoryview(batch))
    assert bytes(framed_batch(entry)) == bytes(decode_entry(entry).batch)
    assert framed_batch(entry).obj is entry


async def test_readers_get_the_entries_built_at_append_time() -> None:
    settings = CoreSettings(retention_check_interval_ms=0)
    async with open_storage("memory://") as storage, open_core(storage, settings) as core:
        await core.create_topic("t", 2)
        first = await core.append_messages("t", 1, [Message(b"k", b"v1"), Message(None, b"v2")])
        second = await core.append_messages("t", 1, [Message(None, b"v3")])
        assert (first.base_offset, first.last_offset, second.base_offset) == (0, 1, 2)
        hits = core.recent_entries.hits
        entries = await core.read("t", 1, 0, 1 << 20)
        again = await core.read("t", 1, 0, 1 << 20)
        assert core.recent_entries.hits >= hits + 4
        assert [e is f for e, f in zip(entries, again, strict=True)] == [True, True]
        assert [(e.base_offset, e.last_offset) for e in entries] == [(0, 1), (2, 2)]
        assert entries[0].broker_timestamp == first.broker_timestamp
        for e in entries:  # the same bytes a decode of the stored entry gives
            stored = e.batch.obj
            assert isinstance(stored, bytes)
            decoded = decode_entry(stored)
            assert (decoded.index, decoded.broker_timestamp) == (e.base_offset,
                                                                 e.broker_timestamp)
            assert bytes(decoded.batch) == bytes(e.batch)
        assert await core.read("t", 0, 0, 1 << 20) == []
