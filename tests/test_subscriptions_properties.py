"""Hypothesis properties of subscriptions under random joins, leaves, acks and nacks.

* no acknowledged message is ever delivered again;
* every message not acknowledged is eventually delivered again (a fresh
  consumer drains exactly the unacknowledged set at the end);
* Key_Shared keeps per-key order across rebalances: while one consumer holds an
  unacknowledged message of a key no other consumer receives that key, and the
  first deliveries of a key come in offset order.
"""

from __future__ import annotations

from collections import defaultdict

import trio
import trio.testing
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from core.api import Core, open_core
from core.config import CoreSettings
from core.records import Message
from core.subscriptions import (
    Consumer,
    InitialPosition,
    RedeliveryPolicy,
    SubscriptionManager,
    SubscriptionType,
    open_subscription_manager,
)
from storage import open_storage

TOPIC = "props"
KEYS = [b"a", b"b", b"c", b"d", None]

publish = st.tuples(st.just("publish"), st.integers(0, 1),
                    st.lists(st.integers(0, 4), min_size=1, max_size=6))
op = st.one_of(
    st.tuples(st.just("join"), st.integers(0, 2), st.integers(1, 6)),
    st.tuples(st.just("leave"), st.integers(0, 7)),
    st.tuples(st.just("flow"), st.integers(0, 7), st.integers(1, 4)),
    st.tuples(st.just("ack"), st.integers(0, 7), st.integers(0, 7)),
    st.tuples(st.just("ack"), st.integers(0, 7), st.integers(0, 7)),
    st.tuples(st.just("nack"), st.integers(0, 7), st.integers(0, 7)),
    st.tuples(st.just("cumulative"), st.integers(0, 7), st.integers(0, 7)),
    st.tuples(st.just("sleep"), st.floats(0.1, 5.0)),
)


#: each step publishes some messages (maybe none) then does one operation
steps = st.lists(st.tuples(st.one_of(st.none(), publish), op), min_size=3, max_size=30).map(
    lambda pairs: [x for pair in pairs for x in pair if x is not None]
)


class Model:
    """What the test saw: acks, who holds what, first deliveries per key."""

    def __init__(self, kind: SubscriptionType) -> None:
        self.kind = kind
        self.published: dict[tuple[int, int], bytes | None] = {}
        self.acked: set[tuple[int, int]] = set()
        self.seen: set[tuple[int, int]] = set()
        self.first_order: dict[tuple[int, bytes | None], int] = {}
        # (partition, key) -> {offset: consumer id} received and not acked/nacked
        self.outstanding: dict[tuple[int, bytes | None], dict[int, int]] = defaultdict(dict)

    def received(self, consumer: Consumer, partition: int, offset: int) -> None:
        pos = (partition, offset)
        assert pos in self.published, pos
        assert pos not in self.acked, f"acked message {pos} delivered again"
        key = self.published[pos]
        if self.kind is SubscriptionType.KEY_SHARED:
            others = {c for c in self.outstanding[(partition, key)].values()
                      if c != consumer.consumer_id}
            assert not others, f"key {key!r} at {pos} while consumers {others} hold it"
            if pos not in self.seen:
                last = self.first_order.get((partition, key), -1)
                assert offset > last, f"key {key!r}: first delivery of {offset} after {last}"
                self.first_order[(partition, key)] = offset
        self.outstanding[(partition, key)][offset] = consumer.consumer_id
        self.seen.add(pos)

    def released(self, partition: int, offset: int) -> None:
        self.outstanding[(partition, self.published[(partition, offset)])].pop(offset, None)

    def left(self, consumer: Consumer) -> None:
        for held in self.outstanding.values():
            for offset in [o for o, c in held.items() if c == consumer.consumer_id]:
                del held[offset]


async def settle() -> None:
    await trio.testing.wait_all_tasks_blocked()


