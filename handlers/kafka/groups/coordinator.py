"""The thin trio layer over the group state machines: parked answers, timers, offsets.

How it works
------------
:class:`GroupCoordinator` keeps one :class:`~handlers.kafka.groups.state.Group` per group id and
calls it with trio's clock in milliseconds.  When a JoinGroup or SyncGroup is parked, the
request's task waits on the group's *changed* event, re-armed after every call into the group,
until its answer is ready -- but never past the group's next deadline: then it ticks the group
itself (so the rebalance timeout ends a join phase even if nothing else happens) and waits
again.  Any request on a group ticks it first, and :meth:`GroupCoordinator.run`, when a nursery
runs it, sweeps every group periodically, so sessions of silent members expire.  If the waiting
task is cancelled (its connection closed), the ticket is abandoned; the member stays until its
session expires, as in Kafka.

Offsets go through :class:`~handlers.kafka.groups.offsets.OffsetStore`.

Finding the coordinator: services call :func:`coordinator_for`, which returns the coordinator
registered for the core with :func:`install_coordinator` (the handler's start-up should do that,
with its configuration, and run :meth:`GroupCoordinator.run` in its nursery), or creates one
with the default :class:`~handlers.kafka.groups.state.GroupConfig` on first use.
"""

from __future__ import annotations

import math
import weakref
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import trio

from handlers.kafka.errors import ErrorCode
from handlers.kafka.groups.offsets import CommittedOffset, OffsetStore, TopicPartition
from handlers.kafka.groups.state import (
    Group,
    GroupConfig,
    GroupState,
    JoinResult,
    Parked,
    SyncResult,
)
from storage.api import MetadataStore

if TYPE_CHECKING:
    from core.api import Core

__all__ = [
    "DEFAULT_MAX_GROUPS",
    "GroupCoordinator",
    "GroupSummary",
    "coordinator_for",
    "install_coordinator",
    "now_ms",
]

DEFAULT_MAX_GROUPS = 10_000
"""Groups kept in memory; beyond it, Empty groups are forgotten (their offsets stay stored)."""


def now_ms() -> int:
    """Trio's clock in whole milliseconds (the state machines' time)."""
    return math.floor(trio.current_time() * 1000)


@dataclass(frozen=True, slots=True)
class GroupSummary:
    """A group as ListGroups shows it."""

    group_id: str
    protocol_type: str
    state: GroupState


