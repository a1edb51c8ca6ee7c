"""Kafka transactions in process: the services against a ``memory://`` core.

InitProducerId with a transactional id, AddPartitionsToTxn, AddOffsetsToTxn, TxnOffsetCommit,
EndTxn, transactional Produce, ListOffsets and OffsetFetch under transactions, and the admin
APIs (DescribeTransactions, ListTransactions, DescribeProducers).  Real clients are in
``test_kafka_txn_e2e.py``.
"""

from __future__ import annotations

import struct
from collections.abc import AsyncIterator
from typing import Any

import pytest
from test_kafka_service import decoded, fetch_body, partitions_of, produce_body

from core.api import Core, open_core
from core.batch import split_batches
from core.config import CoreSettings
from core.records import Message, build_batch
from handlers.kafka import registry
from handlers.kafka.apis import SUPPORTED_APIS, ApiKey
from handlers.kafka.errors import ErrorCode
from handlers.kafka.groups import coordinator_for
from handlers.kafka.service import ServiceContext, dispatch
from handlers.kafka.service.txn_offset_commit import commit_group_offsets
from storage.memory import open_memory_storage

TID = "app-1"
GROUP = "g1"


@pytest.fixture
async def core() -> AsyncIterator[Core]:
    async with open_memory_storage() as storage, open_core(
            storage, CoreSettings(retention_check_interval_ms=0)) as c:
        yield c


@pytest.fixture
async def ctx(core: Core) -> ServiceContext:
    context = ServiceContext(core=core, namespace="public/default", cluster_id="test",
                             advertised_host="127.0.0.1", advertised_port=9092)
    for name in ("in", "out", "other"):
        await core.create_topic(context.topic_ref(name), 2)
    return context


async def call(ctx: ServiceContext, api: ApiKey, version: int, **fields: Any) -> Any:
    cls = registry.request_class(api, version)
    return await dispatch(ctx, decoded(api, version, cls(**fields)))


async def init(ctx: ServiceContext, tid: str = TID, version: int = 4) -> tuple[int, int]:
    r = await call(ctx, ApiKey.InitProducerId, version, transactional_id=tid,
                   transaction_timeout_ms=60_000, producer_id=-1, producer_epoch=-1)
    assert r.error_code == ErrorCode.NONE
    return r.producer_id, r.producer_epoch


async def add_partitions(ctx: ServiceContext, pid: int, epoch: int,
                         parts: dict[str, list[int]], tid: str = TID, version: int = 3) -> Any:
    cls = registry.request_class(ApiKey.AddPartitionsToTxn, version)
    topics = [cls.AddPartitionsToTxnTopic(name=n, partitions=p) for n, p in parts.items()]
    r = await call(ctx, ApiKey.AddPartitionsToTxn, version, transactions=[],
                   v3_and_below_transactional_id=tid, v3_and_below_producer_id=pid,
                   v3_and_below_producer_epoch=epoch, v3_and_below_topics=topics)
    return {(t.name, p.partition_index): p.partition_error_code
            for t in r.results_by_topic_v3_and_below for p in t.results_by_partition}


def txn_batch(pid: int, epoch: int, seq: int, *values: bytes) -> bytes:
    return build_batch([Message(b"k", v, timestamp_ms=1) for v in values], producer_id=pid,
                       producer_epoch=epoch, base_sequence=seq, transactional=True)


async def produce(ctx: ServiceContext, topic: str, partition: int, records: bytes,
                  tid: str | None = TID) -> Any:
    body = produce_body(topic, {partition: records}, version=9, transactional_id=tid)
    return partitions_of(await dispatch(ctx, decoded(ApiKey.Produce, 9, body)))[0]


async def end(ctx: ServiceContext, pid: int, epoch: int, commit: bool, version: int = 3) -> int:
    r = await call(ctx, ApiKey.EndTxn, version, transactional_id=TID, producer_id=pid,
                   producer_epoch=epoch, committed=commit)
    return int(r.error_code)


