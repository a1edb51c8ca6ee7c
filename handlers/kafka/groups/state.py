"""The classic Kafka consumer-group state machine (sans-IO: no trio, no storage).

Theory of operation
-------------------
One :class:`Group` per group id.  Its states are those of Apache Kafka's classic group
coordinator::

    Empty --join--> PreparingRebalance --all joined / timeout--> CompletingRebalance
      ^                  ^    |                                        | leader's SyncGroup
      |                  |    +--no member left--> Empty               v
      |                  +----------- join / leave / expiry -------- Stable
      +--(DeleteGroups)--> Dead

Every call takes ``now`` in milliseconds (any monotonic clock; the trio layer passes trio's
clock) and never blocks.  A JoinGroup or SyncGroup that Kafka answers only once the rebalance
step completes returns :class:`Parked` with a *ticket*; the answer appears later under that
ticket in :meth:`Group.take_result`.  Timers are deadlines: :meth:`Group.next_deadline` says when
something may expire and :meth:`Group.tick` expires it (member sessions, pending member ids, the
join phase's rebalance timeout and initial delay, the sync phase's timeout), so a thin driver
calls ``tick`` at ``next_deadline`` and after that wakes the parked requests.

Protocol selection: the first protocol in the leader's order that every member supports.
Assignments are opaque bytes passed from the leader's SyncGroup to each member untouched, so
client-side assignors (range, round-robin, sticky, cooperative-sticky) work as they are.

Static membership (``group.instance.id``, KIP-345): an instance id owns one member slot.  A
JoinGroup with an unknown member id and a known instance id replaces the old member id with a
new one; a Stable group then answers at once with the current generation and does not
rebalance, unless the member's protocols changed.  A request naming the instance id with a
member id that is not the current one gets ``FENCED_INSTANCE_ID``.  Static members do not leave
the group by closing (only by LeaveGroup with their instance id, or session expiry).
"""

from __future__ import annotations

import enum
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from handlers.kafka.errors import ErrorCode

__all__ = [
    "UNKNOWN_MEMBER",
    "Group",
    "GroupConfig",
    "GroupState",
    "JoinResult",
    "Member",
    "Parked",
    "SyncResult",
]

UNKNOWN_MEMBER = ""
"""The member id of a JoinGroup from a consumer that has none yet."""


class GroupState(enum.Enum):
    """A group's state; the value is the name Kafka reports (DescribeGroups, ListGroups)."""

    EMPTY = "Empty"
    PREPARING_REBALANCE = "PreparingRebalance"
    COMPLETING_REBALANCE = "CompletingRebalance"
    STABLE = "Stable"
    DEAD = "Dead"


@dataclass(frozen=True, slots=True)
class GroupConfig:
    """Coordinator limits and delays (Kafka's ``group.*`` broker settings)."""

    min_session_timeout_ms: int = 100
    max_session_timeout_ms: int = 1_800_000
    initial_rebalance_delay_ms: int = 0
    """Kafka's ``group.initial.rebalance.delay.ms`` (Kafka's default is 3000; ours 0)."""
    max_members: int = 1000
    """Members plus pending member ids per group (``group.max.size``)."""

    def __post_init__(self) -> None:
        if not 0 < self.min_session_timeout_ms <= self.max_session_timeout_ms:
            raise ValueError("need 0 < min_session_timeout_ms <= max_session_timeout_ms")
        if self.initial_rebalance_delay_ms < 0 or self.max_members < 1:
            raise ValueError("need initial_rebalance_delay_ms >= 0 and max_members >= 1")


@dataclass(slots=True)
class Member:
    """One member of a group."""

    member_id: str
    instance_id: str | None
    client_id: str
    client_host: str
    session_timeout_ms: int
    rebalance_timeout_ms: int
    protocol_type: str
    protocols: list[tuple[str, bytes]]
    assignment: bytes = b""
    session_deadline: int = 0
    awaiting_join: bool = False
    """Sent a JoinGroup for the rebalance in progress (its answer may be parked)."""
    join_ticket: int | None = None
    sync_ticket: int | None = None

    def metadata(self, protocol: str | None) -> bytes:
        """This member's metadata for ``protocol`` (empty if it does not support it)."""
        for name, data in self.protocols:
            if name == protocol:
                return data
        return b""


