"""The core API handlers use: topics, append/read/wait, offsets, policies, errors."""

from __future__ import annotations

import struct
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import pytest
import trio
import trio.testing
from fakeclock import T0, FakeClock

from core.api import Core, open_core
from core.batch import split_batches
from core.config import CoreSettings
from core.errors import (
    CorruptBatch,
    InvalidPartitionCount,
    InvalidTopicName,
    MessageTooLarge,
    NamespaceNotEmpty,
    OffsetOutOfRange,
    PartitionUnavailable,
    TopicAlreadyExists,
    UnknownNamespace,
    UnknownPartition,
    UnknownTopic,
)
from core.names import NamespaceName, TopicName
from core.namespaces import TopicPolicies
from core.partition import Partition
from core.records import CODEC_GZIP, Message, decode_batch
from storage import open_storage
from storage.api import EntryIn, Storage, StorageError
from storage.memory import MemoryLog, open_memory_storage

FIXTURES = Path(__file__).parent / "fixtures" / "batches"
PLAIN = (FIXTURES / "librdkafka_v2_none_000.bin").read_bytes()
GZIP = (FIXTURES / "librdkafka_v2_gzip_000.bin").read_bytes()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
async def core(storage: Storage, clock: FakeClock) -> AsyncIterator[Core]:
    settings = CoreSettings(retention_check_interval_ms=0)
    async with open_core(storage, settings, clock_ms=clock) as c:
        yield c


def base_offset(batch: memoryview | bytes) -> int:
    return int(struct.unpack_from(">q", batch)[0])


async def test_append_and_read(core: Core, clock: FakeClock) -> None:
    await core.create_topic("t")
    r1 = await core.append("t", 0, PLAIN)
    clock.now += 5
    r2 = await core.append("t", 0, GZIP)
    assert (r1.base_offset, r1.last_offset, r1.broker_timestamp) == (0, 2, T0)
    assert (r2.base_offset, r2.last_offset, r2.broker_timestamp) == (3, 5, T0 + 5)
    entries = await core.read("t", 0, 0, 1 << 20)
    spans = [(e.base_offset, e.last_offset, e.record_count) for e in entries]
    assert spans == [(0, 2, 3), (3, 5, 3)]
    assert [e.broker_timestamp for e in entries] == [T0, T0 + 5]
    # stored bytes are the produced bytes with the base offset set; still a valid batch
    assert bytes(entries[0].batch[8:]) == PLAIN[8:] and base_offset(entries[0].batch) == 0
    assert bytes(entries[1].batch[8:]) == GZIP[8:] and base_offset(entries[1].batch) == 3
    for e in entries:
        split_batches(e.batch, 1 << 20)
    assert [m.offset for m in decode_batch(entries[1].batch)] == [3, 4, 5]
    # an offset in the middle of a batch returns that whole batch
    mid = await core.read("t", 0, 4, 1 << 20)
    assert [e.base_offset for e in mid] == [3]
    # max_bytes: at least one entry, then only what fits
    assert len(await core.read("t", 0, 0, 1)) == 1
    assert await core.read("t", 0, 6, 1 << 20) == []
    with pytest.raises(OffsetOutOfRange):
        await core.read("t", 0, 7, 1 << 20)
    with pytest.raises(OffsetOutOfRange):
        await core.read("t", 0, -1, 1 << 20)


async def test_spellings_reach_the_same_topic(core: Core) -> None:
    await core.create_topic("persistent://public/default/t")
    await core.append("t", 0, PLAIN)
    await core.append(TopicName("public", "default", "t"), 0, PLAIN)
    await core.append("public/default/t", 0, PLAIN)
    assert await core.latest_offset("persistent://public/default/t", 0) == 9


async def test_concatenated_batches_become_separate_entries(core: Core) -> None:
    await core.create_topic("t")
    result = await core.append("t", 0, PLAIN + GZIP)
    assert (result.base_offset, result.last_offset) == (0, 5)
    entries = await core.read("t", 0, 0, 1 << 20)
    assert [(e.base_offset, e.last_offset) for e in entries] == [(0, 2), (3, 5)]


async def test_broker_time_never_goes_backwards(core: Core, clock: FakeClock) -> None:
    await core.create_topic("t")
    await core.append("t", 0, PLAIN)
    clock.now -= 1000
    result = await core.append("t", 0, PLAIN)
    assert result.broker_timestamp == T0