async def txn_commit(ctx: ServiceContext, pid: int, epoch: int, offsets: dict[int, int],
                     version: int = 3, generation_id: int = -1, member_id: str = "") -> Any:
    cls = registry.request_class(ApiKey.TxnOffsetCommit, version)
    tcls = cls.TxnOffsetCommitRequestTopic
    parts = [tcls.TxnOffsetCommitRequestPartition(partition_index=i, committed_offset=o,
                                                  committed_leader_epoch=-1,
                                                  committed_metadata="")
             for i, o in offsets.items()]
    r = await call(ctx, ApiKey.TxnOffsetCommit, version, transactional_id=TID, group_id=GROUP,
                   producer_id=pid, producer_epoch=epoch, generation_id=generation_id,
                   member_id=member_id, group_instance_id=None,
                   topics=[tcls(name="in", partitions=parts)])
    return {p.partition_index: p.error_code for t in r.topics for p in t.partitions}


async def latest(ctx: ServiceContext, topic: str, partition: int, isolation: int) -> int:
    cls = registry.request_class(ApiKey.ListOffsets, 5)
    tcls = cls.ListOffsetsTopic
    r = await call(ctx, ApiKey.ListOffsets, 5, replica_id=-1, isolation_level=isolation,
                   topics=[tcls(name=topic, partitions=[tcls.ListOffsetsPartition(
                       partition_index=partition, current_leader_epoch=-1, timestamp=-1)])])
    part = partitions_of(r)[0]
    assert part.error_code == ErrorCode.NONE
    return int(part.offset)


async def fetch_offset(ctx: ServiceContext, partition: int, require_stable: bool
                       ) -> tuple[int, int]:
    cls = registry.request_class(ApiKey.OffsetFetch, 7)
    r = await call(ctx, ApiKey.OffsetFetch, 7, group_id=GROUP, require_stable=require_stable,
                   topics=[cls.OffsetFetchRequestTopic(name="in",
                                                       partition_indexes=[partition])])
    p = r.topics[0].partitions[0]
    return int(p.error_code), int(p.committed_offset)


# -- the tests ------------------------------------------------------------------------------


def test_transaction_apis_are_advertised_below_transactions_v2() -> None:
    for api, top in [(ApiKey.AddPartitionsToTxn, 3), (ApiKey.AddOffsetsToTxn, 4),
                     (ApiKey.EndTxn, 4), (ApiKey.TxnOffsetCommit, 4),
                     (ApiKey.InitProducerId, 5), (ApiKey.DescribeTransactions, 0),
                     (ApiKey.ListTransactions, 0), (ApiKey.DescribeProducers, 0)]:
        assert SUPPORTED_APIS[int(api)].max_version == top


async def test_init_producer_id_bumps_the_epoch_of_a_transactional_id(
        ctx: ServiceContext) -> None:
    pid, epoch = await init(ctx)
    assert (pid, epoch) == (pid, 0) and pid >= 0
    assert await init(ctx) == (pid, 1)
    other, _ = await init(ctx, "app-2")
    assert other != pid
    r = await call(ctx, ApiKey.InitProducerId, 4, transactional_id="bad",
                   transaction_timeout_ms=10**9, producer_id=-1, producer_epoch=-1)
    assert r.error_code == ErrorCode.INVALID_TRANSACTION_TIMEOUT


async def test_commit_makes_data_and_offsets_visible(ctx: ServiceContext, core: Core) -> None:
    await core.append(ctx.topic_ref("out"), 0, build_batch([Message(None, b"plain")]))
    pid, epoch = await init(ctx)
    assert await add_partitions(ctx, pid, epoch, {"out": [0, 1]}) == {
        ("out", 0): 0, ("out", 1): 0}
    r = await call(ctx, ApiKey.AddOffsetsToTxn, 3, transactional_id=TID, producer_id=pid,
                   producer_epoch=epoch, group_id=GROUP)
    assert r.error_code == ErrorCode.NONE
    part = await produce(ctx, "out", 0, txn_batch(pid, epoch, 0, b"a", b"b"))
    assert (part.error_code, part.base_offset) == (ErrorCode.NONE, 1)
    assert await txn_commit(ctx, pid, epoch, {0: 7}) == {0: ErrorCode.NONE}

    # open: READ_COMMITTED stops at the transaction's first offset, the commit is pending
    assert await latest(ctx, "out", 0, isolation=0) == 3
    assert await latest(ctx, "out", 0, isolation=1) == 1
    assert await fetch_offset(ctx, 0, require_stable=True) == (
        ErrorCode.UNSTABLE_OFFSET_COMMIT, -1)
    assert await fetch_offset(ctx, 0, require_stable=False) == (ErrorCode.NONE, -1)

    assert await end(ctx, pid, epoch, commit=True) == ErrorCode.NONE
    assert await latest(ctx, "out", 0, isolation=1) == 4  # data, then the commit marker
    assert await fetch_offset(ctx, 0, require_stable=True) == (ErrorCode.NONE, 7)
    committed = await coordinator_for(core).fetch_offsets(GROUP)
    assert committed[("in", 0)].offset == 7
    read = await core.transactions.read_committed(ctx.topic_ref("out"), 0, 0, 1 << 20)
    assert read.aborted == [] and read.last_stable_offset == 4
    # a retried EndTxn with the same outcome succeeds, the other outcome does not
    assert await end(ctx, pid, epoch, commit=True) == ErrorCode.NONE
    assert await end(ctx, pid, epoch, commit=False) == ErrorCode.INVALID_TXN_STATE


