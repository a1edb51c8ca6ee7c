"""Transactions through the core API: visibility, markers, acks, offsets, fencing, errors."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
import trio
import trio.testing
from txn_checker import committed_values, open_test_core, uncommitted_values

from core.api import Core
from core.batch import read_header
from core.cursor_store import CursorStore
from core.errors import PartitionUnavailable
from core.partition import AppendResult
from core.records import Message, build_batch, decode_batch
from core.subscriptions import Consumer, SubscriptionType
from core.transactions import (
    AckConflict,
    ControlType,
    InvalidTransactionTimeout,
    InvalidTxnState,
    PartitionNotInTransaction,
    ProducerFenced,
    TooManyTransactions,
    TransactionTimedOut,
    TxnState,
    UnknownTransaction,
    marker_type,
)
from core.transactions.state import TxnId
from core.transactions.visibility import IsolationLevel
from storage.api import Storage
from storage.memory import open_memory_storage

TOPICS = ["a", "b", "c"]


@pytest.fixture
async def core(storage: Storage) -> AsyncIterator[Core]:
    async with open_test_core(storage) as c:
        for t in [*TOPICS, "in"]:
            await c.create_topic(t)
        yield c


def msg(value: bytes) -> Message:
    return Message(None, value)


async def values(core: Core, topic: str) -> list[bytes | None]:
    return [v for _, v in await committed_values(core, topic)]


async def write_all(core: Core, txn: TxnId, value: bytes) -> None:
    await core.transactions.add_partitions(txn, [(t, 0) for t in TOPICS])
    for t in TOPICS:
        await core.transactions.append_messages(txn, t, 0, [msg(value)])


async def receive(consumer: Consumer, n: int) -> list[int]:
    offsets = []
    with trio.fail_after(5):
        for _ in range(n):
            offsets.append((await consumer.receive()).offset)
    return offsets


async def test_commit_makes_three_topics_visible_at_once(core: Core) -> None:
    await core.append_messages("a", 0, [msg(b"plain")])
    txn = await core.transactions.begin()
    await write_all(core, txn, b"t1")
    for t in TOPICS:
        # in the log, but not visible to READ_COMMITTED readers
        assert (await uncommitted_values(core, t))[-1][1] == b"t1"
        assert b"t1" not in await values(core, t)
    assert await core.transactions.last_stable_offset("a", 0) == 1
    assert await values(core, "a") == [b"plain"]
    await core.transactions.end(txn, commit=True)
    for t in TOPICS:
        assert (await values(core, t))[-1] == b"t1"
        assert await core.transactions.last_stable_offset(t, 0) == await core.latest_offset(t, 0)
    assert core.transactions.describe(txn).state is TxnState.COMPLETE_COMMIT
    assert core.transactions.list() == []


async def test_abort_makes_nothing_visible_and_reports_aborted_ranges(core: Core) -> None:
    txn = await core.transactions.begin()
    await write_all(core, txn, b"gone")
    await core.transactions.end(txn, commit=False)
    await core.append_messages("a", 0, [msg(b"after")])
    for t in TOPICS:
        assert b"gone" not in await values(core, t)
    assert await values(core, "a") == [b"after"]
    read = await core.transactions.read_committed("a", 0, 0, 1 << 20)
    assert [(x.producer_id, x.first_offset) for x in read.aborted] == [(txn.producer_id, 0)]
    assert read.last_stable_offset == read.high_watermark == 3
    # the Kafka fetch path returns the marker (as Kafka does) ...
    kinds = [read_header(e.batch).is_control for e in read.entries]
    assert kinds == [False, True, False]
    assert marker_type(read.entries[1].batch) is ControlType.ABORT
    # ... READ_UNCOMMITTED sees the data but never the marker
    assert [v for _, v in await uncommitted_values(core, "a")] == [b"gone", b"after"]


async def test_read_committed_stops_at_the_open_transaction(core: Core) -> None:
    await core.append_messages("a", 0, [msg(b"0")])
    txn = await core.transactions.begin()
    await core.transactions.add_partitions(txn, [("a", 0)])
    await core.transactions.append_messages(txn, "a", 0, [msg(b"open")])
    await core.append_messages("a", 0, [msg(b"later")])  # non-transactional, after it
    assert await values(core, "a") == [b"0"]
    read = await core.transactions.read_committed("a", 0, 1, 1 << 20)
    assert read.entries == [] and read.last_stable_offset == 1 and read.high_watermark == 3
    await core.transactions.end(txn, commit=True)
    assert await values(core, "a") == [b"0", b"open", b"later"]


async def test_transactional_acks_take_effect_at_commit(core: Core) -> None:
    for i in range(3):
        await core.append_messages("in", 0, [msg(b"%d" % i)])
    consumer = await core.subscriptions.subscribe("in", "s", SubscriptionType.SHARED,
                                                  initial_position=0)
    consumer.flow(10)
    offsets = await receive(consumer, 3)
    txn = await core.transactions.begin()
    for o in offsets:
        core.transactions.ack_in_txn(txn, "in", "s", 0, o)
    await write_all(core, txn, b"out")
    sub = core.subscriptions.get("in", "s")
    assert sub is not None
    assert (await sub.info()).backlog == 3  # not acked yet
    await core.transactions.end(txn, commit=True)
    assert (await sub.info()).backlog == 0
    await core.subscriptions.flush()
    stored = await CursorStore(core.storage.metadata).load(
        core.parse_topic("in").log_name(0), "s")
    assert stored is not None and stored.mark_delete == 3


async def test_abort_redelivers_the_acked_messages(core: Core) -> None:
    for i in range(2):
        await core.append_messages("in", 0, [msg(b"%d" % i)])
    consumer = await core.subscriptions.subscribe("in", "s", SubscriptionType.SHARED,
                                                  initial_position=0)
    consumer.flow(10)
    offsets = await receive(consumer, 2)
    txn = await core.transactions.begin()
    for o in offsets:
        core.transactions.ack_in_txn(txn, "in", "s", 0, o)
    other = await core.transactions.begin()
    with pytest.raises(AckConflict):  # one message, one transaction
        core.transactions.ack_in_txn(other, "in", "s", 0, offsets[0])
    await write_all(core, txn, b"out")
    await core.transactions.end(txn, commit=False)
    again = []
    with trio.fail_after(5):
        for _ in range(2):
            d = await consumer.receive()
            again.append((d.offset, d.redelivery_count))
    assert sorted(again) == [(0, 1), (1, 1)]
    for t in TOPICS:
        assert await values(core, t) == []
    # now the other transaction may take them
    core.transactions.ack_in_txn(other, "in", "s", 0, offsets[0])
    await core.transactions.end(other, commit=True)
    sub = core.subscriptions.get("in", "s")
    assert sub is not None and (await sub.info()).backlog == 1


async def test_ack_of_an_undelivered_message_is_refused(core: Core) -> None:
    await core.append_messages("in", 0, [msg(b"x")])
    await core.subscriptions.subscribe("in", "s", initial_position=0)
    txn = await core.transactions.begin()
    with pytest.raises(AckConflict):
        core.transactions.ack_in_txn(txn, "in", "s", 0, 0)  # no permits: not delivered
    with pytest.raises(AckConflict):
        core.transactions.ack_in_txn(txn, "in", "nosuch", 0, 0)


async def test_offset_commits_in_a_transaction(core: Core) -> None:
    store = CursorStore(core.storage.metadata)
    log_name = core.parse_topic("in").log_name(0)
    txn = await core.transactions.begin()
    core.transactions.commit_offsets(txn, "kafka:g", {("in", 0): 7})
    await core.transactions.end(txn, commit=False)
    assert await store.load(log_name, "kafka:g") is None
    txn = await core.transactions.begin()
    core.transactions.commit_offsets(txn, "kafka:g", {("in", 0): 5})
    assert core.transactions.describe(txn).offset_commits == 1
    assert core.transactions.has_pending_offsets("kafka:g", "in", 0)
    await core.transactions.end(txn, commit=True)
    assert not core.transactions.has_pending_offsets("kafka:g", "in", 0)
    stored = await store.load(log_name, "kafka:g")
    assert stored is not None and stored.mark_delete == 5


async def test_read_committed_subscription_delivers_only_committed_data(core: Core) -> None:
    committed_sub = await core.subscriptions.subscribe("a", "rc", initial_position=0)
    uncommitted_sub = await core.subscriptions.subscribe(
        "a", "ru", initial_position=0, isolation=IsolationLevel.READ_UNCOMMITTED)
    committed_sub.flow(10)
    uncommitted_sub.flow(10)
    t1 = await core.transactions.begin()
    await core.transactions.add_partitions(t1, [("a", 0)])
    await core.transactions.append_messages(t1, "a", 0, [msg(b"aborted")])
    t2 = await core.transactions.begin()
    await core.transactions.add_partitions(t2, [("a", 0)])
    await core.transactions.append_messages(t2, "a", 0, [msg(b"committed")])
    await core.append_messages("a", 0, [msg(b"plain")])
    with trio.fail_after(5):
        seen_ru = [(await uncommitted_sub.receive()).message.value for _ in range(3)]
    assert seen_ru == [b"aborted", b"committed", b"plain"]
    await trio.testing.wait_all_tasks_blocked()
    assert committed_sub.queued == 0  # held back at the LSO
    await core.transactions.end(t2, commit=True)
    await trio.testing.wait_all_tasks_blocked()
    assert committed_sub.queued == 0  # t1 is still open below t2
    await core.transactions.end(t1, commit=False)
    with trio.fail_after(5):
        seen = [(await committed_sub.receive()).message.value for _ in range(2)]
    assert seen == [b"committed", b"plain"]
    await trio.testing.wait_all_tasks_blocked()
    assert committed_sub.queued == 0  # no markers, no aborted data
    sub = core.subscriptions.get("a", "rc")
    assert sub is not None and (await sub.info()).backlog == 2  # aborted data was skipped


async def test_timeout_aborts_abandoned_transactions(autojump_clock: trio.testing.MockClock
                                                     ) -> None:
    # MockClock with autojump: a 30 s timeout passes without waiting (memory storage:
    # no worker threads the clock would jump past)
    async with open_memory_storage() as storage, open_test_core(storage) as core:
        await core.create_topic("a")
        txn = await core.transactions.begin(timeout_ms=30_000)
        await core.transactions.add_partitions(txn, [("a", 0)])
        await core.transactions.append_messages(txn, "a", 0, [msg(b"x")])
        await trio.sleep(29)
        assert core.transactions.describe(txn).state is TxnState.ONGOING
        await trio.sleep(2)
        await trio.testing.wait_all_tasks_blocked()
        info = core.transactions.describe(txn)
        assert info.state is TxnState.COMPLETE_ABORT and info.timed_out
        with pytest.raises(TransactionTimedOut):
            await core.transactions.append_messages(txn, "a", 0, [msg(b"y")])
        with pytest.raises(TransactionTimedOut):
            await core.transactions.end(txn, commit=True)
        await core.transactions.end(txn, commit=False)  # an abort retry is fine
        assert await values(core, "a") == []
        assert await core.transactions.last_stable_offset("a", 0) == 2


async def test_zombie_producer_is_fenced(core: Core) -> None:
    pid, epoch = await core.transactions.init_producer("app", 10_000)
    zombie = await core.transactions.begin((pid, epoch))
    await core.transactions.add_partitions(zombie, [("a", 0)])
    await core.transactions.append_messages(zombie, "a", 0, [msg(b"zombie")])
    pid2, epoch2 = await core.transactions.init_producer("app", 10_000)
    assert (pid2, epoch2) == (pid, epoch + 1)
    # the zombie's open transaction was aborted; everything it tries now fails
    assert core.transactions.describe(zombie).state is TxnState.COMPLETE_ABORT
    with pytest.raises(ProducerFenced):
        await core.transactions.append_messages(zombie, "a", 0, [msg(b"late")])
    with pytest.raises(ProducerFenced):
        await core.transactions.end(zombie, commit=True)
    with pytest.raises(ProducerFenced):
        await core.transactions.begin((pid, epoch))
    stale = build_batch([msg(b"raw")], producer_id=pid, producer_epoch=epoch, base_sequence=1,
                        transactional=True)
    with pytest.raises(ProducerFenced):
        await core.transactions.append(zombie, "a", 0, stale)
    fresh = await core.transactions.begin((pid2, epoch2))
    await core.transactions.add_partitions(fresh, [("a", 0)])
    await core.transactions.append_messages(fresh, "a", 0, [msg(b"new")])
    await core.transactions.end(fresh, commit=True)
    assert await values(core, "a") == [b"new"]


async def test_kafka_style_raw_batches(core: Core) -> None:
    pid, epoch = await core.transactions.init_producer("k", 10_000)
    txn = await core.transactions.ensure_open(pid, epoch)
    assert await core.transactions.ensure_open(pid, epoch) == txn
    assert core.transactions.current(pid) == txn
    batch = build_batch([msg(b"k0"), msg(b"k1")], producer_id=pid, producer_epoch=epoch,
                        base_sequence=0, transactional=True)
    with pytest.raises(PartitionNotInTransaction):
        await core.transactions.append(txn, "a", 0, batch)
    await core.transactions.add_partitions(txn, [("a", 0)])
    plain = build_batch([msg(b"p")], producer_id=pid, producer_epoch=epoch, base_sequence=0)
    with pytest.raises(InvalidTxnState):
        await core.transactions.append(txn, "a", 0, plain)
    result = await core.transactions.append(txn, "a", 0, batch)
    assert (result.base_offset, result.last_offset) == (0, 1)
    await core.transactions.end(txn, commit=True)
    await core.transactions.end(txn, commit=True)  # a retried EndTxn succeeds
    assert await values(core, "a") == [b"k0", b"k1"]
    assert core.transactions.current(pid) is None


async def test_errors_and_limits(core: Core) -> None:
    core.transactions.max_open = 2
    t1 = await core.transactions.begin()
    await core.transactions.begin()
    with pytest.raises(TooManyTransactions):
        await core.transactions.begin()
    with pytest.raises(UnknownTransaction):
        await core.transactions.end(TxnId(999, 0, 999), commit=True)
    with pytest.raises(InvalidTransactionTimeout):
        await core.transactions.init_producer("x", 0)
    await core.transactions.end(t1, commit=True)
    with pytest.raises(InvalidTxnState):
        await core.transactions.add_partitions(t1, [("a", 0)])
    with pytest.raises(InvalidTxnState):
        await core.transactions.end(t1, commit=False)
    pid, epoch = await core.transactions.init_producer("y", 1000)
    core.transactions.max_open = 10
    await core.transactions.begin((pid, epoch))
    with pytest.raises(InvalidTxnState):  # one transaction per producer at a time
        await core.transactions.begin((pid, epoch))
    assert len(core.transactions.list()) == 2


async def test_marker_bytes_decode_as_control_records(core: Core) -> None:
    txn = await core.transactions.begin()
    await core.transactions.add_partitions(txn, [("a", 0)])
    await core.transactions.append_messages(txn, "a", 0, [msg(b"v")])
    await core.transactions.end(txn, commit=True)
    entries = await core.read("a", 0, 0, 1 << 20)
    (control,) = decode_batch(entries[1].batch)
    assert control.control and control.message.key == b"\x00\x00\x00\x01"


async def test_a_failed_marker_write_is_retried_until_it_lands(
        autojump_clock: trio.testing.MockClock, monkeypatch: pytest.MonkeyPatch) -> None:
    async with open_memory_storage() as storage, open_test_core(storage) as core:
        await core.create_topic("a")
        txn = await core.transactions.begin()
        await core.transactions.add_partitions(txn, [("a", 0)])
        await core.transactions.append_messages(txn, "a", 0, [msg(b"v")])
        real_append = core.append
        failing = [True]

        async def flaky(*args: Any, **kwargs: Any) -> AppendResult:
            if failing[0]:
                raise PartitionUnavailable("disk on fire")
            return await real_append(*args, **kwargs)

        monkeypatch.setattr(core, "append", flaky)
        with pytest.raises(PartitionUnavailable):  # typed, not an exception group
            await core.transactions.end(txn, commit=True)
        assert core.transactions.describe(txn).state is TxnState.PREPARE_COMMIT
        assert await values(core, "a") == []  # no marker yet: held back at the LSO
        failing[0] = False
        await trio.sleep(10)
        assert core.transactions.describe(txn).state is TxnState.COMPLETE_COMMIT
        await core.transactions.end(txn, commit=True)
        assert await values(core, "a") == [b"v"]
        assert [read_header(e.batch).is_control
                for e in await core.read("a", 0, 0, 1 << 20)] == [False, True]