async def test_offsets_and_timestamps(core: Core, clock: FakeClock) -> None:
    await core.create_topic("t")
    assert await core.earliest_offset("t", 0) == 0
    assert await core.latest_offset("t", 0) == 0
    assert await core.offset_for_timestamp("t", 0, 0) is None
    for i in range(3):
        clock.now = T0 + 100 * i
        await core.append("t", 0, PLAIN)
    assert await core.earliest_offset("t", 0) == 0
    assert await core.latest_offset("t", 0) == 9
    assert await core.offset_for_timestamp("t", 0, 0) == 0
    assert await core.offset_for_timestamp("t", 0, T0 + 1) == 3
    assert await core.offset_for_timestamp("t", 0, T0 + 200) == 6
    assert await core.offset_for_timestamp("t", 0, T0 + 201) is None


async def test_wait_for_data(core: Core) -> None:
    await core.create_topic("t")
    woke: list[int] = []

    async def waiter(offset: int) -> None:
        await core.wait_for_data("t", 0, offset)
        woke.append(offset)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(waiter, 0)
        nursery.start_soon(waiter, 3)
        await trio.testing.wait_all_tasks_blocked()
        assert woke == []
        await core.append("t", 0, PLAIN)
        await trio.testing.wait_all_tasks_blocked()
        assert woke == [0]
        await core.append("t", 0, PLAIN)
    assert woke == [0, 3]
    # already available: returns at once
    await core.wait_for_data("t", 0, 5)


async def test_wait_for_data_times_out_on_the_trio_clock(
    core: Core, mock_clock: trio.testing.MockClock
) -> None:
    mock_clock.autojump_threshold = 0
    await core.create_topic("t")
    start = trio.current_time()
    with trio.move_on_after(30) as scope:
        await core.wait_for_data("t", 0, 0)
    assert scope.cancelled_caught
    assert trio.current_time() - start == pytest.approx(30)


async def test_delete_wakes_waiters_with_unknown_topic(core: Core) -> None:
    await core.create_topic("t")
    errors: list[Exception] = []

    async def waiter() -> None:
        try:
            await core.wait_for_data("t", 0, 0)
        except UnknownTopic as exc:
            errors.append(exc)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(waiter)
        await trio.testing.wait_all_tasks_blocked()
        await core.delete_topic("t")
    assert len(errors) == 1
    with pytest.raises(UnknownTopic):
        await core.append("t", 0, PLAIN)
    assert await core.storage.list_logs() == []
    # a topic created again under the same name starts empty
    await core.create_topic("t")
    assert (await core.append("t", 0, PLAIN)).base_offset == 0


async def test_create_discards_logs_left_by_an_interrupted_delete(core: Core) -> None:
    stale = await core.storage.open_log(TopicName.parse("t").log_name(0))
    await stale.append([EntryIn(5, T0, b"old")])
    await core.create_topic("t")
    assert await core.latest_offset("t", 0) == 0
    assert (await core.append("t", 0, PLAIN)).base_offset == 0


async def test_partitioned_topics(core: Core) -> None:
    info = await core.create_topic("p", partitions=3)
    assert info.partitions == 3
    assert info.name == TopicName("public", "default", "p")
    await core.append("p", 2, PLAIN)
    await core.append("p", 0, PLAIN)
    await core.append("p", 2, PLAIN)
    assert [await core.latest_offset("p", n) for n in range(3)] == [3, 0, 6]
    meta = await core.topic_metadata("persistent://public/default/p-partition-1")
    assert meta.partitions == 3
    with pytest.raises(UnknownPartition):
        await core.topic_metadata("p-partition-3")
    with pytest.raises(UnknownPartition):
        await core.append("p", 3, PLAIN)
    with pytest.raises(UnknownPartition):
        await core.read("p", -1, 0, 100)
    assert sorted(await core.storage.list_logs()) == [
        f"persistent/public/default/p/p-{n}" for n in range(3)
    ]
    grown = await core.add_partitions("p", 5)
    assert grown.partitions == 5
    await core.append("p", 4, PLAIN)
    with pytest.raises(InvalidPartitionCount):
        await core.add_partitions("p", 2)
    with pytest.raises(InvalidPartitionCount):
        await core.create_topic("q", partitions=0)
    with pytest.raises(TopicAlreadyExists):
        await core.create_topic("p")