async def scenario(core: Core, subs: SubscriptionManager, kind: SubscriptionType,
                   ops: list[tuple[object, ...]]) -> None:
    model = Model(kind)
    # ack timeouts take messages from consumers the Key_Shared model still counts as holders
    timeout = None if kind is SubscriptionType.KEY_SHARED else 3.0
    policy = RedeliveryPolicy(nack_delay_s=0.5, nack_max_delay_s=2.0, ack_timeout_s=timeout)
    consumers: list[Consumer] = []
    held: dict[int, list[tuple[int, int]]] = defaultdict(list)  # received, not acked/nacked

    async def join(priority: int, permits: int) -> None:
        if kind is SubscriptionType.EXCLUSIVE and consumers:
            return
        c = await subs.subscribe(TOPIC, "s", kind, priority=priority, redelivery=policy,
                                 initial_position=InitialPosition.EARLIEST)
        c.flow(permits)
        consumers.append(c)

    def pick(i: int) -> Consumer | None:
        return consumers[i % len(consumers)] if consumers else None

    def take_all(c: Consumer) -> None:
        while True:
            try:
                d = c.receive_nowait()
            except trio.WouldBlock:
                return
            model.received(c, d.partition, d.offset)
            held[c.consumer_id].append((d.partition, d.offset))

    await join(0, 3)

    for item in ops:
        name = item[0]
        if name == "publish":
            partition, keys = item[1], item[2]
            assert isinstance(partition, int) and isinstance(keys, list)
            msgs = [Message(KEYS[k], b"v") for k in keys]
            result = await core.append_messages(TOPIC, partition, msgs)
            for i, m in enumerate(msgs):
                model.published[(partition, result.base_offset + i)] = m.key
        elif name == "join":
            assert isinstance(item[1], int) and isinstance(item[2], int)
            await join(item[1], item[2])
        elif name == "leave":
            assert isinstance(item[1], int)
            c = pick(item[1])
            if c is not None:
                consumers.remove(c)
                model.left(c)
                c.close()
        elif name == "flow":
            assert isinstance(item[1], int) and isinstance(item[2], int)
            c = pick(item[1])
            if c is not None:
                c.flow(item[2])
        elif name in ("ack", "nack"):
            assert isinstance(item[1], int) and isinstance(item[2], int)
            c = pick(item[1])
            mine = held[c.consumer_id] if c is not None else []
            if c is not None and mine:
                got = mine.pop(item[2] % len(mine))
                model.released(*got)
                if name == "ack":
                    c.ack(*got)
                    model.acked.add(got)
                else:
                    c.nack(*got)
                c.flow(1)
        elif name == "cumulative":
            assert isinstance(item[1], int) and isinstance(item[2], int)
            c = pick(item[1])
            mine = held[c.consumer_id] if c is not None else []
            if c is not None and mine and kind.allows_cumulative_ack:
                partition, offset = mine[item[2] % len(mine)]
                c.ack_cumulative(partition, offset)
                done = {(p, o) for (p, o) in model.published if p == partition and o <= offset}
                model.acked |= done
                for pos in done:
                    model.released(*pos)
                for lst in held.values():
                    lst[:] = [pos for pos in lst if pos not in done]
                c.flow(1)
        else:
            assert isinstance(item[1], float)
            await trio.sleep(item[1])
        await settle()
        for c in consumers:
            take_all(c)
    # final drain: a fresh consumer sees exactly the unacknowledged messages
    for c in consumers:
        model.left(c)
        c.close()
    await trio.sleep(10)  # every nack backoff has passed
    fresh = await subs.subscribe(TOPIC, "s", kind, initial_position=InitialPosition.EARLIEST)
    fresh.flow(1000)
    drained: set[tuple[int, int]] = set()
    while True:
        with trio.move_on_after(5):
            d = await fresh.receive()
            assert (d.partition, d.offset) not in model.acked
            drained.add((d.partition, d.offset))
            continue
        break
    assert drained == set(model.published) - model.acked
    info = (await subs.list_subscriptions(TOPIC))[0]
    assert info.backlog == len(drained)


def run(kind: SubscriptionType, ops: list[tuple[object, ...]]) -> None:
    async def main() -> None:
        settings_ = CoreSettings(retention_check_interval_ms=0)
        async with open_storage("memory://") as storage, open_core(storage, settings_) as core:
            await core.create_topic(TOPIC, 2)
            async with open_subscription_manager(core, read_ahead=4) as subs:
                await scenario(core, subs, kind, ops)

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))


SETTINGS = settings(max_examples=40, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow])


@SETTINGS
@given(steps)
def test_shared_properties(ops: list[tuple[object, ...]]) -> None:
    run(SubscriptionType.SHARED, ops)


@SETTINGS
@given(steps)
def test_key_shared_properties(ops: list[tuple[object, ...]]) -> None:
    run(SubscriptionType.KEY_SHARED, ops)


@SETTINGS
@given(steps)
def test_failover_properties(ops: list[tuple[object, ...]]) -> None:
    run(SubscriptionType.FAILOVER, ops)


@SETTINGS
@given(steps)
def test_exclusive_properties(ops: list[tuple[object, ...]]) -> None:
    run(SubscriptionType.EXCLUSIVE, ops)
