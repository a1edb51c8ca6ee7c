"""Why a message was dead-lettered, and the hook that turns (message, reason) into the dead
letter: the default ``ps.dlq.*`` headers, a policy's rewrite, drop-head's dead letters, and
the reasons a subscription reports (rejected, delivery_limit, expired, maxlen)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import trio
import trio.testing

from core.api import Core, open_core
from core.config import CoreSettings
from core.names import TopicName
from core.records import Message, decode_batch
from core.subscriptions import (
    InitialPosition,
    RedeliveryPolicy,
    SubscriptionManager,
    SubscriptionOptions,
    SubscriptionType,
    open_subscription_manager,
)
from core.subscriptions.items import Buffered
from core.subscriptions.redelivery import (
    DLQ_REASON_HEADER,
    DeadLetter,
    DeadLetterReason,
    dead_letter_dropped,
    dead_letters,
)
from storage import open_storage

SHARED = SubscriptionType.SHARED
EARLIEST = InitialPosition.EARLIEST
TOPIC = TopicName.parse("t")
NOW_MS = 1_700_000_000_000

#: the subscription records why a message is on its dead letter list (core/subscriptions/
#: subscription.py uses DeadLetter and dead_letters); until then these tests cannot pass
def tag(message: Message, reason: DeadLetterReason) -> Message:
    """A rewrite that marks the dead letter with its reason and nothing else."""
    return Message(b"dead", message.value, [("why", reason.value.encode())],
                   message.timestamp_ms)


def reasons_seen(max_redeliveries: int | None = None
                 ) -> tuple[list[DeadLetterReason], RedeliveryPolicy]:
    """The reasons the policy's rewrite was called with, and the policy (DLQ ``dlq``)."""
    seen: list[DeadLetterReason] = []

    def rewrite(message: Message, reason: DeadLetterReason) -> Message:
        seen.append(reason)
        return tag(message, reason)

    return seen, RedeliveryPolicy(nack_delay_s=0, nack_max_delay_s=0, dead_letter_topic="dlq",
                                  max_redeliveries=max_redeliveries,
                                  dead_letter_rewrite=rewrite)


async def dead_values(core: Core, topic: str) -> list[tuple[bytes | None, dict[str, bytes]]]:
    """Value and headers of every message in partition 0 of ``topic``."""
    out = []
    position = 0
    while position < await core.latest_offset(topic, 0):
        for entry in await core.read(topic, 0, position, 1 << 20):
            for stored in decode_batch(entry.batch):
                out.append((stored.message.value, dict(stored.message.headers)))
            position = entry.last_offset + 1
    return out


@pytest.fixture
async def core() -> AsyncIterator[Core]:
    settings = CoreSettings(retention_check_interval_ms=0)
    async with open_storage("memory://") as storage, open_core(storage, settings) as c:
        await c.create_topic("t", 1)
        yield c


@pytest.fixture
async def subs(core: Core) -> AsyncIterator[SubscriptionManager]:
    async with open_subscription_manager(core) as m:
        yield m


# -- building dead letters ----------------------------------------------------------------------


def test_default_dead_letter_says_where_from_and_why() -> None:
    policy = RedeliveryPolicy(dead_letter_topic="dlq", dead_letter_key=b"k2")
    items = [
        DeadLetter(7, Message(b"k", b"a", [("h", b"1")], 5), 6, DeadLetterReason.REJECTED),
        Buffered(8, Message(None, b"b", [], 5), 6),  # plain items are the read-ahead's expired
    ]
    first, second = dead_letters(items, TOPIC, 0, policy)
    assert first.key == b"k2" and first.value == b"a" and first.timestamp_ms == 5
    assert first.headers == [
        ("h", b"1"), ("ps.dlq.topic", b"persistent://public/default/t"),
        ("ps.dlq.partition", b"0"), ("ps.dlq.offset", b"7"), (DLQ_REASON_HEADER, b"rejected")]
    assert dict(second.headers)[DLQ_REASON_HEADER] == b"expired"
    assert dict(second.headers)["ps.dlq.offset"] == b"8"