async def test_topics_are_listed_and_auto_created(storage: Storage) -> None:
    async with open_core(storage, CoreSettings(retention_check_interval_ms=0)) as core:
        with pytest.raises(UnknownTopic):
            await core.topic_metadata("auto")
        info = await core.topic_metadata("auto", create_if_missing=True)
        assert info.partitions == 1
        await core.create_topic("b", 2)
        names = [(t.name.local, t.partitions) for t in await core.list_topics()]
        assert names == [("auto", 1), ("b", 2)]
    settings = CoreSettings(retention_check_interval_ms=0, auto_create_topics=False)
    async with open_core(storage, settings) as core:
        with pytest.raises(UnknownTopic):
            await core.topic_metadata("other", create_if_missing=True)
        assert (await core.topic_metadata("auto")).partitions == 1


async def test_invalid_topic_name(core: Core) -> None:
    for bad in ("bad name", "x/y", "non-persistent://public/default/t", "a" * 300):
        with pytest.raises(InvalidTopicName):
            await core.append(bad, 0, PLAIN)
        with pytest.raises(InvalidTopicName):
            await core.create_topic(bad)
    with pytest.raises(InvalidTopicName):
        await core.create_topic("t-partition-1")
    with pytest.raises(UnknownNamespace):
        await core.create_topic("persistent://nope/nope/t")


async def log_state(core: Core, topic: str) -> tuple[int, int, int]:
    log = await core.storage.open_log(core.parse_topic(topic).log_name(0))
    return log.end_position, log.size_bytes, await core.latest_offset(topic, 0)


async def test_corrupt_batch_is_rejected_and_nothing_written(core: Core) -> None:
    await core.create_topic("t")
    await core.append("t", 0, PLAIN)
    before = await log_state(core, "t")
    bad = bytearray(PLAIN)
    bad[-1] ^= 0xFF
    with pytest.raises(CorruptBatch):
        await core.append("t", 0, bad)
    # a good batch followed by a bad one: the whole produce is rejected
    with pytest.raises(CorruptBatch):
        await core.append("t", 0, PLAIN + bytes(bad))
    with pytest.raises(CorruptBatch):
        await core.append("t", 0, PLAIN[:-3])
    assert await log_state(core, "t") == before
    assert (await core.append("t", 0, PLAIN)).base_offset == 3


async def test_oversized_batch_is_rejected_and_nothing_written(core: Core) -> None:
    await core.create_topic("t", policies=TopicPolicies(max_message_bytes=len(PLAIN) - 1))
    await core.append("t", 0, GZIP)
    before = await log_state(core, "t")
    with pytest.raises(MessageTooLarge):
        await core.append("t", 0, PLAIN)
    assert await log_state(core, "t") == before
    # raising the override (or the namespace policy) lets it through
    await core.set_topic_policies("t", max_message_bytes=None)
    await core.set_namespace_policies("public/default", max_message_bytes=len(PLAIN) - 1)
    with pytest.raises(MessageTooLarge):
        await core.append("t", 0, PLAIN)
    await core.set_namespace_policies("public/default", max_message_bytes=len(PLAIN))
    assert (await core.append("t", 0, PLAIN)).base_offset == 3


async def test_namespaces_through_the_core(core: Core) -> None:
    assert await core.list_tenants() == ["public"]
    await core.create_tenant("acme")
    ns = await core.create_namespace("acme/prod")
    assert ns == NamespaceName("acme", "prod")
    assert await core.list_namespaces("acme") == [ns]
    await core.create_topic("persistent://acme/prod/t")
    await core.append("persistent://acme/prod/t", 0, PLAIN)
    with pytest.raises(NamespaceNotEmpty):
        await core.delete_namespace("acme/prod")
    await core.set_namespace_policies("acme/prod", retention_ms=10, deduplication=True)
    info = await core.topic_metadata("persistent://acme/prod/t")
    assert info.policies.deduplication and info.policies.retention.max_age_ms == 10
    assert (await core.namespace_policies("acme/prod")).retention_ms == 10
    await core.delete_topic("persistent://acme/prod/t")
    await core.delete_namespace("acme/prod")
    await core.delete_tenant("acme")
    assert await core.list_tenants() == ["public"]


async def test_append_messages_and_users(core: Core) -> None:
    await core.create_topic("m")
    msgs = [Message(b"k", b"v" * 100, [("content-type", b"text/plain")], T0 + i) for i in range(4)]
    result = await core.append_messages("m", 0, msgs, CODEC_GZIP)
    assert (result.base_offset, result.last_offset) == (0, 3)
    (entry,) = await core.read("m", 0, 0, 1 << 20)
    decoded = decode_batch(entry.batch)
    assert [d.message for d in decoded] == msgs
    assert [d.offset for d in decoded] == [0, 1, 2, 3]
    assert await core.users.get("guest") is not None
    assert core.settings.default_namespace == "default"