async def test_abort_drops_offsets_and_lists_the_aborted_range(
        ctx: ServiceContext, core: Core) -> None:
    pid, epoch = await init(ctx)
    await add_partitions(ctx, pid, epoch, {"out": [0]})
    await produce(ctx, "out", 0, txn_batch(pid, epoch, 0, b"x"))
    assert await txn_commit(ctx, pid, epoch, {1: 5}) == {1: ErrorCode.NONE}
    assert await end(ctx, pid, epoch, commit=False) == ErrorCode.NONE
    assert await fetch_offset(ctx, 1, require_stable=True) == (ErrorCode.NONE, -1)
    read = await core.transactions.read_committed(ctx.topic_ref("out"), 0, 0, 1 << 20)
    assert [(a.producer_id, a.first_offset, a.last_offset) for a in read.aborted] == [
        (pid, 0, 1)]
    assert read.is_aborted(read.entries[0])
    # the next transaction of the same producer works
    await add_partitions(ctx, pid, epoch, {"out": [0]})
    part = await produce(ctx, "out", 0, txn_batch(pid, epoch, 1, b"y"))
    assert (part.error_code, part.base_offset) == (ErrorCode.NONE, 2)
    assert await end(ctx, pid, epoch, commit=True) == ErrorCode.NONE


async def test_produce_needs_an_added_partition_and_a_transactional_batch(
        ctx: ServiceContext) -> None:
    pid, epoch = await init(ctx)
    part = await produce(ctx, "out", 0, txn_batch(pid, epoch, 0, b"x"))
    assert part.error_code == ErrorCode.INVALID_TXN_STATE  # no transaction open
    await add_partitions(ctx, pid, epoch, {"out": [0]})
    part = await produce(ctx, "out", 1, txn_batch(pid, epoch, 0, b"x"))
    assert part.error_code == ErrorCode.INVALID_TXN_STATE  # partition 1 not added
    plain = build_batch([Message(None, b"p")], producer_id=pid, producer_epoch=epoch,
                        base_sequence=0)
    part = await produce(ctx, "out", 0, plain)
    assert part.error_code == ErrorCode.INVALID_TXN_STATE  # transactional bit missing
    part = await produce(ctx, "out", 0, txn_batch(pid, epoch, 0, b"x"))
    assert part.error_code == ErrorCode.NONE


async def test_add_partitions_refuses_all_when_one_is_unknown(ctx: ServiceContext) -> None:
    pid, epoch = await init(ctx)
    codes = await add_partitions(ctx, pid, epoch, {"out": [0, 9], "nope": [0]})
    assert codes == {("out", 0): ErrorCode.OPERATION_NOT_ATTEMPTED,
                     ("out", 9): ErrorCode.UNKNOWN_TOPIC_OR_PARTITION,
                     ("nope", 0): ErrorCode.UNKNOWN_TOPIC_OR_PARTITION}
    assert ctx.core.transactions.list() == []
    codes = await add_partitions(ctx, pid, epoch, {"out": [0]}, tid="someone-else")
    assert codes == {("out", 0): ErrorCode.INVALID_PRODUCER_ID_MAPPING}