def test_rewrite_builds_the_dead_letter_instead() -> None:
    seen, policy = reasons_seen()
    item = DeadLetter(3, Message(b"k", b"v", [], 1), 2, DeadLetterReason.DELIVERY_LIMIT)
    (out,) = dead_letters([item], TOPIC, 0, policy)
    assert seen == [DeadLetterReason.DELIVERY_LIMIT]
    assert out == Message(b"dead", b"v", [("why", b"delivery_limit")], 1)  # no ps.dlq.*


def test_a_failing_rewrite_falls_back_to_the_default() -> None:
    def broken(message: Message, reason: DeadLetterReason) -> Message:
        raise ValueError("bug")

    policy = RedeliveryPolicy(dead_letter_topic="dlq", dead_letter_rewrite=broken)
    (out,) = dead_letters([DeadLetter(1, Message(None, b"v"), 0, DeadLetterReason.MAXLEN)],
                          TOPIC, 0, policy)
    assert out.value == b"v" and dict(out.headers)[DLQ_REASON_HEADER] == b"maxlen"


def test_policies_compare_without_their_rewrite() -> None:
    assert RedeliveryPolicy(dead_letter_rewrite=tag) == RedeliveryPolicy()


def test_options_expired_by_ttl_and_by_the_message_expiry() -> None:
    ttl = SubscriptionOptions(message_ttl_ms=100)
    plain = Message(None, b"v", [], NOW_MS)
    assert not ttl.expired(plain, NOW_MS - 99, NOW_MS)
    assert ttl.expired(plain, NOW_MS - 100, NOW_MS)
    own = Message(None, b"v", [("ps.expiry-ms", b"50")], NOW_MS - 50)
    assert SubscriptionOptions().expired(own, NOW_MS, NOW_MS)
    assert not SubscriptionOptions(honour_expiry=False).expired(own, NOW_MS, NOW_MS)


# -- drop-head's dead letters -------------------------------------------------------------------


async def test_dropped_messages_are_dead_lettered_with_maxlen(core: Core) -> None:
    await core.append_messages("t", 0, [Message(b"a", b"0"), Message(b"skip", b"1"),
                                        Message(b"a", b"2")])
    await core.append_messages("t", 0, [Message(b"a", b"3"),
                                        Message(b"a", b"4", [("ps.expiry-ms", b"1")], 1)])
    await core.create_topic("dlq", 1)
    seen, policy = reasons_seen()
    options = SubscriptionOptions(filter=lambda m: m.key != b"skip", redelivery=policy,
                                  dead_letter_expired=True)
    # 0..2 and 4 dropped (3 stays): 1 is not the subscription's, 4 has expired
    sent = await dead_letter_dropped(core, TOPIC, 0, "s", options, [(0, 3), (4, 5)], NOW_MS)
    assert sent == 3
    assert seen == [DeadLetterReason.MAXLEN, DeadLetterReason.MAXLEN, DeadLetterReason.EXPIRED]
    assert [(v, h["why"]) for v, h in await dead_values(core, "dlq")] == [
        (b"0", b"maxlen"), (b"2", b"maxlen"), (b"4", b"expired")]


async def test_dropped_expired_messages_are_not_sent_unless_asked(core: Core) -> None:
    await core.append_messages("t", 0, [Message(None, b"old", [("ps.expiry-ms", b"1")], 1),
                                        Message(None, b"new")])
    options = SubscriptionOptions(redelivery=RedeliveryPolicy(dead_letter_topic="dlq"))
    assert await dead_letter_dropped(core, TOPIC, 0, "s", options, [(0, 2)], NOW_MS) == 1
    [(value, headers)] = await dead_values(core, "dlq")  # created on first use
    assert value == b"new" and headers[DLQ_REASON_HEADER] == b"maxlen"


