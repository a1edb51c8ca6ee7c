"""Kafka consumer groups in process: the sans-IO group state machine, the trio coordinator under
``MockClock``, and the group services against a ``memory://`` core."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
import trio
import trio.testing
from test_kafka_service import decoded

from core.api import Core, open_core
from core.config import CoreSettings
from core.cursor_store import CursorStore
from handlers.kafka import registry
from handlers.kafka.apis import ApiKey
from handlers.kafka.errors import ErrorCode
from handlers.kafka.groups import (
    CommittedOffset,
    Group,
    GroupConfig,
    GroupCoordinator,
    GroupState,
    JoinResult,
    OffsetStore,
    Parked,
    SyncResult,
    coordinator_for,
    subscription_name,
)
from handlers.kafka.service import ServiceContext, dispatch
from storage.memory import open_memory_storage

SESSION = 10_000
REBALANCE = 30_000


def subscription(*topics: str) -> bytes:
    """A ConsumerProtocolSubscription v0 naming ``topics``."""
    out = bytearray(b"\x00\x00") + len(topics).to_bytes(4, "big")
    for t in topics:
        out += len(t).to_bytes(2, "big") + t.encode()
    return bytes(out + b"\xff\xff\xff\xff")


def join(group: Group, now: int, member_id: str = "", *, instance: str | None = None,
         protocols: list[tuple[str, bytes]] | None = None, protocol_type: str = "consumer",
         session: int = SESSION, require_known: bool = False) -> JoinResult | Parked:
    return group.join(now, member_id=member_id, instance_id=instance, client_id="c",
                      client_host="/127.0.0.1", session_timeout_ms=session,
                      rebalance_timeout_ms=REBALANCE, protocol_type=protocol_type,
                      protocols=[("range", b"r"), ("roundrobin", b"rr")] if protocols is None
                      else protocols,
                      require_known_member_id=require_known)


def joined(outcome: JoinResult | Parked) -> JoinResult:
    assert isinstance(outcome, JoinResult), outcome
    return outcome


def taken(group: Group, outcome: JoinResult | SyncResult | Parked) -> JoinResult | SyncResult:
    assert isinstance(outcome, Parked), outcome
    result = group.take_result(outcome.ticket)
    assert result is not None
    return result


def sync(group: Group, now: int, member_id: str, generation: int,
         assignments: dict[str, bytes] | None = None, instance: str | None = None
         ) -> SyncResult | Parked:
    return group.sync(now, member_id=member_id, generation_id=generation, instance_id=instance,
                      protocol_type=None, protocol_name=None,
                      assignments=list((assignments or {}).items()))


def stable_pair(group: Group) -> tuple[str, str]:
    """Bring ``group`` to Stable with two members (leader first); return their ids."""
    a = joined(join(group, 0)).member_id
    assert isinstance(sync(group, 0, a, 1, {a: b"A"}), SyncResult)
    parked_b = join(group, 1)
    assert isinstance(parked_b, Parked)
    assert group.heartbeat(2, member_id=a, generation_id=1, instance_id=None) == (
        ErrorCode.REBALANCE_IN_PROGRESS)
    rejoin_a = joined(join(group, 3, a))
    b = group.take_result(parked_b.ticket)
    assert isinstance(b, JoinResult)
    assert rejoin_a.generation_id == b.generation_id == 2
    parked = sync(group, 4, b.member_id, 2)
    assert isinstance(parked, Parked)
    assert sync(group, 5, a, 2, {a: b"A2", b.member_id: b"B2"}) == SyncResult(
        ErrorCode.NONE, b"A2", "consumer", "range")
    assert group.take_result(parked.ticket) == SyncResult(ErrorCode.NONE, b"B2", "consumer",
                                                          "range")
    assert group.state is GroupState.STABLE
    return a, b.member_id


# -- the state machine ---------------------------------------------------------------------------


def test_single_member_joins_and_syncs() -> None:
    group = Group("g")
    result = joined(join(group, 0))
    assert result.error == ErrorCode.NONE and result.generation_id == 1
    assert result.leader_id == result.member_id
    assert result.members == ((result.member_id, None, b"r"),)
    assert result.protocol_name == "range"
    assert group.state is GroupState.COMPLETING_REBALANCE
    assert sync(group, 1, result.member_id, 1, {result.member_id: b"x"}).assignment == b"x"
    assert group.state is GroupState.STABLE
    # a follower rejoining without changes in a Stable group is answered at once, no rebalance
    assert group.heartbeat(2, member_id=result.member_id, generation_id=1,
                           instance_id=None) == ErrorCode.NONE


def test_member_id_required_then_join() -> None:
    group = Group("g")
    first = joined(join(group, 0, require_known=True))
    assert first.error == ErrorCode.MEMBER_ID_REQUIRED and first.member_id
    assert group.state is GroupState.EMPTY and first.member_id in group.pending
    second = joined(join(group, 1, first.member_id, require_known=True))
    assert second.error == ErrorCode.NONE and second.member_id == first.member_id
    # an unused pending id expires after the session timeout
    other = joined(join(group, 2, require_known=True))
    assert group.next_deadline() is not None
    group.tick(2 + SESSION)
    assert other.member_id not in group.pending


def test_two_members_rebalance_and_follower_waits_for_the_leader() -> None:
    group = Group("g")
    a, b = stable_pair(group)
    assert group.leader_id == a and set(group.members) == {a, b}
    assert group.heartbeat(6, member_id=b, generation_id=2, instance_id=None) == ErrorCode.NONE
    assert group.heartbeat(6, member_id=b, generation_id=1, instance_id=None) == (
        ErrorCode.ILLEGAL_GENERATION)
    assert group.heartbeat(6, member_id="nobody", generation_id=2, instance_id=None) == (
        ErrorCode.UNKNOWN_MEMBER_ID)


def test_protocol_selection_and_inconsistent_protocols() -> None:
    group = Group("g")
    leader = joined(join(group, 0, protocols=[("sticky", b"s"), ("range", b"r")]))
    assert leader.protocol_name == "sticky"
    assert joined(join(group, 1, protocol_type="connect")).error == (
        ErrorCode.INCONSISTENT_GROUP_PROTOCOL)
    assert joined(join(group, 1, protocols=[("roundrobin", b"")])).error == (
        ErrorCode.INCONSISTENT_GROUP_PROTOCOL)
    # the new member supports only range: the leader's second choice is what all support
    parked = join(group, 2, protocols=[("range", b"r2")])
    assert isinstance(parked, Parked)
    rejoined = joined(join(group, 3, leader.member_id,
                           protocols=[("sticky", b"s"), ("range", b"r")]))
    assert rejoined.protocol_name == "range"
    assert sorted(m[2] for m in rejoined.members) == [b"r", b"r2"]
    assert joined(join(Group("h"), 0, protocols=[])).error == (
        ErrorCode.INCONSISTENT_GROUP_PROTOCOL)


def test_invalid_session_timeout() -> None:
    group = Group("g", GroupConfig(min_session_timeout_ms=1000, max_session_timeout_ms=5000))
    assert joined(join(group, 0, session=999)).error == ErrorCode.INVALID_SESSION_TIMEOUT
    assert joined(join(group, 0, session=5001)).error == ErrorCode.INVALID_SESSION_TIMEOUT
    assert group.state is GroupState.EMPTY


def test_session_expiry_triggers_rebalance() -> None:
    group = Group("g")
    a, b = stable_pair(group)
    group.heartbeat(1000, member_id=a, generation_id=2, instance_id=None)
    deadline = group.next_deadline()
    assert deadline == 5 + SESSION  # b's session: its last contact was its SyncGroup at 5
    group.tick(deadline - 1)
    assert b in group.members
    group.tick(deadline)
    assert b not in group.members and group.state is GroupState.PREPARING_REBALANCE
    result = joined(join(group, deadline + 1, a))
    assert result.generation_id == 3 and [m[0] for m in result.members] == [a]


def test_member_that_does_not_rejoin_is_removed_at_the_rebalance_timeout() -> None:
    group = Group("g")
    a, b = stable_pair(group)
    parked = join(group, 100, a, protocols=[("range", b"changed")])  # a changes: rebalance
    assert isinstance(parked, Parked) and group.state is GroupState.PREPARING_REBALANCE
    for now in range(200, REBALANCE, 5000):  # b keeps its session alive but does not rejoin
        assert group.heartbeat(now, member_id=b, generation_id=2, instance_id=None) == (
            ErrorCode.REBALANCE_IN_PROGRESS)
        group.tick(now)
    group.tick(100 + REBALANCE - 1)
    assert group.take_result(parked.ticket) is None
    group.tick(100 + REBALANCE)
    result = group.take_result(parked.ticket)
    assert isinstance(result, JoinResult) and result.generation_id == 3
    assert list(group.members) == [a]


def test_last_member_leaving_empties_the_group() -> None:
    group = Group("g")
    a = joined(join(group, 0)).member_id
    sync(group, 0, a, 1, {a: b""})
    assert group.leave(1, member_id="nobody", instance_id=None) == ErrorCode.UNKNOWN_MEMBER_ID
    assert group.leave(1, member_id=a, instance_id=None) == ErrorCode.NONE
    assert group.state is GroupState.EMPTY and group.is_empty
    assert group.generation_id == 2 and group.protocol_name is None


def test_static_member_rejoins_without_rebalance_and_old_id_is_fenced() -> None:
    group = Group("g")
    leader = joined(join(group, 0, instance="i-a"))
    sync(group, 0, leader.member_id, 1, {leader.member_id: b"A"})
    again = joined(join(group, 10, instance="i-a"))  # restarted: no member id, same protocols
    assert again.error == ErrorCode.NONE and again.member_id != leader.member_id
    assert again.generation_id == 1 and group.state is GroupState.STABLE
    assert again.leader_id == leader.member_id  # the old id: the new one must not assign
    assert group.leader_id == again.member_id
    assert sync(group, 11, again.member_id, 1, instance="i-a").assignment == b"A"
    assert group.heartbeat(12, member_id=leader.member_id, generation_id=1,
                           instance_id="i-a") == ErrorCode.FENCED_INSTANCE_ID
    assert group.leave(13, member_id=leader.member_id, instance_id="i-a") == (
        ErrorCode.FENCED_INSTANCE_ID)
    # a restart with different protocols does rebalance
    changed = joined(join(group, 14, instance="i-a", protocols=[("range", b"new")]))
    assert changed.generation_id == group.generation_id == 2
    # static members leave by instance id
    current = group.static_members["i-a"]
    assert group.leave(15, member_id="", instance_id="i-a") == ErrorCode.NONE
    assert current not in group.members and group.state is GroupState.EMPTY


def test_sync_errors() -> None:
    group = Group("g")
    a, b = stable_pair(group)
    assert sync(group, 10, a, 1) == SyncResult(ErrorCode.ILLEGAL_GENERATION)
    assert sync(group, 10, "nobody", 2) == SyncResult(ErrorCode.UNKNOWN_MEMBER_ID)
    assert group.sync(10, member_id=a, generation_id=2, instance_id=None,
                      protocol_type="consumer", protocol_name="roundrobin", assignments=[]) == (
        SyncResult(ErrorCode.INCONSISTENT_GROUP_PROTOCOL))
    join(group, 11, a, protocols=[("range", b"other")])
    assert sync(group, 12, b, 2) == SyncResult(ErrorCode.REBALANCE_IN_PROGRESS)


def test_commit_validation() -> None:
    group = Group("g")
    assert group.check_commit(0, member_id="", generation_id=-1, instance_id=None) == (
        ErrorCode.NONE)  # a simple commit into an empty group
    a = joined(join(group, 0)).member_id
    assert group.check_commit(1, member_id=a, generation_id=1, instance_id=None) == (
        ErrorCode.REBALANCE_IN_PROGRESS)
    sync(group, 1, a, 1, {a: b""})
    assert group.check_commit(2, member_id=a, generation_id=1, instance_id=None) == (
        ErrorCode.NONE)
    # only members commit into a group that has members (Kafka's answer)
    assert group.check_commit(2, member_id="", generation_id=-1, instance_id=None) == (
        ErrorCode.UNKNOWN_MEMBER_ID)
    assert group.check_commit(2, member_id="x", generation_id=1, instance_id=None) == (
        ErrorCode.UNKNOWN_MEMBER_ID)
    assert group.check_commit(2, member_id=a, generation_id=7, instance_id=None) == (
        ErrorCode.ILLEGAL_GENERATION)


def test_commits_while_the_group_rebalances_are_refused_only_as_kafka_refuses_them() -> None:
    """The sequence behind the e2e test's UNKNOWN_MEMBER_ID: a member's commit is accepted
    until the member is gone -- at the rebalance timeout or by LeaveGroup -- and only then
    refused with UNKNOWN_MEMBER_ID."""
    group = Group("g")
    a, b = stable_pair(group)
    parked = join(group, 100, a)  # the leader rejoins (cooperative-sticky does so to migrate)
    assert isinstance(parked, Parked) and group.state is GroupState.PREPARING_REBALANCE
    # the leader commits while its JoinGroup is parked; b, not yet rejoined, commits too
    assert group.check_commit(101, member_id=a, generation_id=2, instance_id=None) == (
        ErrorCode.NONE)
    assert group.check_commit(102, member_id=b, generation_id=2, instance_id=None) == (
        ErrorCode.NONE)
    # b's heartbeats keep its session, but it does not rejoin within the rebalance timeout
    for now in range(200, 100 + REBALANCE, 5000):
        assert group.heartbeat(now, member_id=b, generation_id=2, instance_id=None) == (
            ErrorCode.REBALANCE_IN_PROGRESS)
        assert group.check_commit(now, member_id=b, generation_id=2, instance_id=None) == (
            ErrorCode.NONE)
        group.tick(now)
    group.tick(100 + REBALANCE)
    assert list(group.members) == [a] and group.generation_id == 3
    now = 101 + REBALANCE
    assert group.check_commit(now, member_id=b, generation_id=2, instance_id=None) == (
        ErrorCode.UNKNOWN_MEMBER_ID)  # gone: Kafka answers the same
    assert group.check_commit(now, member_id=a, generation_id=2, instance_id=None) == (
        ErrorCode.ILLEGAL_GENERATION)  # known member, old generation
    assert group.check_commit(now, member_id=a, generation_id=3, instance_id=None) == (
        ErrorCode.REBALANCE_IN_PROGRESS)  # CompletingRebalance
    # a member that left (librdkafka after max.poll.interval.ms) commits with no member id
    assert group.leave(now, member_id=a, instance_id=None) == ErrorCode.NONE
    assert group.state is GroupState.EMPTY
    assert group.check_commit(now, member_id="", generation_id=3, instance_id=None) == (
        ErrorCode.UNKNOWN_MEMBER_ID)


def test_pending_member_id_outlives_a_join_phase_that_timed_out() -> None:
    """Kafka keeps a MEMBER_ID_REQUIRED id until its own session timeout: a join phase that
    ends at the rebalance timeout does not forget it, and its JoinGroup then starts the next
    rebalance instead of being refused with UNKNOWN_MEMBER_ID."""
    group = Group("g")
    a, b = stable_pair(group)
    join(group, 100, a, protocols=[("range", b"changed")])
    late = joined(join(group, 110, require_known=True, session=REBALANCE + 10_000))
    assert late.error == ErrorCode.MEMBER_ID_REQUIRED
    assert isinstance(join(group, 120, b), Parked)
    group.tick(100 + REBALANCE - 1)
    assert group.state is GroupState.PREPARING_REBALANCE  # waits for the pending member
    group.tick(100 + REBALANCE)
    assert group.state is GroupState.COMPLETING_REBALANCE and group.generation_id == 3
    assert late.member_id in group.pending
    parked = join(group, 100 + REBALANCE + 1, late.member_id, require_known=True)
    assert isinstance(parked, Parked), parked
    assert group.state is GroupState.PREPARING_REBALANCE
    assert late.member_id in group.members and late.member_id not in group.pending
    # an unused pending id still expires on its own deadline
    other = joined(join(group, 100 + REBALANCE + 2, require_known=True))
    group.tick(100 + REBALANCE + 2 + SESSION)
    assert other.member_id not in group.pending


def test_initial_rebalance_delay_gathers_early_joiners() -> None:
    group = Group("g", GroupConfig(initial_rebalance_delay_ms=3000))
    first = join(group, 0)
    second = join(group, 1000)
    assert isinstance(first, Parked) and isinstance(second, Parked)
    assert group.next_deadline() == 4000  # extended by the second joiner
    group.tick(3999)
    assert group.take_result(first.ticket) is None
    group.tick(4000)
    one, two = taken(group, first), taken(group, second)
    assert isinstance(one, JoinResult) and isinstance(two, JoinResult)
    assert one.generation_id == two.generation_id == 1 and len(one.members) == 2


def test_subscribed_topics_of_consumer_groups() -> None:
    group = Group("g")
    joined(join(group, 0, protocols=[("range", subscription("t1", "t2"))]))
    assert group.subscribed_topics() == {"t1", "t2"}
    for bad in (b"\x00", b"\x00\x00\x7f\xff\xff\xff", b"\x00\x00\x00\x00\x00\x01\x00\x09ab",
                b"\x00\x00\x00\x00\x00\x01\x00\x01\xff"):
        garbled = Group("h")
        joined(join(garbled, 0, protocols=[("range", bad)]))
        assert garbled.subscribed_topics() is None


# -- the trio coordinator (MockClock) -----------------------------------------------------------


@pytest.fixture
async def coordinator() -> AsyncIterator[GroupCoordinator]:
    async with open_memory_storage() as storage:
        yield GroupCoordinator(storage.metadata, sweep_interval_s=1.0)


def request(member_id: str = "", **overrides: Any) -> dict[str, Any]:
    args: dict[str, Any] = dict(
        member_id=member_id, instance_id=None, client_id="c", client_host="h",
        session_timeout_ms=SESSION, rebalance_timeout_ms=REBALANCE, protocol_type="consumer",
        protocols=[("range", b"r")], require_known_member_id=False)
    args.update(overrides)
    return args


async def test_parked_join_answered_when_the_other_member_rejoins(
        coordinator: GroupCoordinator, autojump_clock: trio.testing.MockClock) -> None:
    first = await coordinator.join("g", **request())
    await coordinator.sync("g", member_id=first.member_id, generation_id=1, instance_id=None,
                           protocol_type=None, protocol_name=None, assignments=[])
    results: list[JoinResult] = []

    async def join_second() -> None:
        results.append(await coordinator.join("g", **request()))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(join_second)
        await trio.sleep(1)
        assert not results  # parked: the first member has not rejoined
        assert coordinator.heartbeat("g", member_id=first.member_id, generation_id=1,
                                     instance_id=None) == ErrorCode.REBALANCE_IN_PROGRESS
        again = await coordinator.join("g", **request(first.member_id))
    assert again.generation_id == results[0].generation_id == 2
    assert trio.current_time() < 2  # answered at once, not at a timeout


async def test_parked_join_ends_at_the_rebalance_timeout(
        coordinator: GroupCoordinator, autojump_clock: trio.testing.MockClock) -> None:
    first = await coordinator.join("g", **request())
    await coordinator.sync("g", member_id=first.member_id, generation_id=1, instance_id=None,
                           protocol_type=None, protocol_name=None, assignments=[])
    start = trio.current_time()
    second = await coordinator.join("g", **request())  # the first member never rejoins
    # the first member's session (10 s) runs out before the rebalance timeout (30 s)
    assert trio.current_time() - start == pytest.approx(SESSION / 1000, abs=0.01)
    assert second.generation_id == 2 and [m[0] for m in second.members] == [second.member_id]


async def test_sweeper_expires_silent_members(
        coordinator: GroupCoordinator, autojump_clock: trio.testing.MockClock) -> None:
    member = await coordinator.join("g", **request())
    await coordinator.sync("g", member_id=member.member_id, generation_id=1, instance_id=None,
                           protocol_type=None, protocol_name=None, assignments=[])
    async with trio.open_nursery() as nursery:
        await nursery.start(coordinator.run)
        await trio.sleep(SESSION / 1000 - 1)
        assert [g.state for g in await coordinator.list_groups()] == [GroupState.STABLE]
        await trio.sleep(2.5)
        assert [g.state for g in await coordinator.list_groups()] == [GroupState.EMPTY]
        nursery.cancel_scope.cancel()


async def test_cancelled_parked_join_is_abandoned(
        coordinator: GroupCoordinator, autojump_clock: trio.testing.MockClock) -> None:
    first = await coordinator.join("g", **request())
    await coordinator.sync("g", member_id=first.member_id, generation_id=1, instance_id=None,
                           protocol_type=None, protocol_name=None, assignments=[])
    with trio.move_on_after(1):
        await coordinator.join("g", **request())
    group = coordinator.group("g")
    assert group is not None
    assert all(m.join_ticket is None for m in group.members.values())
    assert not group._results  # nothing left behind for the cancelled request


async def test_parked_requests_answer_not_coordinator_when_stopping(
        coordinator: GroupCoordinator, autojump_clock: trio.testing.MockClock) -> None:
    first = await coordinator.join("g", **request())
    await coordinator.sync("g", member_id=first.member_id, generation_id=1, instance_id=None,
                           protocol_type=None, protocol_name=None, assignments=[])
    stopping = trio.Event()
    results: list[JoinResult] = []

    async def join_second() -> None:
        results.append(await coordinator.join("g", stopping=stopping, **request()))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(join_second)
        await trio.sleep(1)
        assert not results
        stopping.set()
    assert results[0].error == ErrorCode.NOT_COORDINATOR
    assert trio.current_time() < 2


async def test_offsets_are_cursors_and_survive_a_new_store() -> None:
    async with open_memory_storage() as storage:
        store = OffsetStore(storage.metadata)
        log = "persistent/public/default/t/p-0"
        await store.commit("g", {("t", 0): (CommittedOffset(42, 3, "meta", 7), log)})
        cursor = await CursorStore(storage.metadata).load(log, subscription_name("g"))
        assert cursor is not None and cursor.mark_delete == 42
        assert await storage.metadata.get("cursors/persistent/public/default/t/p-0/kafka%3Ag")
        assert await OffsetStore(storage.metadata).fetch("g") == {
            ("t", 0): CommittedOffset(42, 3, "meta", 7)}
        await store.commit("g", {("t", 0): (CommittedOffset(5, -1, None, 8), log)})  # backwards
        assert (await OffsetStore(storage.metadata).fetch("g"))[("t", 0)].offset == 5
        assert await store.stored_groups() == ["g"]
        small = OffsetStore(storage.metadata, max_cached_groups=1)
        await small.commit("h", {("t", 0): (CommittedOffset(1), log)})
        assert (await small.fetch("g"))[("t", 0)].offset == 5  # evicts h from memory
        assert (await small.fetch("h"))[("t", 0)].offset == 1  # read back from the store
        await store.delete_group("g")
        assert await OffsetStore(storage.metadata).fetch("g") == {}
        assert await CursorStore(storage.metadata).load(log, subscription_name("g")) is None


# -- the services against a memory core ---------------------------------------------------------


@pytest.fixture
async def ctx() -> AsyncIterator[ServiceContext]:
    async with open_memory_storage() as storage, open_core(
            storage, CoreSettings(retention_check_interval_ms=0)) as core:
        await core.create_topic("public/default/t", 2)
        yield ServiceContext(core=core, namespace="public/default", cluster_id="test",
                             advertised_host="127.0.0.1", advertised_port=9092)


async def call(ctx: ServiceContext, api: ApiKey, version: int, **fields: Any) -> Any:
    body = registry.request_class(api, version)(**fields)
    return await dispatch(ctx, decoded(api, version, body))


def core_of(ctx: ServiceContext) -> Core:
    return ctx.core


async def test_find_coordinator(ctx: ServiceContext) -> None:
    old = await call(ctx, ApiKey.FindCoordinator, 0, key="g")
    assert (old.error_code, old.node_id, old.host, old.port) == (0, 0, "127.0.0.1", 9092)
    batched = await call(ctx, ApiKey.FindCoordinator, 4, key_type=0, coordinator_keys=["a", "b"])
    assert [(c.key, c.node_id, c.error_code) for c in batched.coordinators] == [
        ("a", 0, 0), ("b", 0, 0)]
    bad = await call(ctx, ApiKey.FindCoordinator, 3, key="g", key_type=5)
    assert bad.error_code == ErrorCode.INVALID_REQUEST


async def test_old_versions_join_sync_heartbeat_leave(ctx: ServiceContext) -> None:
    proto = registry.request_class(ApiKey.JoinGroup, 0).JoinGroupRequestProtocol
    joined_ = await call(ctx, ApiKey.JoinGroup, 0, group_id="g", session_timeout_ms=SESSION,
                         member_id="", protocol_type="consumer",
                         protocols=[proto(name="range", metadata=subscription("t"))])
    assert joined_.error_code == 0 and joined_.generation_id == 1
    me = joined_.member_id
    assign = registry.request_class(ApiKey.SyncGroup, 0).SyncGroupRequestAssignment
    synced = await call(ctx, ApiKey.SyncGroup, 0, group_id="g", generation_id=1, member_id=me,
                        assignments=[assign(member_id=me, assignment=b"mine")])
    assert (synced.error_code, synced.assignment) == (0, b"mine")
    beat = await call(ctx, ApiKey.Heartbeat, 0, group_id="g", generation_id=1, member_id=me)
    assert beat.error_code == 0
    described = await call(ctx, ApiKey.DescribeGroups, 0, groups=["g"])
    [group] = described.groups
    assert (group.group_state, group.protocol_data, group.members[0].member_assignment) == (
        "Stable", "range", b"mine")
    listed = await call(ctx, ApiKey.ListGroups, 4, states_filter=["stable"])
    assert [(g.group_id, g.group_state) for g in listed.groups] == [("g", "Stable")]
    part = registry.request_class(ApiKey.OffsetDelete, 0).OffsetDeleteRequestTopic
    deleted = await call(ctx, ApiKey.OffsetDelete, 0, group_id="g", topics=[part(
        name="t", partitions=[part.OffsetDeleteRequestPartition(partition_index=0)])])
    assert deleted.topics[0].partitions[0].error_code == ErrorCode.GROUP_SUBSCRIBED_TO_TOPIC
    refused = await call(ctx, ApiKey.DeleteGroups, 0, groups_names=["g"])
    assert refused.results[0].error_code == ErrorCode.NON_EMPTY_GROUP
    left = await call(ctx, ApiKey.LeaveGroup, 0, group_id="g", member_id=me)
    assert left.error_code == 0
    again = await call(ctx, ApiKey.LeaveGroup, 0, group_id="g", member_id=me)
    assert again.error_code == ErrorCode.UNKNOWN_MEMBER_ID
    invalid = await call(ctx, ApiKey.Heartbeat, 0, group_id="", generation_id=1, member_id=me)
    assert invalid.error_code == ErrorCode.INVALID_GROUP_ID


async def test_offset_commit_fetch_delete(ctx: ServiceContext) -> None:
    req = registry.request_class(ApiKey.OffsetCommit, 8)
    topic, part = req.OffsetCommitRequestTopic, req.OffsetCommitRequestTopic.\
        OffsetCommitRequestPartition
    response = await call(ctx, ApiKey.OffsetCommit, 8, group_id="simple",
                          generation_id_or_member_epoch=-1, member_id="", topics=[
        topic(name="t", partitions=[
            part(partition_index=0, committed_offset=10, committed_metadata="m0"),
            part(partition_index=1, committed_offset=20, committed_metadata="x" * 5000),
            part(partition_index=7, committed_offset=1, committed_metadata=None)]),
        topic(name="missing", partitions=[part(partition_index=0, committed_offset=1,
                                               committed_metadata="")])])
    assert [[p.error_code for p in t.partitions] for t in response.topics] == [
        [0, ErrorCode.OFFSET_METADATA_TOO_LARGE, ErrorCode.UNKNOWN_TOPIC_OR_PARTITION],
        [ErrorCode.UNKNOWN_TOPIC_OR_PARTITION]]
    # a member commit into a group it is not part of
    stale = await call(ctx, ApiKey.OffsetCommit, 8, group_id="simple",
                       generation_id_or_member_epoch=3, member_id="ghost", topics=[
        topic(name="t", partitions=[part(partition_index=0, committed_offset=99)])])
    assert stale.topics[0].partitions[0].error_code == ErrorCode.ILLEGAL_GENERATION

    fetch = registry.request_class(ApiKey.OffsetFetch, 7)
    fetched = await call(ctx, ApiKey.OffsetFetch, 7, group_id="simple", topics=[
        fetch.OffsetFetchRequestTopic(name="t", partition_indexes=[0, 1])])
    assert [(p.partition_index, p.committed_offset, p.metadata)
            for p in fetched.topics[0].partitions] == [(0, 10, "m0"), (1, -1, "")]
    multi = registry.request_class(ApiKey.OffsetFetch, 8)
    fetched8 = await call(ctx, ApiKey.OffsetFetch, 8, groups=[
        multi.OffsetFetchRequestGroup(group_id="simple", topics=None),
        multi.OffsetFetchRequestGroup(group_id="nobody", topics=None)])
    assert [(g.group_id, [(t.name, [(p.partition_index, p.committed_offset)
                                    for p in t.partitions]) for t in g.topics])
            for g in fetched8.groups] == [("simple", [("t", [(0, 10)])]), ("nobody", [])]

    listed = await call(ctx, ApiKey.ListGroups, 0)
    assert [(g.group_id, g.protocol_type) for g in listed.groups] == [("simple", "consumer")]
    unknown6 = await call(ctx, ApiKey.DescribeGroups, 6, groups=["nobody"])
    assert unknown6.groups[0].error_code == ErrorCode.GROUP_ID_NOT_FOUND
    unknown5 = await call(ctx, ApiKey.DescribeGroups, 5, groups=["nobody", "simple"])
    assert [(g.error_code, g.group_state) for g in unknown5.groups] == [(0, "Dead"),
                                                                        (0, "Empty")]

    od = registry.request_class(ApiKey.OffsetDelete, 0).OffsetDeleteRequestTopic
    deleted = await call(ctx, ApiKey.OffsetDelete, 0, group_id="simple", topics=[od(
        name="t", partitions=[od.OffsetDeleteRequestPartition(partition_index=0)])])
    assert (deleted.error_code, deleted.topics[0].partitions[0].error_code) == (0, 0)
    assert await coordinator_for(core_of(ctx)).fetch_offsets("simple") == {}
    gone = await call(ctx, ApiKey.DeleteGroups, 2, groups_names=["simple", "nobody"])
    assert [(r.group_id, r.error_code) for r in gone.results] == [
        ("simple", 0), ("nobody", ErrorCode.GROUP_ID_NOT_FOUND)]