class GroupCoordinator:
    """Every consumer group of this broker; see the module docstring."""

    def __init__(self, metadata: MetadataStore, config: GroupConfig | None = None, *,
                 max_groups: int = DEFAULT_MAX_GROUPS, sweep_interval_s: float = 1.0) -> None:
        self.config = config or GroupConfig()
        self.offsets = OffsetStore(metadata)
        self.max_groups = max_groups
        self.sweep_interval_s = sweep_interval_s
        self._groups: dict[str, Group] = {}
        self._changed: dict[str, trio.Event] = {}

    # -- groups ------------------------------------------------------------------------------

    def group(self, group_id: str) -> Group | None:
        """The live group (ticked to now), or None when it has no in-memory state."""
        group = self._groups.get(group_id)
        if group is not None:
            self._tick(group)
        return group

    def _group_for_join(self, group_id: str) -> Group | None:
        group = self.group(group_id)
        if group is not None and group.state is not GroupState.DEAD:
            return group
        if len(self._groups) >= self.max_groups:
            for gid in [g for g, grp in self._groups.items()
                        if grp.is_empty and grp.state is not GroupState.PREPARING_REBALANCE]:
                self._drop(gid)
            if len(self._groups) >= self.max_groups:
                return None
        group = self._groups[group_id] = Group(group_id, self.config)
        return group

    def _drop(self, group_id: str) -> None:
        self._groups.pop(group_id, None)
        event = self._changed.pop(group_id, None)
        if event is not None:
            event.set()

    def _tick(self, group: Group) -> None:
        group.tick(now_ms())
        self._notify(group)

    def _notify(self, group: Group) -> None:
        event = self._changed.pop(group.group_id, None)
        if event is not None:
            event.set()

    def tick_all(self) -> None:
        """Expire what is due in every group."""
        for group in list(self._groups.values()):
            self._tick(group)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                  ) -> None:
        """Sweep every group each ``sweep_interval_s`` (run it in the handler's nursery)."""
        task_status.started()
        while True:
            await trio.sleep(self.sweep_interval_s)
            self.tick_all()

    async def _await(self, group: Group, ticket: int, stopping: trio.Event | None
                     ) -> JoinResult | SyncResult:
        """The parked answer; ``NOT_COORDINATOR`` once ``stopping`` is set (as Kafka answers
        parked requests when it unloads a group), so a shutdown does not wait for rebalances."""
        result: JoinResult | SyncResult = JoinResult(ErrorCode.NOT_COORDINATOR)
        async with trio.open_nursery() as nursery:
            if stopping is not None:
                nursery.start_soon(_cancel_when_set, stopping, nursery.cancel_scope)
            result = await self._await_parked(group, ticket)
            nursery.cancel_scope.cancel()
        return result

    async def _await_parked(self, group: Group, ticket: int) -> JoinResult | SyncResult:
        try:
            while True:
                result = group.take_result(ticket)
                if result is not None:
                    return result
                event = self._changed.setdefault(group.group_id, trio.Event())
                deadline = group.next_deadline()
                if deadline is None:
                    await event.wait()
                else:
                    # half a millisecond late, so that now_ms() has reached the deadline
                    with trio.move_on_at((deadline + 0.5) / 1000):
                        await event.wait()
                if self._groups.get(group.group_id) is not group:
                    return JoinResult(ErrorCode.COORDINATOR_NOT_AVAILABLE)
                self._tick(group)
        finally:
            group.abandon(ticket)

    # -- membership ----------------------------------------------------------------------------

    async def join(
        self, group_id: str, *, member_id: str, instance_id: str | None, client_id: str,
        client_host: str, session_timeout_ms: int, rebalance_timeout_ms: int,
        protocol_type: str, protocols: Sequence[tuple[str, bytes]],
        require_known_member_id: bool, stopping: trio.Event | None = None,
    ) -> JoinResult:
        """JoinGroup (arguments as :meth:`Group.join`).

        Parked until the join phase completes, or ``stopping`` is set (``NOT_COORDINATOR``).
        """
        group = self._group_for_join(group_id)
        if group is None:
            await trio.lowlevel.checkpoint()
            return JoinResult(ErrorCode.COORDINATOR_NOT_AVAILABLE, member_id)
        outcome = group.join(
            now_ms(), member_id=member_id, instance_id=instance_id, client_id=client_id,
            client_host=client_host, session_timeout_ms=session_timeout_ms,
            rebalance_timeout_ms=rebalance_timeout_ms, protocol_type=protocol_type,
            protocols=protocols, require_known_member_id=require_known_member_id)
        self._notify(group)
        if isinstance(outcome, Parked):
            result = await self._await(group, outcome.ticket, stopping)
            if isinstance(result, SyncResult):  # pragma: no cover - tickets are per request
                return JoinResult(result.error, member_id)
            return result
        await trio.lowlevel.checkpoint()
        return outcome

    async def sync(self, group_id: str, *, member_id: str, generation_id: int,
                   instance_id: str | None, protocol_type: str | None,
                   protocol_name: str | None, assignments: Sequence[tuple[str, bytes]],
                   stopping: trio.Event | None = None) -> SyncResult:
        """SyncGroup; parked until the leader's assignment arrives (or ``stopping``)."""
        group = self.group(group_id)
        if group is None:
            await trio.lowlevel.checkpoint()
            return SyncResult(ErrorCode.UNKNOWN_MEMBER_ID)
        outcome = group.sync(now_ms(), member_id=member_id, generation_id=generation_id,
                             instance_id=instance_id, protocol_type=protocol_type,
                             protocol_name=protocol_name, assignments=assignments)
        self._notify(group)
        if isinstance(outcome, Parked):
            result = await self._await(group, outcome.ticket, stopping)
            if isinstance(result, JoinResult):
                return SyncResult(result.error)
            return result
        await trio.lowlevel.checkpoint()
        return outcome

    def heartbeat(self, group_id: str, *, member_id: str, generation_id: int,
                  instance_id: str | None) -> int:
        """Heartbeat: its error code."""
        group = self.group(group_id)
        if group is None:
            return ErrorCode.UNKNOWN_MEMBER_ID
        error = group.heartbeat(now_ms(), member_id=member_id, generation_id=generation_id,
                                instance_id=instance_id)
        self._notify(group)
        return error

    def leave(self, group_id: str, members: Sequence[tuple[str, str | None]]) -> list[int]:
        """LeaveGroup: one error code per ``(member id, instance id)``."""
        group = self.group(group_id)
        if group is None:
            return [ErrorCode.UNKNOWN_MEMBER_ID] * len(members)
        now = now_ms()
        errors = [group.leave(now, member_id=m, instance_id=i) for m, i in members]
        self._notify(group)
        return errors

    # -- offsets -------------------------------------------------------------------------------

    async def commit(self, group_id: str, *, member_id: str, generation_id: int,
                     instance_id: str | None,
                     offsets: dict[TopicPartition, tuple[CommittedOffset, str]]) -> int:
        """OffsetCommit of already validated partitions: the request-wide error code.

        ``offsets`` maps each partition to its commit and its partition log name.
        """
        group = self.group(group_id)
        if group is None:
            if generation_id >= 0:
                await trio.lowlevel.checkpoint()
                return ErrorCode.ILLEGAL_GENERATION
            error: int = ErrorCode.NONE
        else:
            error = group.check_commit(now_ms(), member_id=member_id,
                                       generation_id=generation_id, instance_id=instance_id)
            self._notify(group)
        if error != ErrorCode.NONE:
            await trio.lowlevel.checkpoint()
            return error
        await self.offsets.commit(group_id, offsets)
        return ErrorCode.NONE

    async def fetch_offsets(self, group_id: str) -> dict[TopicPartition, CommittedOffset]:
        """Every committed offset of the group."""
        return await self.offsets.fetch(group_id)

    async def delete_offsets(self, group_id: str, partitions: list[TopicPartition]
                             ) -> tuple[int, dict[TopicPartition, int]]:
        """OffsetDelete: ``(group error, {partition: error})``.

        Partitions of topics that members of a non-empty group subscribe to are refused
        (``GROUP_SUBSCRIBED_TO_TOPIC``); the others are deleted.
        """
        if not await self.known(group_id):
            return ErrorCode.GROUP_ID_NOT_FOUND, {}
        group = self.group(group_id)
        subscribed: set[str] = set()
        if group is not None and not group.is_empty:
            topics = group.subscribed_topics()
            if topics is None:  # members we cannot read: refuse, as Kafka does
                return ErrorCode.NON_EMPTY_GROUP, {}
            subscribed = topics
        errors: dict[TopicPartition, int] = {}
        deletable = []
        for tp in partitions:
            if tp[0] in subscribed:
                errors[tp] = ErrorCode.GROUP_SUBSCRIBED_TO_TOPIC
            else:
                errors[tp] = ErrorCode.NONE
                deletable.append(tp)
        await self.offsets.delete(group_id, deletable)
        return ErrorCode.NONE, errors

    # -- administration ------------------------------------------------------------------------

    async def list_groups(self) -> list[GroupSummary]:
        """Every group: live ones with their state, stored-only ones as Empty."""
        self.tick_all()
        found = {gid: GroupSummary(gid, g.protocol_type or "", g.state)
                 for gid, g in self._groups.items() if g.state is not GroupState.DEAD}
        for gid in await self.offsets.stored_groups():
            if gid not in found and (gid not in self._groups
                                     or self._groups[gid].state is not GroupState.DEAD):
                found[gid] = GroupSummary(gid, "consumer", GroupState.EMPTY)
        return [found[gid] for gid in sorted(found)]

    async def known(self, group_id: str) -> bool:
        """Whether the group exists: in memory, or stored (it committed offsets once)."""
        group = self.group(group_id)
        if group is not None:
            await trio.lowlevel.checkpoint()
            return group.state is not GroupState.DEAD
        return await self.offsets.has_group(group_id)

    async def delete_group(self, group_id: str) -> int:
        """DeleteGroups for one group: its error code."""
        group = self.group(group_id)
        if group is not None and not group.is_empty:
            await trio.lowlevel.checkpoint()
            return ErrorCode.NON_EMPTY_GROUP
        if not await self.known(group_id):
            return ErrorCode.GROUP_ID_NOT_FOUND
        if group is not None:
            group.mark_dead()
            self._drop(group_id)
        await self.offsets.delete_group(group_id)
        return ErrorCode.NONE


async def _cancel_when_set(event: trio.Event, scope: trio.CancelScope) -> None:
    await event.wait()
    scope.cancel()


_COORDINATORS: weakref.WeakKeyDictionary[Core, GroupCoordinator] = weakref.WeakKeyDictionary()


def install_coordinator(core: Core, coordinator: GroupCoordinator) -> None:
    """Make ``coordinator`` the one :func:`coordinator_for` returns for ``core``."""
    _COORDINATORS[core] = coordinator


def coordinator_for(core: Core) -> GroupCoordinator:
    """The group coordinator of ``core`` (created with default settings on first use)."""
    found = _COORDINATORS.get(core)
    if found is None:
        found = _COORDINATORS[core] = GroupCoordinator(core.storage.metadata)
    return found