async def test_retention_drops_old_segments(core: Core, clock: FakeClock) -> None:
    await core.create_topic("r", policies=TopicPolicies(retention_ms=1000))
    for _ in range(200):  # several segments on both backends
        await core.append("r", 0, PLAIN)
    clock.now += 5000
    dropped = await core.apply_retention()
    assert 64 <= dropped < 200
    earliest = dropped * 3
    assert await core.earliest_offset("r", 0) == earliest
    assert await core.latest_offset("r", 0) == 600
    with pytest.raises(OffsetOutOfRange):
        await core.read("r", 0, 0, 100)
    with pytest.raises(OffsetOutOfRange):
        await core.read("r", 0, earliest - 1, 100)
    assert (await core.read("r", 0, earliest, 100))[0].base_offset == earliest
    assert (await core.read("r", 0, earliest + 1, 100))[0].base_offset == earliest
    assert (await core.append("r", 0, PLAIN)).base_offset == 600


async def test_namespace_retention_policy_applies(core: Core, clock: FakeClock) -> None:
    await core.create_topic("r")
    for _ in range(150):
        await core.append("r", 0, PLAIN)
    clock.now += 5000
    assert await core.apply_retention() == 0  # default: 7 days
    await core.set_namespace_policies("public/default", retention_ms=1000)
    assert await core.apply_retention() > 0
    assert await core.earliest_offset("r", 0) > 0


async def test_retention_task_runs_on_the_trio_clock(
    clock: FakeClock, mock_clock: trio.testing.MockClock
) -> None:
    # memory backend only: the file backend works in threads, which the
    # autojumping mock clock does not wait for
    mock_clock.autojump_threshold = 0
    settings = CoreSettings(retention_check_interval_ms=60_000, retention_ms=1000)
    async with (
        open_memory_storage() as storage,
        open_core(storage, settings, clock_ms=clock) as core,
    ):
        await core.create_topic("r")
        for _ in range(130):
            await core.append("r", 0, PLAIN)
        clock.now += 5000
        await trio.sleep(30)
        assert await core.earliest_offset("r", 0) == 0
        await trio.sleep(31)
        assert await core.earliest_offset("r", 0) > 0


async def test_offsets_continue_after_reopen_on_the_same_storage(storage: Storage) -> None:
    settings = CoreSettings(retention_check_interval_ms=0)
    async with open_core(storage, settings) as core:
        await core.create_topic("t", 2)
        await core.append("t", 1, PLAIN + PLAIN)
    async with open_core(storage, settings) as core:
        assert await core.latest_offset("t", 1) == 6
        assert (await core.append("t", 1, PLAIN)).base_offset == 6
        assert (await core.topic_metadata("t")).partitions == 2


async def test_restart_on_file_storage(tmp_path: Path, clock: FakeClock) -> None:
    settings = CoreSettings(retention_check_interval_ms=0)
    async with open_storage(f"file://{tmp_path}") as s, open_core(s, settings, clock_ms=clock) as c:
        await c.create_topic("t")
        await c.append("t", 0, PLAIN)
        await c.append("t", 0, GZIP)
    clock.now -= 10_000  # the machine clock went backwards across the restart
    async with open_storage(f"file://{tmp_path}") as s, open_core(s, settings, clock_ms=clock) as c:
        assert await c.latest_offset("t", 0) == 6
        result = await c.append("t", 0, PLAIN)
        assert (result.base_offset, result.broker_timestamp) == (6, T0)
        entries = await c.read("t", 0, 0, 1 << 20)
        assert [e.base_offset for e in entries] == [0, 3, 6]


async def test_pipelined_appends_get_contiguous_offsets(tmp_path: Path) -> None:
    settings = CoreSettings(retention_check_interval_ms=0)
    results: list[tuple[int, int]] = []
    async with open_storage(f"file://{tmp_path}") as s, open_core(s, settings) as core:
        await core.create_topic("t")

        async def produce() -> None:
            r = await core.append("t", 0, PLAIN)
            results.append((r.base_offset, r.last_offset))

        async with trio.open_nursery() as nursery:
            for _ in range(20):
                nursery.start_soon(produce)
        assert sorted(results) == [(3 * i, 3 * i + 2) for i in range(20)]
        entries = await core.read("t", 0, 0, 1 << 20)
        assert [e.base_offset for e in entries] == [3 * i for i in range(20)]


