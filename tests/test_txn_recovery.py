"""Transactions across restarts: SIGKILL after the commit decision, open transactions,
producer epochs, the aborted index and the coordinator log's checkpoints."""

from __future__ import annotations

import os
import sys
import textwrap
from pathlib import Path

import pytest
import trio
from txn_checker import committed_values, open_test_core, uncommitted_values

from core.batch import read_header
from core.names import TopicName
from core.records import Message
from core.subscriptions import SubscriptionType
from core.transactions import ControlType, TxnState, marker_type
from core.transactions import coordinator as coordinator_module
from core.transactions.state import Transaction
from storage.local import open_local_storage

ROOT = Path(__file__).resolve().parent.parent
TOPICS = ["a", "b", "c"]

CHILD = textwrap.dedent("""
    import os, signal, sys
    from pathlib import Path
    import trio
    from core.records import Message
    from core.subscriptions import SubscriptionType
    from storage.local import open_local_storage
    sys.path.insert(0, os.path.join(sys.argv[2], "tests"))
    from txn_checker import open_test_core

    async def main(path):
        async with open_local_storage(Path(path)) as storage, open_test_core(storage) as core:
            for t in ["a", "b", "c", "in"]:
                await core.create_topic(t)
            await core.append_messages("in", 0, [Message(None, b"input")])
            consumer = await core.subscriptions.subscribe(
                "in", "s", SubscriptionType.SHARED, initial_position=0)
            consumer.flow(1)
            delivery = await consumer.receive()
            await core.subscriptions.flush()
            pid, epoch = await core.transactions.init_producer("crashy", 60_000)
            txn = await core.transactions.begin((pid, epoch))
            await core.transactions.add_partitions(txn, [(t, 0) for t in "abc"])
            for t in "abc":
                await core.transactions.append_messages(txn, t, 0, [Message(None, b"v")])
            core.transactions.ack_in_txn(txn, "in", "s", 0, delivery.offset)
            core.transactions.commit_offsets(txn, "kafka:g", {("in", 0): 1})

            def die(_txn):
                os.kill(os.getpid(), signal.SIGKILL)  # the decision is logged; no markers yet

            core.transactions.after_decision = die
            print("committing", flush=True)
            await core.transactions.end(txn, commit=True)
            print("survived", flush=True)

    trio.run(main, sys.argv[1])
""")


async def test_sigkill_after_the_commit_decision_commits_everywhere(tmp_path: Path) -> None:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = await trio.run_process(
        [sys.executable, "-c", CHILD, str(tmp_path), str(ROOT)], env=env,
        capture_stdout=True, capture_stderr=True, check=False)
    assert proc.returncode == -9, proc.stderr.decode()
    assert proc.stdout.decode().split() == ["committing"]
    async with open_local_storage(tmp_path) as storage:
        for t in TOPICS:  # before recovery: the data, no marker
            raw = await storage.open_log(TopicName.parse(t).log_name(0))
            assert raw.end_position - raw.start_position == 1
        async with open_test_core(storage) as core:
            for t in TOPICS:
                assert [v for _, v in await committed_values(core, t)] == [b"v"]
                entries = await core.read(t, 0, 0, 1 << 20)
                assert [read_header(e.batch).is_control for e in entries] == [False, True]
                assert marker_type(entries[1].batch) is ControlType.COMMIT
                assert await core.transactions.last_stable_offset(t, 0) == 2
            assert core.transactions.list() == []
            sub = core.subscriptions.get("in", "s")
            assert sub is not None and (await sub.info()).backlog == 0  # the ack took effect
            stored = await core.subscriptions.store.load(core.parse_topic("in").log_name(0),
                                                         "kafka:g")
            assert stored is not None and stored.mark_delete == 1
            _pid, epoch = await core.transactions.init_producer("crashy", 60_000)
            assert epoch == 1  # the producer mapping survived too
        async with open_test_core(storage) as core:  # recovery is not repeated
            for t in TOPICS:
                assert len(await core.read(t, 0, 0, 1 << 20)) == 2


class Boom(Exception):
    pass


async def test_decided_abort_is_finished_after_restart(tmp_path: Path) -> None:
    async with open_local_storage(tmp_path) as storage:
        async with open_test_core(storage) as core:
            await core.create_topic("a")
            txn = await core.transactions.begin()
            await core.transactions.add_partitions(txn, [("a", 0)])
            await core.transactions.append_messages(txn, "a", 0, [Message(None, b"x")])

            def fail(_txn: Transaction) -> None:
                raise Boom

            core.transactions.after_decision = fail
            with pytest.raises(Boom):
                await core.transactions.end(txn, commit=False)
            assert core.transactions.describe(txn).state is TxnState.PREPARE_ABORT
            assert await core.transactions.last_stable_offset("a", 0) == 0
        async with open_test_core(storage) as core:
            assert core.transactions.describe(txn).state is TxnState.COMPLETE_ABORT
            assert await committed_values(core, "a") == []
            assert await core.transactions.last_stable_offset("a", 0) == 2


