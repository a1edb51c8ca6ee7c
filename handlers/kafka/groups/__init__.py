"""Kafka consumer groups: the classic group coordinator and committed offsets.

* :mod:`~handlers.kafka.groups.state` -- the sans-IO state machine of one group (JoinGroup,
  SyncGroup, Heartbeat, LeaveGroup, commit validation; timers as deadlines);
* :mod:`~handlers.kafka.groups.offsets` -- committed offsets as the groups' core cursors
  (subscription ``kafka:<group id>``), plus their metadata strings;
* :mod:`~handlers.kafka.groups.coordinator` -- the thin trio layer that parks JoinGroup/SyncGroup
  answers, expires sessions and persists offsets.
"""

from handlers.kafka.groups.coordinator import (
    GroupCoordinator,
    GroupSummary,
    coordinator_for,
    install_coordinator,
)
from handlers.kafka.groups.offsets import CommittedOffset, OffsetStore, subscription_name
from handlers.kafka.groups.state import (
    UNKNOWN_MEMBER,
    Group,
    GroupConfig,
    GroupState,
    JoinResult,
    Member,
    Parked,
    SyncResult,
)

__all__ = [
    "UNKNOWN_MEMBER",
    "CommittedOffset",
    "Group",
    "GroupConfig",
    "GroupCoordinator",
    "GroupState",
    "GroupSummary",
    "JoinResult",
    "Member",
    "OffsetStore",
    "Parked",
    "SyncResult",
    "coordinator_for",
    "install_coordinator",
    "subscription_name",
]