class GatedLog(MemoryLog):
    """A memory log whose appends wait for a gate, in arrival order (to test the watermark)."""

    def __init__(self) -> None:
        super().__init__("gated")
        self.gates: list[trio.Event] = []

    async def append(self, entries: Sequence[EntryIn]) -> list[int]:
        gate = trio.Event()
        self.gates.append(gate)
        await gate.wait()
        return await super().append(entries)


async def test_high_watermark_waits_for_earlier_appends() -> None:
    log = GatedLog()
    part = await Partition.open(TopicName.parse("t"), 0, log)
    batches = split_batches(PLAIN, 1 << 20)
    done: list[int] = []

    async def append() -> None:
        done.append((await part.append(batches, T0)).base_offset)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(append)
        await trio.testing.wait_all_tasks_blocked()
        nursery.start_soon(append)
        await trio.testing.wait_all_tasks_blocked()
        assert part.next_offset == 6 and part.high_watermark == 0
        log.gates[0].set()
        await trio.testing.wait_all_tasks_blocked()
        assert part.high_watermark == 3
        assert [e.base_offset for e in await part.read(0, 1 << 20)] == [0]
        log.gates[1].set()
    assert sorted(done) == [0, 3]
    assert part.high_watermark == 6


class FailingLog(MemoryLog):
    def __init__(self) -> None:
        super().__init__("failing")
        self.fail = True

    async def append(self, entries: Sequence[EntryIn]) -> list[int]:
        if self.fail:
            await trio.lowlevel.checkpoint()
            raise StorageError("disk on fire")
        return await super().append(entries)


async def test_partition_recovers_after_a_storage_failure() -> None:
    log = FailingLog()
    part = await Partition.open(TopicName.parse("t"), 0, log)
    batches = split_batches(PLAIN, 1 << 20)
    with pytest.raises(PartitionUnavailable):
        await part.append(batches, T0)
    # nothing else was in flight: offsets are reset from the log at once
    assert not part.failed and (part.next_offset, part.high_watermark) == (0, 0)
    log.fail = False
    result = await part.append(batches, T0)
    assert result.base_offset == 0 and part.high_watermark == 3


class FlakyGatedLog(GatedLog):
    """Appends wait for their gate; those whose arrival number is in ``failing`` then fail."""

    def __init__(self, failing: set[int]) -> None:
        super().__init__()
        self.failing = failing

    async def append(self, entries: Sequence[EntryIn]) -> list[int]:
        number = len(self.gates)
        gate = trio.Event()
        self.gates.append(gate)
        await gate.wait()
        if number in self.failing:
            raise StorageError("write failed")
        return await MemoryLog.append(self, entries)


async def test_failure_stops_the_watermark_until_in_flight_appends_finish() -> None:
    log = FlakyGatedLog(failing={0})
    part = await Partition.open(TopicName.parse("t"), 0, log)
    batches = split_batches(PLAIN, 1 << 20)
    outcomes: list[object] = []

    async def append() -> None:
        try:
            outcomes.append((await part.append(batches, T0)).base_offset)
        except PartitionUnavailable as exc:
            outcomes.append(exc)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(append)
        await trio.testing.wait_all_tasks_blocked()
        nursery.start_soon(append)
        await trio.testing.wait_all_tasks_blocked()
        log.gates[0].set()  # the first append fails
        await trio.testing.wait_all_tasks_blocked()
        assert part.failed and part.high_watermark == 0
        with pytest.raises(PartitionUnavailable):  # still one in flight
            await part.append(batches, T0)
        log.gates[1].set()  # the second one succeeds
    assert isinstance(outcomes[0], PartitionUnavailable) and outcomes[1] == 3
    # reset from the log: offsets 0-2 were never written, nothing is ever reused
    assert not part.failed
    assert (part.next_offset, part.high_watermark) == (6, 6)
    assert await part.earliest_offset() == 3
    assert [e.base_offset for e in await part.read(3, 1 << 20)] == [3]


async def test_cancelled_producer_still_gets_its_entry_written() -> None:
    log = GatedLog()
    part = await Partition.open(TopicName.parse("t"), 0, log)
    batches = split_batches(PLAIN, 1 << 20)
    producer_scope = trio.CancelScope()

    async def producer() -> None:
        with producer_scope:
            await part.append(batches, T0)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(producer)
        await trio.testing.wait_all_tasks_blocked()
        producer_scope.cancel()  # the producer goes away mid-append
        await trio.testing.wait_all_tasks_blocked()
        assert part.high_watermark == 0
        log.gates[0].set()
    assert not part.failed and part.high_watermark == 3
    assert [e.key for e in await log.read(0, 1 << 20)] == [2]
