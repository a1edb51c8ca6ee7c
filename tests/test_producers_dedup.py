"""Idempotent-producer dedup: the sans-IO state machine, then through the core's append path."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass

import pytest
import trio
import trio.testing
from hypothesis import given, settings
from hypothesis import strategies as st

from core.api import Core, open_core
from core.config import CoreSettings
from core.dedup import (
    MAX_BATCHES,
    DedupState,
    Duplicate,
    InvalidProducerEpoch,
    OutOfOrderSequence,
    UnknownProducerId,
    last_sequence,
)
from core.errors import PartitionUnavailable
from core.records import Message, build_batch, decode_batch
from storage.api import EntryIn, PartitionLog, StorageError
from storage.memory import open_memory_storage

T0 = 1_700_000_000_000


@dataclass(frozen=True)
class Header:
    producer_id: int
    producer_epoch: int
    base_sequence: int
    record_count: int = 1
    is_control: bool = False


def accept(state: DedupState, h: Header, base_offset: int) -> None:
    """plan() says new, then record() it at ``base_offset``."""
    assert state.plan([h]) == [None]
    state.record(h.producer_id, h.producer_epoch, h.base_sequence, h.record_count,
                 base_offset, T0)


# -- the state machine ---------------------------------------------------------------------------


def test_batches_without_producer_id_take_the_fast_path() -> None:
    state = DedupState()
    assert state.plan([Header(-1, -1, -1), Header(-1, -1, -1, 3)]) is None
    assert len(state) == 0


def test_in_order_batches_then_a_retry_is_a_duplicate() -> None:
    state = DedupState()
    accept(state, Header(7, 0, 0, 3), 10)   # seq 0-2 at offsets 10-12
    accept(state, Header(7, 0, 3, 2), 13)   # seq 3-4 at offsets 13-14
    assert state.plan([Header(7, 0, 0, 3)]) == [Duplicate(10, 12, T0)]
    assert state.plan([Header(7, 0, 3, 2)]) == [Duplicate(13, 14, T0)]
    assert state.plan([Header(7, 0, 5, 1)]) == [None]


def test_sequence_gap_is_out_of_order() -> None:
    state = DedupState()
    accept(state, Header(7, 0, 0, 2), 0)
    with pytest.raises(OutOfOrderSequence):
        state.plan([Header(7, 0, 3)])  # expected 2
    with pytest.raises(OutOfOrderSequence):
        state.plan([Header(7, 0, 1)])  # overlaps, not an exact retry


def test_older_epoch_is_fenced_and_a_new_epoch_restarts_at_zero() -> None:
    state = DedupState()
    accept(state, Header(7, 1, 0, 5), 0)
    with pytest.raises(InvalidProducerEpoch):
        state.plan([Header(7, 0, 5)])
    with pytest.raises(InvalidProducerEpoch):
        state.plan([Header(7, 0, 0, 5)])  # even an exact retry from the old epoch
    with pytest.raises(OutOfOrderSequence):
        state.plan([Header(7, 2, 5)])
    accept(state, Header(7, 2, 0), 5)
    assert state.producer(7) == (2, [state.producer(7)[1][0]])  # type: ignore[index]
    with pytest.raises(InvalidProducerEpoch):
        state.plan([Header(7, 1, 5)])


def test_unknown_producer_must_start_at_zero() -> None:
    state = DedupState()
    with pytest.raises(UnknownProducerId):
        state.plan([Header(9, 0, 4)])
    assert state.plan([Header(9, 0, 0)]) == [None]


def test_only_the_last_five_batches_are_remembered() -> None:
    state = DedupState()
    for i in range(MAX_BATCHES + 1):
        accept(state, Header(7, 0, i), i)
    assert state.plan([Header(7, 0, 1)]) == [Duplicate(1, 1, T0)]
    with pytest.raises(OutOfOrderSequence):  # seq 0 has left the window
        state.plan([Header(7, 0, 0)])


def test_sequences_wrap_around() -> None:
    top = 0x7FFFFFFF
    assert last_sequence(top - 1, 3) == 0  # top-1, top, 0
    state = DedupState()
    accept(state, Header(7, 0, 0), 0)
    state.record(7, 0, 1, top - 1, 1, T0)  # seq 1 .. top-1 (a huge batch, as bookkeeping)
    accept(state, Header(7, 0, top, 3), top)  # top, 0, 1
    assert state.plan([Header(7, 0, top, 3)]) == [Duplicate(top, top + 2, T0)]
    assert state.plan([Header(7, 0, 2)]) == [None]


def test_a_whole_append_is_checked_before_anything_changes() -> None:
    state = DedupState()
    accept(state, Header(7, 0, 0), 0)
    # two batches of one producer in one append: the second follows the first
    assert state.plan([Header(7, 0, 1, 2), Header(-1, -1, -1), Header(7, 0, 3)]) == [
        None, None, None]
    with pytest.raises(OutOfOrderSequence):
        state.plan([Header(7, 0, 1), Header(7, 0, 5)])
    assert state.producer(7) is not None
    assert [b.last_seq for b in state.producer(7)[1]] == [0]  # type: ignore[index]


def test_control_batches_are_not_checked() -> None:
    state = DedupState()
    assert state.plan([Header(7, 0, -1, is_control=True)]) is None


def test_truncate_forgets_batches_past_the_log_end() -> None:
    state = DedupState()
    accept(state, Header(7, 0, 0), 0)
    accept(state, Header(7, 0, 1), 1)
    accept(state, Header(8, 0, 0), 2)
    state.truncate(2)
    assert state.producer(8) is None
    assert state.plan([Header(7, 0, 1)]) == [Duplicate(1, 1, T0)]
    state.truncate(1)
    assert state.plan([Header(7, 0, 1)]) == [None]  # the retry of seq 1 is written again


def test_snapshot_round_trip_keeps_only_batches_below_its_offset() -> None:
    state = DedupState()
    accept(state, Header(7, 3, 0, 2), 0)
    accept(state, Header(7, 3, 2), 2)
    accept(state, Header(8, 0, 0), 3)
    loaded, offset = DedupState.from_snapshot(state.snapshot(3))
    assert offset == 3
    assert loaded.producer(7) == state.producer(7)
    assert loaded.producer(8) is None
    with pytest.raises(ValueError, match="malformed"):
        DedupState.from_snapshot(b'{"offset": 1}')


def test_producer_count_is_bounded_least_recently_used_first() -> None:
    state = DedupState(max_producers=2)
    accept(state, Header(1, 0, 0), 0)
    accept(state, Header(2, 0, 0), 1)
    accept(state, Header(1, 0, 1), 2)  # producer 1 used last
    accept(state, Header(3, 0, 0), 3)
    assert len(state) == 2
    assert state.producer(2) is None
    with pytest.raises(UnknownProducerId):
        state.plan([Header(2, 0, 1)])


# -- through the core ------------------------------------------------------------------------------


@pytest.fixture
async def core() -> AsyncIterator[Core]:
    async with open_memory_storage() as storage, open_core(
            storage, CoreSettings(retention_check_interval_ms=0), clock_ms=lambda: T0) as c:
        await c.create_topic("t")
        yield c


def pbatch(pid: int, epoch: int, seq: int, *values: bytes) -> bytes:
    return build_batch([Message(b"k", v, timestamp_ms=T0) for v in values],
                       producer_id=pid, producer_epoch=epoch, base_sequence=seq)


async def values(core: Core) -> list[bytes | None]:
    entries = await core.read("t", 0, 0, 1 << 20)
    return [m.message.value for e in entries for m in decode_batch(e.batch)]


async def test_duplicate_retry_is_stored_once_and_answered_with_the_same_offset(
        core: Core) -> None:
    pid = await core.allocate_producer_id()
    await core.append("t", 0, build_batch([Message(None, b"plain", timestamp_ms=T0)]))
    first = await core.append("t", 0, pbatch(pid, 0, 0, b"a", b"b"))
    retry = await core.append("t", 0, pbatch(pid, 0, 0, b"a", b"b"))
    assert (first.base_offset, first.last_offset) == (1, 2)
    assert (retry.base_offset, retry.last_offset) == (1, 2)
    nxt = await core.append("t", 0, pbatch(pid, 0, 2, b"c"))
    assert nxt.base_offset == 3
    assert await values(core) == [b"plain", b"a", b"b", b"c"]
    assert await core.latest_offset("t", 0) == 4


async def test_gap_and_fencing_errors_store_nothing(core: Core) -> None:
    pid = await core.allocate_producer_id()
    await core.append("t", 0, pbatch(pid, 1, 0, b"a"))
    with pytest.raises(OutOfOrderSequence):
        await core.append("t", 0, pbatch(pid, 1, 2, b"gap"))
    with pytest.raises(InvalidProducerEpoch):
        await core.append("t", 0, pbatch(pid, 0, 1, b"zombie"))
    with pytest.raises(UnknownProducerId):
        await core.append("t", 0, pbatch(pid + 1, 0, 3, b"who"))
    await core.append("t", 0, pbatch(pid, 2, 0, b"new epoch"))
    assert await values(core) == [b"a", b"new epoch"]


async def test_pipelined_retry_waits_for_the_original_to_be_durable(core: Core) -> None:
    """The retry's answer comes no earlier than the first copy is acknowledged."""
    partition = (await core._topic("t")).partitions[0]
    release = trio.Event()
    original_append = partition.log.append

    async def slow_append(entries: Sequence[EntryIn]) -> list[int]:
        await release.wait()
        return await original_append(entries)

    partition.log.append = slow_append  # type: ignore[method-assign]
    answers: list[int] = []

    async def produce() -> None:
        answers.append((await core.append("t", 0, pbatch(5, 0, 0, b"x"))).base_offset)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(produce)
        await trio.testing.wait_all_tasks_blocked()
        nursery.start_soon(produce)  # the retry, while the first is in flight
        await trio.testing.wait_all_tasks_blocked()
        assert answers == []
        release.set()
    assert answers == [0, 0]
    assert await values(core) == [b"x"]


