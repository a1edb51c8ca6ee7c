"""Subscriptions survive closing and reopening the core on file:// storage."""

from __future__ import annotations

from pathlib import Path

import trio

from core.api import open_core
from core.config import CoreSettings
from core.cursor import Cursor
from core.records import Message
from core.subscriptions import (
    InitialPosition,
    SubscriptionType,
    open_subscription_manager,
)
from storage import open_storage

SETTINGS = CoreSettings(retention_check_interval_ms=0)


async def test_cursor_state_survives_restart(tmp_path: Path) -> None:
    url = f"file://{tmp_path}"
    acked = {(0, 0), (0, 1), (0, 2), (0, 5), (0, 7), (1, 3)}
    async with open_storage(url) as storage, open_core(storage, SETTINGS) as core:
        await core.create_topic("t", 2)
        for p in range(2):
            await core.append_messages("t", p, [Message(b"k", b"%d" % i) for i in range(10)])
        async with open_subscription_manager(core) as subs:
            c = await subs.subscribe("t", "s", SubscriptionType.SHARED,
                                     initial_position=InitialPosition.EARLIEST)
            c.flow(100)
            with trio.fail_after(10):
                for _ in range(20):
                    d = await c.receive()
                    if (d.partition, d.offset) in acked:
                        c.ack(d.partition, d.offset)
            r = await subs.subscribe("t", "later", initial_position=InitialPosition.LATEST)
            await subs.seek("t", "later", 4, partitions=[1])
            reader = await subs.open_reader("t")
            assert len(await subs.list_subscriptions("t")) == 3
            reader.close()
            r.close()
            # c stays connected: closing the manager must not lose anything

    async with (
        open_storage(url) as storage,
        open_core(storage, SETTINGS) as core,
        open_subscription_manager(core) as subs,
    ):
        infos = {i.name: i for i in await subs.list_subscriptions("t")}
        assert set(infos) == {"s", "later"}  # the reader was not durable
        assert infos["s"].backlog == 20 - len(acked)
        assert infos["s"].type is None and infos["s"].consumers == ()
        assert infos["later"].backlog == 6  # partition 1 from offset 4
        c = await subs.subscribe("t", "s", SubscriptionType.EXCLUSIVE)
        c.flow(100)
        got = set()
        with trio.fail_after(10):
            for _ in range(20 - len(acked)):
                d = await c.receive()
                got.add((d.partition, d.offset))
        assert got == {(p, o) for p in range(2) for o in range(10)} - acked
        with trio.move_on_after(0.2):
            await c.receive()
            raise AssertionError("an acked message was redelivered")


async def test_listing_shows_cursors_written_by_others(tmp_path: Path) -> None:
    """Kafka group offsets are cursors written through the CursorStore directly."""
    async with (
        open_storage(f"file://{tmp_path}") as storage,
        open_core(storage, SETTINGS) as core,
    ):
        await core.create_topic("t", 1)
        await core.append_messages("t", 0, [Message(None, b"") for _ in range(10)])
        async with open_subscription_manager(core) as subs:
            log_name = core.parse_topic("t").log_name(0)
            await subs.store.save_now(log_name, "kafka:g", Cursor(3))
            await subs.restore()
            (info,) = await subs.list_subscriptions("t")
            assert info.name == "kafka:g" and info.backlog == 7
            await subs.store.save_now(log_name, "kafka:g", Cursor(8))
            (info,) = await subs.list_subscriptions("t")
            assert info.backlog == 2
