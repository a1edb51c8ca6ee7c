"""TxnOffsetCommit (v0-4): a group's offsets, committed only if the transaction commits.

The offsets are held by the core's transaction (:meth:`TransactionCoordinator.commit_offsets`,
subscription ``kafka:<group id>``) and applied when it commits by :func:`commit_group_offsets`,
the core's ``offset_committer`` hook as the Kafka handler installs it
(:func:`install_offset_committer`): it stores them through the group coordinator's
:class:`~handlers.kafka.groups.offsets.OffsetStore`, so the cursor, the
``kafka/offsets/*`` record and the coordinator's cache stay in step.  Until then OffsetFetch
with ``RequireStable`` answers ``UNSTABLE_OFFSET_COMMIT`` for those partitions.

v3+ carry the member id and generation: when both are set and the group is live they are
checked as an OffsetCommit's are (``UNKNOWN_MEMBER_ID``, ``ILLEGAL_GENERATION``, ...), which
fences a zombie consumer.  The metadata string and leader epoch of a transactional commit are
not kept (the core holds only the offset): they fetch as ``""`` and -1.
v5 implicitly adds the group to the transaction (transactions v2, KIP-890): not served.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from core.api import wall_clock_ms
from core.errors import CoreError
from core.transactions.acks import commit_offsets_to_cursors
from core.transactions.state import OffsetRef
from handlers.kafka import registry
from handlers.kafka.apis import ApiKey
from handlers.kafka.codec import KafkaRequest
from handlers.kafka.errormap import error_code
from handlers.kafka.errors import ErrorCode
from handlers.kafka.groups import CommittedOffset, coordinator_for, subscription_name
from handlers.kafka.groups.coordinator import now_ms
from handlers.kafka.service.add_partitions_to_txn import open_transaction, txn_error_code
from handlers.kafka.service.context import Reply, ServiceContext

if TYPE_CHECKING:
    from core.api import Core, TopicRef

__all__ = ["GROUP_PREFIX", "commit_group_offsets", "handle", "install_offset_committer"]

log = logging.getLogger(__name__)

GROUP_PREFIX = subscription_name("")
"""Subscription names of Kafka groups start with this (``kafka:``)."""

_PRODUCER_FENCED_SINCE = 3  # TxnOffsetCommit learnt PRODUCER_FENCED in v3


async def commit_group_offsets(core: Core, offsets: dict[OffsetRef, int]) -> None:
    """The core's offset committer for Kafka: group offsets through the group coordinator,
    any other subscription's through the core's default committer."""
    by_group: dict[str, dict[tuple[str, int], tuple[CommittedOffset, str]]] = {}
    others: dict[OffsetRef, int] = {}
    now = wall_clock_ms()
    for ref, offset in offsets.items():
        if not ref.subscription.startswith(GROUP_PREFIX):
            others[ref] = offset
            continue
        name = core.parse_topic(ref.topic).base
        group = by_group.setdefault(ref.subscription[len(GROUP_PREFIX):], {})
        group[(name.local, ref.partition)] = (CommittedOffset(offset, -1, "", now),
                                              name.log_name(ref.partition))
    store = coordinator_for(core).offsets
    for group_id, committed in by_group.items():
        await store.commit(group_id, committed)
    if others:
        await commit_offsets_to_cursors(core, others)


def install_offset_committer(core: Core) -> None:
    """Make :func:`commit_group_offsets` the core's transactional offset committer."""
    if core.transactions.offset_committer is not commit_group_offsets:
        core.transactions.offset_committer = commit_group_offsets


def _check_member(ctx: ServiceContext, body: Any, version: int) -> int:
    """The group's verdict on the committing member (v3+ with a generation), else NONE."""
    if version < 3 or body.generation_id < 0:
        return int(ErrorCode.NONE)
    group = coordinator_for(ctx.core).group(body.group_id)
    if group is None:
        return int(ErrorCode.NONE)  # not live here (e.g. after a restart): nothing to check
    return int(group.check_commit(now_ms(), member_id=body.member_id,
                                  generation_id=body.generation_id,
                                  instance_id=body.group_instance_id))


async def handle(ctx: ServiceContext, request: KafkaRequest) -> Reply:
    """Hold the offsets in the producer's transaction; answer per partition."""
    version = request.api_version
    body: Any = request.body
    install_offset_committer(ctx.core)
    codes: dict[tuple[str, int], int] = {}
    held: dict[tuple[TopicRef, int], int] = {}
    for topic in body.topics:
        for p in topic.partitions:
            tp = (topic.name, p.partition_index)
            try:
                ref = await ctx.partition(topic.name, p.partition_index)
            except CoreError as exc:
                codes[tp] = int(error_code(exc))
                continue
            held[(ref, p.partition_index)] = p.committed_offset
            codes[tp] = int(ErrorCode.NONE)
    common = int(ErrorCode.INVALID_GROUP_ID) if not body.group_id else _check_member(
        ctx, body, version)
    if common == ErrorCode.NONE and held:
        try:
            txn = await open_transaction(ctx, body.transactional_id, body.producer_id,
                                         body.producer_epoch)
            ctx.core.transactions.commit_offsets(txn, subscription_name(body.group_id), held)
        except CoreError as exc:
            common = txn_error_code(exc, version, _PRODUCER_FENCED_SINCE)
    if common != ErrorCode.NONE:
        log.debug("TxnOffsetCommit of group %r refused: %d", body.group_id, common)
        codes = dict.fromkeys(codes, common)
    cls = registry.response_class(ApiKey.TxnOffsetCommit, version)
    topic_cls = cls.TxnOffsetCommitResponseTopic
    part_cls = topic_cls.TxnOffsetCommitResponsePartition
    topics = [topic_cls(name=topic.name, partitions=[
        part_cls(partition_index=p.partition_index,
                 error_code=codes[(topic.name, p.partition_index)])
        for p in topic.partitions]) for topic in body.topics]
    return cls(throttle_time_ms=0, topics=topics)
