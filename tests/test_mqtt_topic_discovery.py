"""``+``/``#`` filters and core topics created later (in process; real core, memory streams).

A topic created after a wildcard SUBSCRIBE -- through the core, as Kafka and AMQP do -- is
found through the core's "topic created" notification (the fallback rescan is set to an hour
here, so it never runs) and read from its beginning; a persistent session that was offline
while the topic was created gets its messages when it resumes.  The real-client versions are
in ``test_mqtt_topic_discovery_e2e.py``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import trio
import trio.testing
from test_mqtt_session_harness import Gateway, WireClient, open_gateway

from core.api import open_core
from core.config import CoreSettings
from core.errors import UnknownTopic
from core.names import NamespaceName
from core.records import Message
from handlers.mqtt import (
    MQTT_5,
    MQTT_311,
    Connect,
    Disconnect,
    Properties,
    PubAck,
    Publish,
    SubAck,
    Subscribe,
    Subscription,
)
from handlers.mqtt.topic_directory import TopicDirectory
from storage import open_storage

HOUR = 3600.0
WITHIN_S = 3.0  # far below the fallback rescan


@pytest.fixture
async def gw() -> AsyncIterator[Gateway]:
    async with open_gateway({"allow_anonymous": True, "topic_scan_interval": HOUR}) as g:
        yield g


async def subscribe(client: WireClient, *filters: str, qos: int = 1, pid: int = 1) -> None:
    await client.send(Subscribe(pid, tuple(Subscription(f, qos) for f in filters)))
    ack = await client.recv()
    assert isinstance(ack, SubAck) and all(c < 0x80 for c in ack.reason_codes), ack


async def take(client: WireClient, count: int) -> list[tuple[str, bytes]]:
    """``count`` PUBLISH packets (each QoS 1 one acknowledged), as (topic, payload)."""
    out: list[tuple[str, bytes]] = []
    for _ in range(count):
        packet = await client.recv(WITHIN_S)
        assert isinstance(packet, Publish), packet
        if packet.qos:
            assert packet.packet_id is not None
            await client.send(PubAck(packet.packet_id))
        out.append((packet.topic, bytes(packet.payload)))
    return out


async def write(gw: Gateway, topic: str, *values: bytes, key: bytes = b"x") -> None:
    """Append like a Kafka producer: the topic is created on first use, then written at once."""
    await gw.core.topic_metadata(topic, create_if_missing=True)
    await gw.core.append_messages(topic, 0, [Message(key, v) for v in values])


async def until_offline(gw: Gateway, client_id: str) -> None:
    assert gw.handler.context is not None
    live = gw.handler.context.sessions.live(client_id)
    if live is not None:
        with trio.fail_after(WITHIN_S):
            await live.wait_finished()


PERSISTENT = Properties(session_expiry_interval=300)


# ---------------------------------------------------------------- the core notification


async def test_core_announces_topic_creation_and_deletion() -> None:
    async with open_storage("memory://") as storage, open_core(
            storage, CoreSettings(retention_check_interval_ms=0)) as core:
        before = core.topic_generation
        await core.create_topic("made", 1)
        assert core.topic_generation > before
        # a change made before the wait started is not missed
        with trio.fail_after(1):
            assert await core.wait_topics_changed(before) == core.topic_generation
        created = core.topic_generation
        await core.topic_metadata("auto", create_if_missing=True)  # Kafka's auto-creation
        assert core.topic_generation > created
        await core.topic_metadata("auto")  # opening an existing topic is no change
        opened = core.topic_generation
        assert opened == created + 1
        async with trio.open_nursery() as nursery:
            got: list[int] = []

            async def waiter() -> None:
                got.append(await core.wait_topics_changed(opened))

            nursery.start_soon(waiter)
            await trio.testing.wait_all_tasks_blocked()
            assert not got
            await core.delete_topic("made")
        assert got == [opened + 1]


async def test_directory_follows_the_core_without_rescanning() -> None:
    async with open_storage("memory://") as storage, open_core(
            storage, CoreSettings(retention_check_interval_ms=0)) as core, \
            trio.open_nursery() as nursery:
        directory = TopicDirectory(core, NamespaceName("public", "default"), scan_interval=HOUR)
        nursery.start_soon(directory.run)
        await core.create_topic("old", 1)
        await directory.refresh()
        assert directory.topics == {"old"}
        seen = directory.generation
        with trio.fail_after(WITHIN_S):
            async with trio.open_nursery() as waiting:
                waiting.start_soon(directory.wait_changed, seen)
                await trio.testing.wait_all_tasks_blocked()
                await core.create_topic("new", 1)
        assert directory.topics == {"old", "new"} and directory.generation > seen
        # a deletion is followed too (no wake-up: the consumers were closed by the core)
        async with trio.open_nursery() as waiting:
            waiting.start_soon(directory.wait_changed, directory.generation)
            await trio.testing.wait_all_tasks_blocked()
            await core.delete_topic("old")
            await trio.testing.wait_all_tasks_blocked()
            assert directory.topics == {"new"}
            waiting.cancel_scope.cancel()
        nursery.cancel_scope.cancel()


# ---------------------------------------------------------------- (a) live subscriptions


@pytest.mark.parametrize("topic_filter", ["+/x", "#"])
async def test_topic_created_elsewhere_is_read_from_its_beginning(
    gw: Gateway, topic_filter: str
) -> None:
    sub, _ = await gw.connect(Connect("sub", MQTT_5))
    await subscribe(sub, topic_filter)
    # created and written at once, in one go: nothing waits for the directory
    await write(gw, "brand-new", b"1", b"2", b"3")
    assert await take(sub, 3) == [("brand-new/x", b"1"), ("brand-new/x", b"2"),
                                  ("brand-new/x", b"3")]
    await write(gw, "brand-new", b"4")
    assert await take(sub, 1) == [("brand-new/x", b"4")]
    await sub.nothing(0.2)


async def test_subscribe_racing_the_discovery_does_not_skip_messages(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A SUBSCRIBE that lists a topic before the directory announced it: the topic was created
    after the earlier ``+/x`` SUBSCRIBE, so it is still read from its beginning."""

    async def deaf(self: TopicDirectory) -> None:
        await trio.sleep_forever()

    monkeypatch.setattr(TopicDirectory, "_follow_core", deaf)  # the notification is late
    async with open_gateway({"allow_anonymous": True, "topic_scan_interval": HOUR}) as gw:
        await gw.core.create_topic("existing", 1)
        await gw.core.append_messages("existing", 0, [Message(b"y", b"history")])
        sub, _ = await gw.connect(Connect("sub", MQTT_5))
        await subscribe(sub, "+/x")
        await write(gw, "late", b"early")
        await subscribe(sub, "+/y", pid=2)  # lists the topics now
        assert await take(sub, 1) == [("late/x", b"early")]
        # topics that existed before a filter's SUBSCRIBE are not replayed to it
        await sub.nothing(0.2)
        await gw.core.append_messages("existing", 0, [Message(b"y", b"now")])
        assert await take(sub, 1) == [("existing/y", b"now")]