async def test_a_zombie_is_fenced(ctx: ServiceContext, core: Core) -> None:
    pid, old = await init(ctx)
    await add_partitions(ctx, pid, old, {"out": [0]})
    await produce(ctx, "out", 0, txn_batch(pid, old, 0, b"zombie"))
    _, new = await init(ctx)  # aborts the zombie's transaction
    assert new == old + 1
    read = await core.transactions.read_committed(ctx.topic_ref("out"), 0, 0, 1 << 20)
    assert [a.producer_id for a in read.aborted] == [pid]
    assert await add_partitions(ctx, pid, old, {"out": [0]}) == {
        ("out", 0): ErrorCode.PRODUCER_FENCED}
    assert await add_partitions(ctx, pid, old, {"out": [0]}, version=1) == {
        ("out", 0): ErrorCode.INVALID_PRODUCER_EPOCH}
    await add_partitions(ctx, pid, new, {"out": [0]})
    part = await produce(ctx, "out", 0, txn_batch(pid, old, 1, b"late"))
    assert part.error_code == ErrorCode.INVALID_PRODUCER_EPOCH
    assert await txn_commit(ctx, pid, old, {0: 1}) == {0: ErrorCode.PRODUCER_FENCED}
    assert await end(ctx, pid, old, commit=True) == ErrorCode.PRODUCER_FENCED
    assert await end(ctx, pid, new, commit=True) == ErrorCode.NONE


async def test_end_without_a_transaction_is_an_invalid_state(ctx: ServiceContext) -> None:
    pid, epoch = await init(ctx)
    assert await end(ctx, pid, epoch, commit=True) == ErrorCode.INVALID_TXN_STATE


async def test_txn_offset_commit_checks_a_live_group_member(
        ctx: ServiceContext, core: Core) -> None:
    pid, epoch = await init(ctx)
    codes = await txn_commit(ctx, pid, epoch, {0: 3}, generation_id=5, member_id="m")
    assert codes == {0: ErrorCode.NONE}  # the group is not live here: nothing to check
    assert await end(ctx, pid, epoch, commit=True) == ErrorCode.NONE
    assert (await coordinator_for(core).fetch_offsets(GROUP))[("in", 0)].offset == 3


async def test_offset_committer_keeps_other_subscriptions_on_cursors(
        ctx: ServiceContext, core: Core) -> None:
    from core.transactions import OffsetRef
    ref = str(core.parse_topic(ctx.topic_ref("in")).base)
    await commit_group_offsets(core, {OffsetRef("kafka:g2", ref, 1): 4,
                                      OffsetRef("plain-sub", ref, 0): 2})
    assert (await coordinator_for(core).fetch_offsets("g2"))[("in", 1)].offset == 4
    log_name = core.parse_topic(ref).log_name(0)
    cursor = await core.subscriptions.store.load(log_name, "plain-sub")
    assert cursor is not None and cursor.mark_delete == 2


async def test_describe_and_list_transactions_and_producers(ctx: ServiceContext) -> None:
    pid, epoch = await init(ctx)
    await add_partitions(ctx, pid, epoch, {"out": [1]})
    await produce(ctx, "out", 1, txn_batch(pid, epoch, 0, b"x"))

    r = await call(ctx, ApiKey.DescribeTransactions, 0, transactional_ids=[TID, "unknown"])
    found, missing = r.transaction_states
    assert (found.error_code, found.transaction_state, found.producer_id,
            found.producer_epoch) == (ErrorCode.NONE, "Ongoing", pid, epoch)
    assert [(t.topic, list(t.partitions)) for t in found.topics] == [("out", [1])]
    assert missing.error_code == ErrorCode.TRANSACTIONAL_ID_NOT_FOUND

    r = await call(ctx, ApiKey.ListTransactions, 0, state_filters=["Ongoing", "Bogus"],
                   producer_id_filters=[])
    assert list(r.unknown_state_filters) == ["Bogus"]
    assert [(t.transactional_id, t.producer_id, t.transaction_state)
            for t in r.transaction_states] == [(TID, pid, "Ongoing")]

    cls = registry.request_class(ApiKey.DescribeProducers, 0)
    r = await call(ctx, ApiKey.DescribeProducers, 0, topics=[
        cls.TopicRequest(name="out", partition_indexes=[0, 1])])
    p0, p1 = r.topics[0].partitions
    assert p0.active_producers == []
    (active,) = p1.active_producers
    assert (active.producer_id, active.producer_epoch, active.last_sequence,
            active.current_txn_start_offset) == (pid, epoch, 0, 0)

    assert await end(ctx, pid, epoch, commit=True) == ErrorCode.NONE
    r = await call(ctx, ApiKey.DescribeTransactions, 0, transactional_ids=[TID])
    (found,) = r.transaction_states
    assert (found.transaction_state, list(found.topics)) == ("CompleteCommit", [])
    r = await call(ctx, ApiKey.ListTransactions, 0, state_filters=["Ongoing"],
                   producer_id_filters=[pid])
    assert list(r.transaction_states) == []