@dataclass(frozen=True, slots=True)
class JoinResult:
    """A JoinGroup answer (``members`` is non-empty only for the leader)."""

    error: int
    member_id: str = UNKNOWN_MEMBER
    generation_id: int = -1
    protocol_type: str | None = None
    protocol_name: str | None = None
    leader_id: str = ""
    members: tuple[tuple[str, str | None, bytes], ...] = ()
    """``(member id, group instance id, metadata)`` of every member, for the leader."""


@dataclass(frozen=True, slots=True)
class SyncResult:
    """A SyncGroup answer."""

    error: int
    assignment: bytes = b""
    protocol_type: str | None = None
    protocol_name: str | None = None


@dataclass(frozen=True, slots=True)
class Parked:
    """The answer comes later: ``Group.take_result(ticket)`` once the driver was woken."""

    ticket: int


@dataclass(slots=True)
class _Rebalance:
    """Deadlines of the join phase."""

    deadline: int  # rebalance timeout: members that have not rejoined by then are removed
    not_before: int  # initial delay: the join phase does not complete before this
    delay_until_max: int  # the initial delay may be extended up to this
    delaying: bool = False  # not_before is still ahead


class Group:
    """The state of one consumer group; see the module docstring."""

    def __init__(self, group_id: str, config: GroupConfig | None = None) -> None:
        self.group_id = group_id
        self.config = config or GroupConfig()
        self.state = GroupState.EMPTY
        self.generation_id = 0
        self.protocol_type: str | None = None
        self.protocol_name: str | None = None
        self.leader_id: str | None = None
        self.members: dict[str, Member] = {}
        self.static_members: dict[str, str] = {}
        """group instance id -> member id"""
        self.pending: dict[str, int] = {}
        """member ids handed out with MEMBER_ID_REQUIRED -> deadline to join with them"""
        self._rebalance: _Rebalance | None = None
        self._sync_deadline: int | None = None
        self._results: dict[int, JoinResult | SyncResult] = {}
        self._next_ticket = 1

    # -- queries ---------------------------------------------------------------------------

    @property
    def is_empty(self) -> bool:
        """No members (the group may still hold committed offsets)."""
        return not self.members

    def take_result(self, ticket: int) -> JoinResult | SyncResult | None:
        """The answer to a parked request once it is ready (removed when taken)."""
        return self._results.pop(ticket, None)

    def abandon(self, ticket: int) -> None:
        """The parked request is gone (its connection closed): forget its answer."""
        self._results.pop(ticket, None)
        for member in self.members.values():
            if member.join_ticket == ticket:
                member.join_ticket = None
            if member.sync_ticket == ticket:
                member.sync_ticket = None

    def next_deadline(self) -> int | None:
        """The earliest time :meth:`tick` may change something, or None."""
        times = list(self.pending.values())
        times.extend(m.session_deadline for m in self.members.values() if self._expires(m))
        if self._rebalance is not None:
            if self._rebalance.delaying:
                times.append(self._rebalance.not_before)
            times.append(self._rebalance.deadline)
        if self._sync_deadline is not None:
            times.append(self._sync_deadline)
        return min(times) if times else None

    def subscribed_topics(self) -> set[str] | None:
        """Topics the members subscribe to (consumer protocol), or None if unknown."""
        if self.protocol_type != "consumer" or self.protocol_name is None:
            return None if self.members else set()
        topics: set[str] = set()
        for member in self.members.values():
            parsed = _subscription_topics(member.metadata(self.protocol_name))
            if parsed is None:
                return None
            topics.update(parsed)
        return topics

    # -- JoinGroup -------------------------------------------------------------------------

    def join(
        self, now: int, *, member_id: str, instance_id: str | None, client_id: str,
        client_host: str, session_timeout_ms: int, rebalance_timeout_ms: int,
        protocol_type: str, protocols: Sequence[tuple[str, bytes]],
        require_known_member_id: bool,
    ) -> JoinResult | Parked:
        """Handle a JoinGroup request."""
        if self.state is GroupState.DEAD:
            return JoinResult(ErrorCode.COORDINATOR_NOT_AVAILABLE, member_id)
        cfg = self.config
        if not cfg.min_session_timeout_ms <= session_timeout_ms <= cfg.max_session_timeout_ms:
            return JoinResult(ErrorCode.INVALID_SESSION_TIMEOUT, member_id)
        if rebalance_timeout_ms < 0:  # JoinGroup v0 has none: Kafka uses the session timeout
            rebalance_timeout_ms = session_timeout_ms
        protocols = list(protocols)
        if not self._protocols_compatible(member_id, protocol_type, protocols):
            return JoinResult(ErrorCode.INCONSISTENT_GROUP_PROTOCOL, member_id)
        if member_id == UNKNOWN_MEMBER:
            new_id = f"{client_id or 'member'}-{uuid.uuid4()}"
            if instance_id is not None and instance_id in self.static_members:
                return self._rejoin_static(now, instance_id, new_id, client_id, client_host,
                                           session_timeout_ms, rebalance_timeout_ms,
                                           protocol_type, protocols)
            if len(self.members) + len(self.pending) >= cfg.max_members:
                return JoinResult(ErrorCode.GROUP_MAX_SIZE_REACHED, UNKNOWN_MEMBER)
            if instance_id is None and require_known_member_id:
                self.pending[new_id] = now + session_timeout_ms
                return JoinResult(ErrorCode.MEMBER_ID_REQUIRED, new_id)
            member = Member(new_id, instance_id, client_id, client_host, session_timeout_ms,
                            rebalance_timeout_ms, protocol_type, protocols)
            return self._add_and_park(now, member)
        if member_id in self.pending:
            del self.pending[member_id]
            member = Member(member_id, instance_id, client_id, client_host, session_timeout_ms,
                            rebalance_timeout_ms, protocol_type, protocols)
            return self._add_and_park(now, member)
        error = self._check_member(member_id, instance_id)
        if error != ErrorCode.NONE:
            return JoinResult(error, member_id)
        member = self.members[member_id]
        changed = member.protocols != protocols
        member.client_id, member.client_host = client_id, client_host
        member.session_timeout_ms = session_timeout_ms
        member.rebalance_timeout_ms = rebalance_timeout_ms
        member.protocols = protocols
        if self.state is GroupState.PREPARING_REBALANCE:
            return self._park_join(now, member)
        if not changed and self.state is GroupState.COMPLETING_REBALANCE:
            return self._join_result(member)  # it lost the JoinGroup answer: same again
        if not changed and self.state is GroupState.STABLE and member_id != self.leader_id:
            self._touch(now, member)
            return self._join_result(member)
        self._prepare_rebalance(now)
        return self._park_join(now, member)

    def _protocols_compatible(self, member_id: str, protocol_type: str,
                              protocols: list[tuple[str, bytes]]) -> bool:
        """Kafka's rule: same protocol type, and a protocol every other member supports."""
        if not protocol_type or not protocols:
            return False
        others = [m for m in self.members.values() if m.member_id != member_id]
        if not others:
            return True
        if protocol_type != self.protocol_type:
            return False
        common = {name for name, _ in protocols}
        for other in others:
            common &= self._protocol_names(other)
        return bool(common)

    @staticmethod
    def _protocol_names(member: Member) -> set[str]:
        return {name for name, _ in member.protocols}

    def _rejoin_static(
        self, now: int, instance_id: str, new_id: str, client_id: str, client_host: str,
        session_timeout_ms: int, rebalance_timeout_ms: int, protocol_type: str,
        protocols: list[tuple[str, bytes]],
    ) -> JoinResult | Parked:
        """A known static member restarted: move its slot to a new member id (KIP-345)."""
        old = self.members[self.static_members[instance_id]]
        old_leader = self.leader_id
        changed = old.protocols != protocols
        for ticket in (old.join_ticket, old.sync_ticket):
            if ticket is not None:  # the old incarnation's parked request is fenced
                self._results[ticket] = (JoinResult(ErrorCode.FENCED_INSTANCE_ID, old.member_id)
                                         if ticket == old.join_ticket
                                         else SyncResult(ErrorCode.FENCED_INSTANCE_ID))
        del self.members[old.member_id]
        member = Member(new_id, instance_id, client_id, client_host, session_timeout_ms,
                        rebalance_timeout_ms, protocol_type, protocols, assignment=old.assignment,
                        awaiting_join=old.awaiting_join)
        self.members[new_id] = member
        self.static_members[instance_id] = new_id
        if self.leader_id == old.member_id:
            self.leader_id = new_id
        if self.state is GroupState.STABLE and not changed:
            self._touch(now, member)
            # the old leader id, so the new member does not believe it must assign
            return JoinResult(ErrorCode.NONE, new_id, self.generation_id, self.protocol_type,
                              self.protocol_name, old_leader or "")
        if self.state is not GroupState.PREPARING_REBALANCE:
            self._prepare_rebalance(now)
        return self._park_join(now, member)

    def _add_and_park(self, now: int, member: Member) -> Parked | JoinResult:
        self.members[member.member_id] = member
        if member.instance_id is not None:
            self.static_members[member.instance_id] = member.member_id
        if self.protocol_type is None:
            self.protocol_type = member.protocol_type
        if self.state is not GroupState.PREPARING_REBALANCE:
            self._prepare_rebalance(now)
        elif self._rebalance is not None and self._rebalance.delaying:
            # a member joined during the initial delay: wait a little longer for others
            self._rebalance.not_before = min(self._rebalance.delay_until_max,
                                             now + self.config.initial_rebalance_delay_ms)
        return self._park_join(now, member)

    def _park_join(self, now: int, member: Member) -> Parked | JoinResult:
        member.awaiting_join = True
        ticket = member.join_ticket = self._ticket()
        self._maybe_complete_join(now)
        result = self._results.pop(ticket, None)
        if result is not None:
            assert isinstance(result, JoinResult)
            return result
        return Parked(ticket)

    def _join_result(self, member: Member) -> JoinResult:
        members: tuple[tuple[str, str | None, bytes], ...] = ()
        if member.member_id == self.leader_id:
            members = tuple((m.member_id, m.instance_id, m.metadata(self.protocol_name))
                            for m in self.members.values())
        return JoinResult(ErrorCode.NONE, member.member_id, self.generation_id,
                          self.protocol_type, self.protocol_name, self.leader_id or "", members)

    # -- SyncGroup -------------------------------------------------------------------------

    def sync(
        self, now: int, *, member_id: str, generation_id: int, instance_id: str | None,
        protocol_type: str | None, protocol_name: str | None,
        assignments: Iterable[tuple[str, bytes]],
    ) -> SyncResult | Parked:
        """Handle a SyncGroup request."""
        if self.state is GroupState.DEAD:
            return SyncResult(ErrorCode.COORDINATOR_NOT_AVAILABLE)
        error = self._check_member(member_id, instance_id)
        if error != ErrorCode.NONE:
            return SyncResult(error)
        if generation_id != self.generation_id:
            return SyncResult(ErrorCode.ILLEGAL_GENERATION)
        if (protocol_type is not None and protocol_type != self.protocol_type) or (
                protocol_name is not None and protocol_name != self.protocol_name):
            return SyncResult(ErrorCode.INCONSISTENT_GROUP_PROTOCOL)
        member = self.members[member_id]
        if self.state is GroupState.PREPARING_REBALANCE:
            return SyncResult(ErrorCode.REBALANCE_IN_PROGRESS)
        self._touch(now, member)
        if self.state is GroupState.STABLE:
            return self._sync_result(member)
        # CompletingRebalance
        ticket = member.sync_ticket = self._ticket()
        if member_id == self.leader_id:
            given = dict(assignments)
            for m in self.members.values():
                m.assignment = given.get(m.member_id, b"")
            self.state = GroupState.STABLE
            self._sync_deadline = None
            for m in self.members.values():
                if m.sync_ticket is not None:
                    self._results[m.sync_ticket] = self._sync_result(m)
                    m.sync_ticket = None
                self._touch(now, m)
        result = self._results.pop(ticket, None)
        if result is not None:
            assert isinstance(result, SyncResult)
            return result
        return Parked(ticket)

    def _sync_result(self, member: Member) -> SyncResult:
        return SyncResult(ErrorCode.NONE, member.assignment, self.protocol_type,
                          self.protocol_name)

    # -- Heartbeat, LeaveGroup, offset commits ----------------------------------------------

    def heartbeat(self, now: int, *, member_id: str, generation_id: int,
                  instance_id: str | None) -> int:
        """Handle a Heartbeat; return its error code."""
        if self.state is GroupState.DEAD:
            return ErrorCode.COORDINATOR_NOT_AVAILABLE
        error = self._check_member(member_id, instance_id)
        if error != ErrorCode.NONE:
            return error
        if generation_id != self.generation_id:
            return ErrorCode.ILLEGAL_GENERATION
        self._touch(now, self.members[member_id])
        if self.state is GroupState.PREPARING_REBALANCE:
            return ErrorCode.REBALANCE_IN_PROGRESS
        return ErrorCode.NONE

    def leave(self, now: int, *, member_id: str, instance_id: str | None) -> int:
        """Handle one leaving member (LeaveGroup v0-2, or one entry of v3+); return its error."""
        if self.state is GroupState.DEAD:
            return ErrorCode.COORDINATOR_NOT_AVAILABLE
        if instance_id is not None:
            current = self.static_members.get(instance_id)
            if current is None:
                return ErrorCode.UNKNOWN_MEMBER_ID
            if member_id != UNKNOWN_MEMBER and member_id != current:
                return ErrorCode.FENCED_INSTANCE_ID
            member_id = current
        elif member_id in self.pending:
            del self.pending[member_id]
            self._maybe_complete_join(now)
            return ErrorCode.NONE
        elif member_id not in self.members:
            return ErrorCode.UNKNOWN_MEMBER_ID
        self._remove(now, member_id)
        return ErrorCode.NONE

    def check_commit(self, now: int, *, member_id: str, generation_id: int,
                     instance_id: str | None) -> int:
        """May this OffsetCommit store offsets?  Its error code (NONE: yes).

        A commit with generation -1 and no member id into an Empty group is a "simple"
        commit (manual assignment, or offsets set by an admin) and is accepted; into a group
        with members it is refused with ``UNKNOWN_MEMBER_ID`` (only members may commit).
        Otherwise, as Kafka checks it: the member (``FENCED_INSTANCE_ID``,
        ``UNKNOWN_MEMBER_ID``), then the generation (``ILLEGAL_GENERATION``), then the state
        (``REBALANCE_IN_PROGRESS`` while the assignment is pending).  A member keeps its
        commits while the group prepares a rebalance, parked JoinGroup or not.
        """
        if self.state is GroupState.DEAD:
            return ErrorCode.COORDINATOR_NOT_AVAILABLE
        if generation_id < 0 and self.state is GroupState.EMPTY:
            return ErrorCode.NONE
        if generation_id < 0 and member_id == UNKNOWN_MEMBER and instance_id is None:
            return ErrorCode.UNKNOWN_MEMBER_ID
        error = self._check_member(member_id, instance_id)
        if error != ErrorCode.NONE:
            return error
        if generation_id != self.generation_id:
            return ErrorCode.ILLEGAL_GENERATION
        if self.state is GroupState.COMPLETING_REBALANCE:
            return ErrorCode.REBALANCE_IN_PROGRESS
        self._touch(now, self.members[member_id])
        return ErrorCode.NONE

    def _check_member(self, member_id: str, instance_id: str | None) -> int:
        if instance_id is not None:
            current = self.static_members.get(instance_id)
            if current is not None and current != member_id:
                return ErrorCode.FENCED_INSTANCE_ID
        if member_id not in self.members:
            return ErrorCode.UNKNOWN_MEMBER_ID
        return ErrorCode.NONE

    def mark_dead(self) -> None:
        """DeleteGroups: the group is gone; parked requests are told so."""
        for member in list(self.members.values()):
            self._fail_parked(member, ErrorCode.COORDINATOR_NOT_AVAILABLE)
        self.members.clear()
        self.static_members.clear()
        self.pending.clear()
        self.state = GroupState.DEAD
        self._rebalance = None
        self._sync_deadline = None

    # -- timers ------------------------------------------------------------------------------

    def tick(self, now: int) -> None:
        """Expire what is due at ``now`` (see :meth:`next_deadline`)."""
        for member_id, deadline in list(self.pending.items()):
            if deadline <= now:
                del self.pending[member_id]
        for member in list(self.members.values()):
            if self._expires(member) and member.session_deadline <= now:
                self._remove(now, member.member_id)
        if self.state is GroupState.COMPLETING_REBALANCE and self._sync_deadline is not None \
                and self._sync_deadline <= now:
            # the leader never sent its assignment: drop the members that did not sync
            for member in list(self.members.values()):
                if member.sync_ticket is None:
                    self._remove(now, member.member_id, rebalance=False)
            self._prepare_rebalance(now)
        self._maybe_complete_join(now)

    def _expires(self, member: Member) -> bool:
        """Whether the member's session can expire now (not while it waits to be answered)."""
        return not member.awaiting_join and member.sync_ticket is None

    def _touch(self, now: int, member: Member) -> None:
        member.session_deadline = now + member.session_timeout_ms

    # -- transitions -------------------------------------------------------------------------

    def _remove(self, now: int, member_id: str, *, rebalance: bool = True) -> None:
        member = self.members.pop(member_id)
        if member.instance_id is not None and self.static_members.get(
                member.instance_id) == member_id:
            del self.static_members[member.instance_id]
        self._fail_parked(member, ErrorCode.UNKNOWN_MEMBER_ID)
        if self.leader_id == member_id:
            self.leader_id = next(iter(self.members), None)
        if not rebalance:
            return
        if self.state in (GroupState.STABLE, GroupState.COMPLETING_REBALANCE):
            self._prepare_rebalance(now)
        self._maybe_complete_join(now)

    def _fail_parked(self, member: Member, error: int) -> None:
        if member.join_ticket is not None:
            self._results[member.join_ticket] = JoinResult(error, member.member_id)
            member.join_ticket = None
        if member.sync_ticket is not None:
            self._results[member.sync_ticket] = SyncResult(error)
            member.sync_ticket = None

    def _prepare_rebalance(self, now: int) -> None:
        for member in self.members.values():  # CompletingRebalance: parked syncs must rejoin
            if member.sync_ticket is not None:
                self._results[member.sync_ticket] = SyncResult(ErrorCode.REBALANCE_IN_PROGRESS)
                member.sync_ticket = None
        timeout = max((m.rebalance_timeout_ms for m in self.members.values()), default=0)
        delay = self.config.initial_rebalance_delay_ms
        if self.state is GroupState.EMPTY and delay > 0:
            self._rebalance = _Rebalance(now + timeout, now + delay, now + max(timeout, delay),
                                         delaying=True)
        else:
            self._rebalance = _Rebalance(now + timeout, now, now)
        self._sync_deadline = None
        self.state = GroupState.PREPARING_REBALANCE

    def _maybe_complete_join(self, now: int) -> None:
        reb = self._rebalance
        if self.state is not GroupState.PREPARING_REBALANCE or reb is None:
            return
        everyone = all(m.awaiting_join for m in self.members.values()) and not self.pending
        if now < reb.not_before and now < reb.deadline:
            return
        reb.delaying = False
        if not everyone and now < reb.deadline:
            return
        for member in list(self.members.values()):
            if not member.awaiting_join:  # did not rejoin within the rebalance timeout
                self._remove(now, member.member_id, rebalance=False)
        # pending member ids stay valid until their own deadline, as in Kafka: one that
        # joins after the phase ended starts the next rebalance instead of being refused
        self._rebalance = None
        self.generation_id += 1
        if not self.members:
            self.state = GroupState.EMPTY
            self.protocol_type = self.protocol_name = self.leader_id = None
            return
        if self.leader_id not in self.members:
            self.leader_id = next(iter(self.members))
        self.protocol_name = self._select_protocol()
        self.state = GroupState.COMPLETING_REBALANCE
        self._sync_deadline = now + max(m.rebalance_timeout_ms for m in self.members.values())
        for member in self.members.values():
            member.awaiting_join = False
            self._touch(now, member)
            if member.join_ticket is not None:
                self._results[member.join_ticket] = self._join_result(member)
                member.join_ticket = None

    def _select_protocol(self) -> str:
        assert self.leader_id is not None
        leader = self.members[self.leader_id]
        for name, _ in leader.protocols:
            if all(name in self._protocol_names(m) for m in self.members.values()):
                return name
        raise AssertionError("joins are checked for a common protocol")  # pragma: no cover

    def _ticket(self) -> int:
        ticket = self._next_ticket
        self._next_ticket += 1
        return ticket


def _subscription_topics(data: bytes) -> list[str] | None:
    """Topics of a ConsumerProtocolSubscription (any version), or None if unparseable.

    Every version starts ``version:int16, topics:[string]`` (non-flexible encoding).
    """
    if len(data) < 6:
        return None
    count = int.from_bytes(data[2:6], "big", signed=True)
    if not 0 <= count <= len(data):  # each topic takes at least two bytes
        return None
    pos = 6
    topics = []
    for _ in range(count):
        if pos + 2 > len(data):
            return None
        size = int.from_bytes(data[pos:pos + 2], "big", signed=True)
        pos += 2
        if size < 0 or pos + size > len(data):
            return None
        try:
            topics.append(data[pos:pos + size].decode("utf-8"))
        except UnicodeDecodeError:
            return None
        pos += size
    return topics