async def test_shared_wildcard_subscription_reads_new_topics_from_the_beginning(
    gw: Gateway,
) -> None:
    sub, _ = await gw.connect(Connect("member", MQTT_5))
    await subscribe(sub, "$share/g/+/x")
    await write(gw, "shared-new", b"a", b"b")
    assert await take(sub, 2) == [("shared-new/x", b"a"), ("shared-new/x", b"b")]


async def test_deleted_topic_is_not_created_again_by_a_wildcard_subscriber(
    gw: Gateway,
) -> None:
    sub, _ = await gw.connect(Connect("sub", MQTT_5))
    await subscribe(sub, "#")
    await write(gw, "doomed", b"1")
    assert await take(sub, 1) == [("doomed/x", b"1")]
    await gw.core.delete_topic("doomed")
    await subscribe(sub, "other/#", pid=2)  # a sync while the directory may still list it
    await sub.nothing(0.3)
    with pytest.raises(UnknownTopic):
        await gw.core.topic_metadata("doomed")
    # created again: the new topic is read from its beginning
    await write(gw, "doomed", b"again")
    assert await take(sub, 1) == [("doomed/x", b"again")]


# ---------------------------------------------------------------- (b) offline sessions


@pytest.mark.parametrize("level", [MQTT_5, MQTT_311], ids=["5", "311"])
async def test_offline_persistent_session_gets_a_topic_created_meanwhile(
    gw: Gateway, level: int
) -> None:
    props = PERSISTENT if level == MQTT_5 else Properties()
    await gw.core.create_topic("before", 1)
    sub, _ = await gw.connect(Connect("away", level, clean_start=False, properties=props))
    await subscribe(sub, "#")
    await sub.send(Disconnect())
    await sub.expect_closed()
    await until_offline(gw, "away")
    await write(gw, "made-offline", b"1", b"2")
    await gw.core.append_messages("before", 0, [Message(b"k", b"meanwhile")])
    sub, ack = await gw.connect(Connect("away", level, clean_start=False, properties=props))
    assert ack.session_present
    got = await take(sub, 3)
    assert sorted(got) == [("before/k", b"meanwhile"), ("made-offline/x", b"1"),
                           ("made-offline/x", b"2")]
    assert [g for g in got if g[0] == "made-offline/x"] == [("made-offline/x", b"1"),
                                                          ("made-offline/x", b"2")]
    await sub.nothing(0.2)


async def test_resumed_session_does_not_replay_topics_older_than_its_subscription(
    gw: Gateway,
) -> None:
    await write(gw, "old", b"history")
    sub, _ = await gw.connect(Connect("away", MQTT_5, clean_start=False, properties=PERSISTENT))
    await subscribe(sub, "+/x")
    await sub.aclose()
    await until_offline(gw, "away")
    sub, ack = await gw.connect(Connect("away", MQTT_5, clean_start=False, properties=PERSISTENT))
    assert ack.session_present
    await sub.nothing(0.3)
    await write(gw, "old", b"fresh")
    assert await take(sub, 1) == [("old/x", b"fresh")]


async def test_new_session_with_the_same_id_does_not_read_old_topics(gw: Gateway) -> None:
    sub, _ = await gw.connect(Connect("away", MQTT_5, clean_start=False, properties=PERSISTENT))
    await subscribe(sub, "#")
    await sub.aclose()
    await until_offline(gw, "away")
    await write(gw, "while-away", b"1")
    sub, ack = await gw.connect(Connect("away", MQTT_5, clean_start=True))
    assert not ack.session_present
    await subscribe(sub, "#")
    await sub.nothing(0.3)