async def test_offset_fetch_v8_reports_unstable_commits_per_group(
        ctx: ServiceContext, core: Core) -> None:
    pid, epoch = await init(ctx)
    assert core.transactions.offset_committer is commit_group_offsets  # installed by init
    assert await txn_commit(ctx, pid, epoch, {0: 2}) == {0: ErrorCode.NONE}
    cls = registry.request_class(ApiKey.OffsetFetch, 8)
    gcls = cls.OffsetFetchRequestGroup
    groups = [gcls(group_id=g, topics=[gcls.OffsetFetchRequestTopics(
        name="in", partition_indexes=[0])]) for g in (GROUP, "g-other")]
    r = await call(ctx, ApiKey.OffsetFetch, 8, groups=groups, require_stable=True)
    codes = [(g.group_id, g.topics[0].partitions[0].error_code) for g in r.groups]
    assert codes == [(GROUP, ErrorCode.UNSTABLE_OFFSET_COMMIT), ("g-other", ErrorCode.NONE)]
    r = await call(ctx, ApiKey.OffsetFetch, 8, groups=groups, require_stable=False)
    assert [g.topics[0].partitions[0].error_code for g in r.groups] == [0, 0]
    assert await end(ctx, pid, epoch, commit=True) == ErrorCode.NONE


def batches_of(records: bytes) -> list[tuple[int, bool]]:
    """``(base offset, is control)`` of every batch in a Fetch response's records."""
    return [(struct.unpack_from(">q", b.view)[0], b.is_control)
            for b in split_batches(records, 1 << 30, allow_control=True)]


async def fetch_partition(ctx: ServiceContext, topic: str, partition: int, offset: int,
                          isolation: int) -> Any:
    body = fetch_body([(topic, partition, offset)], isolation_level=isolation)
    return partitions_of(await dispatch(ctx, decoded(ApiKey.Fetch, 11, body)))[0]


async def test_read_committed_fetch_stops_at_the_lso_and_lists_aborted_transactions(
        ctx: ServiceContext) -> None:
    pid, epoch = await init(ctx)
    await add_partitions(ctx, pid, epoch, {"out": [0]})
    await produce(ctx, "out", 0, txn_batch(pid, epoch, 0, b"aborted"))  # offset 0
    assert await end(ctx, pid, epoch, commit=False) == ErrorCode.NONE  # marker at 1
    await add_partitions(ctx, pid, epoch, {"out": [0]})
    await produce(ctx, "out", 0, txn_batch(pid, epoch, 1, b"open"))  # offset 2, still open

    part = await fetch_partition(ctx, "out", 0, 0, isolation=1)
    assert (part.high_watermark, part.last_stable_offset) == (3, 2)
    assert list(part.aborted_transactions) == [(pid, 0)]
    # below the LSO, as stored: the aborted batch (the client drops it) and the abort marker
    assert batches_of(part.records) == [(0, False), (1, True)]
    part = await fetch_partition(ctx, "out", 0, 2, isolation=1)
    assert (part.records, part.last_stable_offset) == (b"", 2)
    part = await fetch_partition(ctx, "out", 0, 0, isolation=0)
    assert part.last_stable_offset == 3 and part.aborted_transactions is None
    assert batches_of(part.records) == [(0, False), (1, True), (2, False)]

    assert await end(ctx, pid, epoch, commit=True) == ErrorCode.NONE
    part = await fetch_partition(ctx, "out", 0, 2, isolation=1)
    assert part.last_stable_offset == 4 and list(part.aborted_transactions) == []
    assert batches_of(part.records) == [(2, False), (3, True)]