async def test_retry_after_a_failed_append_is_written(core: Core) -> None:
    partition = (await core._topic("t")).partitions[0]
    log: PartitionLog = partition.log
    original_append = log.append
    fail = True

    async def flaky_append(entries: Sequence[EntryIn]) -> list[int]:
        if fail:
            raise StorageError("disk on fire")
        return await original_append(entries)

    log.append = flaky_append  # type: ignore[method-assign]
    with pytest.raises(PartitionUnavailable):
        await core.append("t", 0, pbatch(5, 0, 0, b"x"))
    fail = False
    retried = await core.append("t", 0, pbatch(5, 0, 0, b"x"))  # not a duplicate: not stored
    assert retried.base_offset == 0
    assert await values(core) == [b"x"]


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(1, 4), st.integers(0, MAX_BATCHES + 2)), max_size=40))
def test_retries_never_store_twice_and_get_their_first_offsets(
        steps: list[tuple[int, int]]) -> None:
    """A producer sends batches of ``count`` records, each step followed by a retry of the
    batch ``back`` places behind the newest: every retry within the window is a duplicate
    answered with the first offsets; older ones are refused; the log stays gap-free."""
    state = DedupState()
    sent: list[tuple[int, int, int]] = []  # (first_seq, count, base_offset)
    next_offset = 0
    for count, back in steps:
        seq = sent[-1][0] + sent[-1][1] if sent else 0
        header = Header(3, 0, seq, count)
        assert state.plan([header]) == [None]
        state.record(3, 0, seq, count, next_offset, T0)
        sent.append((seq, count, next_offset))
        next_offset += count
        if back < len(sent):
            first, n, base = sent[-1 - back]
            retry = Header(3, 0, first, n)
            if back < MAX_BATCHES:
                assert state.plan([retry]) == [Duplicate(base, base + n - 1, T0)]
            else:
                with pytest.raises(OutOfOrderSequence):
                    state.plan([retry])
    assert sum(n for _, n, _ in sent) == next_offset