async def test_many_dropped_messages_go_in_bounded_batches_in_order(core: Core) -> None:
    for start in range(0, 250, 50):
        await core.append_messages("t", 0, [Message(None, b"%d" % i)
                                            for i in range(start, start + 50)])
    options = SubscriptionOptions(redelivery=RedeliveryPolicy(dead_letter_topic="dlq"))
    assert await dead_letter_dropped(core, TOPIC, 0, "s", options, [(10, 240)], NOW_MS) == 230
    assert [v for v, _ in await dead_values(core, "dlq")] == [
        b"%d" % i for i in range(10, 240)]
    # one append per bounded batch of dead letters (100 at most), not one per message
    assert len(await core.read("dlq", 0, 0, 1 << 20)) == 3


async def test_nothing_is_sent_without_dead_letters(core: Core) -> None:
    await core.append_messages("t", 0, [Message(None, b"x")])
    assert await dead_letter_dropped(core, TOPIC, 0, "s", SubscriptionOptions(), [(0, 1)],
                                     NOW_MS) == 0


# -- reasons reported by a subscription ---------------------------------------------------------


async def test_reject_and_delivery_limit_reasons(
    core: Core, subs: SubscriptionManager, autojump_clock: trio.testing.MockClock
) -> None:
    seen, policy = reasons_seen(max_redeliveries=0)
    await core.create_topic("dlq", 1)
    c = await subs.subscribe("t", "s", SHARED, initial_position=EARLIEST, redelivery=policy)
    c.flow(10)
    await core.append_messages("t", 0, [Message(None, b"rejected"), Message(None, b"nacked")])
    with trio.fail_after(10):
        first = await c.receive()
        second = await c.receive()
    c.reject(first.partition, first.offset)
    c.nack(second.partition, second.offset)  # max_redeliveries=0: straight to the DLQ
    with trio.fail_after(10):
        await core.wait_for_data("dlq", 0, 1)
    assert seen == [DeadLetterReason.REJECTED, DeadLetterReason.DELIVERY_LIMIT]
    assert [(v, h["why"]) for v, h in await dead_values(core, "dlq")] == [
        (b"rejected", b"rejected"), (b"nacked", b"delivery_limit")]
    assert (await subs.list_subscriptions("t"))[0].backlog == 0


async def test_expired_reason(
    core: Core, subs: SubscriptionManager, autojump_clock: trio.testing.MockClock
) -> None:
    seen, policy = reasons_seen()
    await core.create_topic("dlq", 1)
    c = await subs.subscribe("t", "s", SHARED, initial_position=EARLIEST, redelivery=policy,
                             dead_letter_expired=True)
    c.flow(10)
    await core.append_messages("t", 0, [Message(None, b"gone", [("ps.expiry-ms", b"1")], 1),
                                        Message(None, b"kept")])
    with trio.fail_after(10):
        d = await c.receive()
        await core.wait_for_data("dlq", 0, 0)
    assert d.message.value == b"kept"
    assert seen == [DeadLetterReason.EXPIRED]
    assert [(v, h["why"]) for v, h in await dead_values(core, "dlq")] == [
        (b"gone", b"expired")]


async def test_drop_head_reason(core: Core, subs: SubscriptionManager) -> None:
    seen, policy = reasons_seen()
    c = await subs.subscribe("t", "s", SHARED, initial_position=EARLIEST, redelivery=policy)
    c.close()  # an idle queue keeps its options
    await core.append_messages("t", 0, [Message(None, b"%d" % i) for i in range(4)])
    assert await subs.drop_head("t", "s", 1) == 3
    assert seen == [DeadLetterReason.MAXLEN] * 3
    assert [(v, h["why"]) for v, h in await dead_values(core, "dlq")] == [
        (b"0", b"maxlen"), (b"1", b"maxlen"), (b"2", b"maxlen")]
    await subs.flush()  # an idle subscription counts its backlog from the stored cursor
    assert (await subs.list_subscriptions("t"))[0].backlog == 1