async def test_open_transactions_and_the_aborted_index_survive_restart(tmp_path: Path) -> None:
    async with open_local_storage(tmp_path) as storage:
        async with open_test_core(storage) as core:
            await core.create_topic("a")
            aborted = await core.transactions.begin()
            await core.transactions.add_partitions(aborted, [("a", 0)])
            await core.transactions.append_messages(aborted, "a", 0, [Message(None, b"no")])
            await core.transactions.end(aborted, commit=False)
            pid, epoch = await core.transactions.init_producer("p", 60_000)
            open_txn = await core.transactions.begin((pid, epoch))
            await core.transactions.add_partitions(open_txn, [("a", 0)])
            await core.transactions.append_messages(open_txn, "a", 0, [Message(None, b"yes")])
        async with open_test_core(storage) as core:  # the named producer's txn stays open
            assert [i.txn_id for i in core.transactions.list()] == [open_txn]
            assert core.transactions.describe(open_txn).state is TxnState.ONGOING
            assert await core.transactions.last_stable_offset("a", 0) == 2
            read = await core.transactions.read_committed("a", 0, 0, 1 << 20)
            assert [a.producer_id for a in read.aborted] == [aborted.producer_id]
            await core.transactions.end(open_txn, commit=True)
            assert [v for _, v in await committed_values(core, "a")] == [b"yes"]
            assert [v for _, v in await uncommitted_values(core, "a")] == [b"no", b"yes"]


async def test_an_anonymous_open_transaction_is_aborted_at_restart(tmp_path: Path) -> None:
    # an AMQP channel's transaction has no transactional id: nobody can finish it after a
    # restart, and left open it would hold the topic's last stable offset until it timed out
    async with open_local_storage(tmp_path) as storage:
        async with open_test_core(storage) as core:
            await core.create_topic("a")
            txn = await core.transactions.begin()
            await core.transactions.add_partitions(txn, [("a", 0)])
            await core.transactions.append_messages(txn, "a", 0, [Message(None, b"lost")])
        async with open_test_core(storage) as core:
            assert core.transactions.describe(txn).state is TxnState.COMPLETE_ABORT
            assert core.transactions.list() == []
            await core.append_messages("a", 0, [Message(None, b"later")])
            assert [v for _, v in await committed_values(core, "a")] == [b"later"]


async def test_a_transaction_fenced_before_a_crash_is_aborted_at_restart(tmp_path: Path) -> None:
    async with open_local_storage(tmp_path) as storage:
        async with open_test_core(storage) as core:
            await core.create_topic("a")
            pid, epoch = await core.transactions.init_producer("p", 60_000)
            txn = await core.transactions.begin((pid, epoch))
            await core.transactions.add_partitions(txn, [("a", 0)])
            await core.transactions.append_messages(txn, "a", 0, [Message(None, b"z")])
            # the epoch bump is logged, then the coordinator "crashes" before aborting
            core.transactions._by_tid["p"].epoch += 1
            await core.transactions._log_records(core.transactions._by_tid["p"].record())
        async with open_test_core(storage) as core:
            assert core.transactions.describe(txn).state is TxnState.COMPLETE_ABORT
            assert await committed_values(core, "a") == []


async def test_the_coordinator_log_is_checkpointed(tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(coordinator_module, "CHECKPOINT_EVERY", 20)
    async with open_local_storage(tmp_path, segment_bytes=1024) as storage:
        async with open_test_core(storage) as core:
            await core.create_topic("a")
            pid, epoch = await core.transactions.init_producer("p", 60_000)
            for i in range(30):
                txn = await core.transactions.begin((pid, epoch))
                await core.transactions.add_partitions(txn, [("a", 0)])
                await core.transactions.append_messages(txn, "a", 0, [Message(None, b"%d" % i)])
                await core.transactions.end(txn, commit=i % 2 == 0)
            await trio.testing.wait_all_tasks_blocked()
            assert core.transactions._log.entries < 90  # segments before a checkpoint went
            last = await core.transactions.begin((pid, epoch))
            await core.transactions.add_partitions(last, [("a", 0)])  # logged from here
        async with open_test_core(storage) as core:
            assert [i.txn_id for i in core.transactions.list()] == [last]
            pid2, epoch2 = await core.transactions.init_producer("p", 60_000)
            assert (pid2, epoch2) == (pid, epoch + 1)
            values = [v for _, v in await committed_values(core, "a")]
            assert values == [b"%d" % i for i in range(0, 30, 2)]


async def test_a_subscription_consumes_a_recovered_stream(tmp_path: Path) -> None:
    async with open_local_storage(tmp_path) as storage:
        async with open_test_core(storage) as core:
            await core.create_topic("a")
            for commit in (True, False, True):
                txn = await core.transactions.begin()
                await core.transactions.add_partitions(txn, [("a", 0)])
                await core.transactions.append_messages(
                    txn, "a", 0, [Message(None, b"c" if commit else b"x")])
                await core.transactions.end(txn, commit=commit)
        async with open_test_core(storage) as core:
            consumer = await core.subscriptions.subscribe("a", "s", SubscriptionType.EXCLUSIVE,
                                                          initial_position=0)
            consumer.flow(10)
            with trio.fail_after(5):
                got = [(await consumer.receive()).message.value for _ in range(2)]
            assert got == [b"c", b"c"]
