"""Producer access modes: Shared, Exclusive, WaitForExclusive, ExclusiveWithFencing; epochs."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import trio
import trio.testing

from core.api import AccessMode, Core, open_core
from core.config import CoreSettings
from core.errors import UnknownTopic
from core.exclusive import ProducerBusy, ProducerFenced
from core.records import Message, decode_batch
from storage import open_storage
from storage.memory import open_memory_storage

T0 = 1_700_000_000_000
SETTINGS = CoreSettings(retention_check_interval_ms=0)


@pytest.fixture
async def core() -> AsyncIterator[Core]:
    async with open_memory_storage() as storage, open_core(storage, SETTINGS,
                                                           clock_ms=lambda: T0) as c:
        await c.create_topic("t", partitions=2)
        yield c


def msg(value: bytes) -> list[Message]:
    return [Message(None, value, timestamp_ms=T0)]


async def values(core: Core, partition: int = 0) -> list[bytes | None]:
    entries = await core.read("t", partition, 0, 1 << 20)
    return [m.message.value for e in entries for m in decode_batch(e.batch)]


async def test_shared_producers_coexist_and_write(core: Core) -> None:
    async with core.open_producer("t") as a, core.open_producer("t", AccessMode.SHARED) as b:
        await a.append_messages(0, msg(b"a"))
        await b.append_messages(1, msg(b"b"))
        assert a.epoch == b.epoch == 0
    assert await values(core, 0) == [b"a"]
    assert await values(core, 1) == [b"b"]


async def test_exclusive_refuses_a_second_producer_at_once(core: Core) -> None:
    async with core.open_producer("t", AccessMode.EXCLUSIVE, "leader") as leader:
        assert leader.epoch == 1
        for mode in (AccessMode.EXCLUSIVE, AccessMode.SHARED):
            with pytest.raises(ProducerBusy):
                async with core.open_producer("t", mode):
                    pass
        await leader.append_messages(0, msg(b"x"))
    async with core.open_producer("t") as shared:
        with pytest.raises(ProducerBusy):  # shared producers block an exclusive one too
            async with core.open_producer("t", AccessMode.EXCLUSIVE):
                pass
        await shared.append_messages(0, msg(b"y"))
    assert await values(core) == [b"x", b"y"]


async def test_wait_for_exclusive_waits_until_the_exclusive_one_leaves(
        core: Core, autojump_clock: trio.testing.MockClock) -> None:
    granted_at: list[float] = []
    epochs: list[int] = []

    async def waiter() -> None:
        async with core.open_producer("t", AccessMode.WAIT_FOR_EXCLUSIVE, "next") as p:
            granted_at.append(trio.current_time())
            epochs.append(p.epoch)
            await p.append_messages(0, msg(b"second"))

    async with (
        trio.open_nursery() as nursery,
        core.open_producer("t", AccessMode.EXCLUSIVE, "first") as first,
    ):
        nursery.start_soon(waiter)
        await trio.sleep(5)
        assert granted_at == []
        await first.append_messages(0, msg(b"first"))
        # leaving the block releases the topic; the nursery then waits for the waiter
    assert granted_at == [5.0]
    assert epochs == [2]
    assert await values(core) == [b"first", b"second"]


async def test_wait_for_exclusive_can_be_bounded_with_move_on_after(
        core: Core, autojump_clock: trio.testing.MockClock) -> None:
    async with core.open_producer("t", AccessMode.EXCLUSIVE):
        with trio.move_on_after(30) as scope:
            async with core.open_producer("t", AccessMode.WAIT_FOR_EXCLUSIVE):
                pytest.fail("granted while another producer is exclusive")
        assert scope.cancelled_caught
    async with core.open_producer("t", AccessMode.WAIT_FOR_EXCLUSIVE) as p:  # free: at once
        assert p.epoch == 2  # each grant bumped the epoch; the abandoned wait did not


async def test_a_fenced_zombie_can_never_write_again(core: Core) -> None:
    async with core.open_producer("t", AccessMode.EXCLUSIVE, "old") as zombie:
        await zombie.append_messages(0, msg(b"old"))
        async with core.open_producer("t", AccessMode.EXCLUSIVE_WITH_FENCING, "new") as new:
            assert new.epoch == zombie.epoch + 1
            with pytest.raises(ProducerFenced):
                await zombie.append_messages(0, msg(b"zombie"))
            await new.append_messages(0, msg(b"new"))
        with pytest.raises(ProducerFenced):  # still fenced after the new one left
            await zombie.append_messages(0, msg(b"zombie"))
    assert await values(core) == [b"old", b"new"]


async def test_a_closed_handle_cannot_write(core: Core) -> None:
    async with core.open_producer("t", AccessMode.EXCLUSIVE) as p:
        pass
    with pytest.raises(ProducerFenced):
        await p.append_messages(0, msg(b"late"))


async def test_fencing_check_and_offset_assignment_are_atomic(core: Core) -> None:
    """A takeover racing with an append: the append either lands first or is refused."""
    async with core.open_producer("t", AccessMode.EXCLUSIVE, "old") as old:
        async with trio.open_nursery() as nursery:
            results: list[str] = []

            async def write() -> None:
                try:
                    await old.append_messages(0, msg(b"old"))
                    results.append("ok")
                except ProducerFenced:
                    results.append("fenced")

            nursery.start_soon(write)
            async with core.open_producer("t", AccessMode.EXCLUSIVE_WITH_FENCING) as new:
                await new.append_messages(0, msg(b"new"))
        stored = await values(core)
        assert stored[-1] == b"new"
        assert (results, stored) in ((["ok"], [b"old", b"new"]), (["fenced"], [b"new"]))


async def test_open_producer_needs_an_existing_topic(core: Core) -> None:
    with pytest.raises(UnknownTopic):
        async with core.open_producer("missing"):
            pass


async def test_topic_epoch_survives_restart(tmp_path: Path) -> None:
    url = f"file://{tmp_path}"
    async with open_storage(url) as storage, open_core(storage, SETTINGS) as core:
        await core.create_topic("t")
        async with core.open_producer("t", AccessMode.EXCLUSIVE):
            pass
        async with core.open_producer("t", AccessMode.EXCLUSIVE) as p:
            assert p.epoch == 2
    async with open_storage(url) as storage, open_core(storage, SETTINGS) as core:
        assert await core._producer_access.current_epoch(core.parse_topic("t")) == 2
        async with core.open_producer("t", AccessMode.EXCLUSIVE) as p:
            assert p.epoch == 3


async def test_access_state_is_dropped_when_a_topic_has_no_producers(
        core: Core, autojump_clock: trio.testing.MockClock) -> None:
    access = core._producer_access
    async with core.open_producer("t", AccessMode.EXCLUSIVE):
        with trio.move_on_after(1):
            async with core.open_producer("t", AccessMode.WAIT_FOR_EXCLUSIVE):
                pass
        assert len(access._topics) == 1
    assert access._topics == {}
    async with core.open_producer("t", AccessMode.EXCLUSIVE) as again:
        assert again.epoch == 2  # reloaded from the metadata store
