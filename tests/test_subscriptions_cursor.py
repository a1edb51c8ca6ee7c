"""How subscriptions use their cursor: coalesced saves, retention, redelivery counts."""

from __future__ import annotations

import trio
import trio.testing

from core.api import open_core
from core.config import CoreSettings
from core.cursor import Cursor
from core.cursor_store import CursorStore
from core.namespaces import TopicPolicies
from core.records import Message
from core.subscriptions import (
    InitialPosition,
    SubscriptionType,
    open_subscription_manager,
)
from storage import open_storage

SETTINGS = CoreSettings(retention_check_interval_ms=0)


class CountingStore(CursorStore):
    """A cursor store that counts coalesced saves."""

    saves = 0

    def save(self, log_name: str, subscription: str, cursor: Cursor) -> None:
        self.saves += 1
        super().save(log_name, subscription, cursor)


async def test_ack_storm_is_one_save() -> None:
    async with open_storage("memory://") as storage, open_core(storage, SETTINGS) as core:
        store = CountingStore(storage.metadata)
        async with open_subscription_manager(core, store) as subs:
            c = await subs.subscribe("t", "s", SubscriptionType.SHARED,
                                     initial_position=InitialPosition.EARLIEST)
            c.flow(200)
            await core.append_messages("t", 0, [Message(None, b"") for _ in range(200)])
            await trio.testing.wait_all_tasks_blocked()
            deliveries = [c.receive_nowait() for _ in range(200)]
            before = store.saves
            for d in reversed(deliveries):  # worst case: scattered acks until the last one
                c.ack(d.partition, d.offset)
            await trio.testing.wait_all_tasks_blocked()
            # the first ack of the idle subscription is saved at once, the rest by one pass
            assert store.saves == before + 2
            stored = await store.load(core.parse_topic("t").log_name(0), "s")
            assert stored is not None and stored.mark_delete == 200


async def test_ack_of_an_idle_subscription_is_saved_without_a_pass() -> None:
    async with open_storage("memory://") as storage, open_core(storage, SETTINGS) as core:
        store = CountingStore(storage.metadata)
        async with open_subscription_manager(core, store) as subs:
            c = await subs.subscribe("t", "s", initial_position=InitialPosition.EARLIEST)
            c.flow(10)
            await core.append_messages("t", 0, [Message(None, b"%d" % i) for i in range(3)])
            await trio.testing.wait_all_tasks_blocked()
            deliveries = [c.receive_nowait() for _ in range(3)]
            before = store.saves
            c.ack_many(0, [d.offset for d in deliveries])
            assert store.saves == before + 1  # synchronously: the task stays parked
            await trio.testing.wait_all_tasks_blocked()
            assert store.saves == before + 1
            stored = await store.load(core.parse_topic("t").log_name(0), "s")
            assert stored is not None and stored.mark_delete == 3


async def test_cursor_behind_retention_moves_to_earliest() -> None:
    now = [1_000_000]
    async with open_storage("memory://") as storage, open_core(
        storage, SETTINGS, clock_ms=lambda: now[0]
    ) as core, open_subscription_manager(core) as subs:
        await core.create_topic("r", policies=TopicPolicies(retention_ms=1000))
        c = await subs.subscribe("r", "s", initial_position=InitialPosition.EARLIEST)
        c.close()  # idle while retention runs
        for i in range(200):
            await core.append_messages("r", 0, [Message(None, b"%d" % i)])
        now[0] += 5000
        assert await core.apply_retention() > 0
        earliest = await core.earliest_offset("r", 0)
        c = await subs.subscribe("r", "s")
        c.flow(1000)
        await trio.testing.wait_all_tasks_blocked()
        first = c.receive_nowait()
        assert first.offset == earliest and first.message.value == b"%d" % earliest
        (info,) = await subs.list_subscriptions("r")
        assert info.backlog == 200 - earliest


async def test_nack_after_cumulative_ack_is_a_no_op() -> None:
    async with (
        open_storage("memory://") as storage,
        open_core(storage, SETTINGS) as core,
        open_subscription_manager(core) as subs,
    ):
        c = await subs.subscribe("t", "s", SubscriptionType.FAILOVER,
                                 initial_position=InitialPosition.EARLIEST)
        c.flow(10)
        await core.append_messages("t", 0, [Message(None, b"a"), Message(None, b"b")])
        await trio.testing.wait_all_tasks_blocked()
        d0, d1 = c.receive_nowait(), c.receive_nowait()
        c.ack_cumulative(0, d1.offset)  # acks 0 as well
        assert c.unacked == 0
        c.nack(0, d0.offset)  # acked already: nothing happens
        await trio.testing.wait_all_tasks_blocked()
        assert c.queued == 0


async def test_expired_messages_are_acked_not_delivered() -> None:
    now = [1_000_000]

    def clock() -> int:
        return now[0]

    async with (
        open_storage("memory://") as storage,
        open_core(storage, SETTINGS, clock_ms=clock) as core,
        open_subscription_manager(core, clock_ms=clock) as subs,
    ):
        c = await subs.subscribe("t", "s", SubscriptionType.SHARED, message_ttl_ms=10_000,
                                 initial_position=InitialPosition.EARLIEST)
        await core.append_messages("t", 0, [Message(None, b"old")])
        now[0] += 5_000
        await core.append_messages("t", 0, [
            Message(None, b"short", [("ps.expiry-ms", b"1000")], timestamp_ms=now[0]),
            Message(None, b"fresh", timestamp_ms=now[0]),
        ])
        now[0] += 6_000  # "old" is 11 s old, "short" ran out after 1 s
        c.flow(10)
        await trio.testing.wait_all_tasks_blocked()
        assert c.receive_nowait().message.value == b"fresh"
        group = subs.get("t", "s")
        assert group is not None and group.partitions[0].expired == 2
        (info,) = await subs.list_subscriptions("t")
        assert info.backlog == 1 and info.unacked == 1


async def test_namespace_ttl_policy_applies_and_expiry_while_waiting() -> None:
    now = [1_000_000]

    def clock() -> int:
        return now[0]

    async with (
        open_storage("memory://") as storage,
        open_core(storage, SETTINGS, clock_ms=clock) as core,
        open_subscription_manager(core, clock_ms=clock) as subs,
    ):
        await core.set_namespace_policies("public/default", message_ttl_ms=1000)
        await core.create_topic("ttl")
        c = await subs.subscribe("ttl", "s", SubscriptionType.SHARED,
                                 initial_position=InitialPosition.EARLIEST)
        c.flow(1)
        await core.append_messages("ttl", 0, [Message(None, b"a"), Message(None, b"b")])
        await trio.testing.wait_all_tasks_blocked()
        d = c.receive_nowait()
        assert d.message.value == b"a"
        now[0] += 2000  # "b" expires while waiting in the read-ahead
        c.ack(d.partition, d.offset)
        c.flow(1)
        await trio.testing.wait_all_tasks_blocked()
        assert c.queued == 0
        (info,) = await subs.list_subscriptions("ttl")
        assert info.backlog == 0
