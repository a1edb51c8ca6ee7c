"""In-process MQTT delivery: SUBSCRIBE/UNSUBSCRIBE, QoS 0/1/2 out, overlap, retained, sessions."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing
from test_mqtt_session_harness import Gateway, WireClient, open_gateway

from core.compaction import compact_now
from core.handler import ConnectionInfo
from core.records import Message
from handlers.mqtt import (
    MQTT_5,
    MQTT_311,
    Connect,
    Disconnect,
    Properties,
    PubAck,
    PubComp,
    Publish,
    PubRec,
    PubRel,
    ReasonCode,
    SubAck,
    Subscribe,
    Subscription,
    UnsubAck,
    Unsubscribe,
    Will,
)
from handlers.mqtt.retained import RETAINED_TOPIC
from handlers.mqtt.session import SEND_QUEUE, MqttSession


@pytest.fixture
async def gw() -> AsyncIterator[Gateway]:
    async with open_gateway({"allow_anonymous": True}) as g:
        yield g


def connect(client_id: str, level: int = MQTT_5, **kw: Any) -> Connect:
    return Connect(client_id, level, **kw)


async def subscribe(client: WireClient, *subs: Subscription, pid: int = 1,
                    sub_id: int | None = None) -> SubAck:
    props = Properties() if sub_id is None else Properties(subscription_identifiers=(sub_id,))
    await client.send(Subscribe(pid, subs, props))
    ack = await client.recv()
    assert isinstance(ack, SubAck), ack
    return ack


async def publish(client: WireClient, topic: str, payload: bytes, qos: int = 0, *,
                  pid: int = 1, retain: bool = False, props: Properties | None = None) -> None:
    await client.send(Publish(topic, payload, qos, retain, packet_id=pid if qos else None,
                              properties=props or Properties()))
    if qos == 1:
        assert await client.recv() == PubAck(pid)
    elif qos == 2:
        assert await client.recv() == PubRec(pid)
        await client.send(PubRel(pid))
        assert await client.recv() == PubComp(pid)


async def received(client: WireClient) -> Publish:
    packet = await client.recv()
    assert isinstance(packet, Publish), packet
    return packet


# ---------------------------------------------------------------- subscribe and deliver


async def test_qos0_1_2_delivery(gw: Gateway) -> None:
    sub, _ = await gw.connect(connect("sub"))
    ack = await subscribe(sub, Subscription("o/#", 2))
    assert ack.reason_codes == (2,)
    pub, _ = await gw.connect(connect("pub"))
    await publish(pub, "o/a", b"zero", 0)
    await publish(pub, "o/b", b"one", 1)
    await publish(pub, "o/c", b"two", 2)
    got = [await received(sub) for _ in range(3)]
    assert [(p.topic, bytes(p.payload), p.qos) for p in got] == [
        ("o/a", b"zero", 0), ("o/b", b"one", 1), ("o/c", b"two", 2)]
    assert got[0].packet_id is None
    assert got[1].packet_id is not None and got[2].packet_id is not None
    await sub.send(PubAck(got[1].packet_id))
    await sub.send(PubRec(got[2].packet_id))
    assert await sub.recv() == PubRel(got[2].packet_id)
    await sub.send(PubComp(got[2].packet_id))
    await sub.nothing(0.2)


async def test_granted_qos_caps_delivery(gw: Gateway) -> None:
    sub, _ = await gw.connect(connect("sub"))
    await subscribe(sub, Subscription("o/#", 0))
    pub, _ = await gw.connect(connect("pub"))
    await publish(pub, "o/a", b"x", 2)
    got = await received(sub)
    assert got.qos == 0 and got.packet_id is None


async def test_overlapping_subscriptions_deliver_once_at_highest_qos(gw: Gateway) -> None:
    sub, _ = await gw.connect(connect("sub"))
    await subscribe(sub, Subscription("a/#", 0), sub_id=1)
    await subscribe(sub, Subscription("a/+/c", 1), pid=2, sub_id=2)
    pub, _ = await gw.connect(connect("pub"))
    await publish(pub, "a/b/c", b"x", 2)
    got = await received(sub)
    assert got.qos == 1
    assert sorted(got.properties.subscription_identifiers) == [1, 2]
    assert got.packet_id is not None
    await sub.send(PubAck(got.packet_id))
    await sub.nothing(0.2)


async def test_properties_round_trip(gw: Gateway) -> None:
    sub, _ = await gw.connect(connect("sub"))
    await subscribe(sub, Subscription("p/#", 1))
    pub, _ = await gw.connect(connect("pub"))
    props = Properties(payload_format_indicator=1, message_expiry_interval=300,
                       content_type="text/plain", response_topic="p/reply",
                       correlation_data=b"\x00\x01", user_properties=(("k", "v"), ("k", "w")))
    await publish(pub, "p/x", b"hi", 1, props=props)
    got = await received(sub)
    p = got.properties
    assert p.payload_format_indicator == 1 and p.content_type == "text/plain"
    assert p.response_topic == "p/reply" and p.correlation_data == b"\x00\x01"
    assert p.user_properties == (("k", "v"), ("k", "w"))
    assert p.message_expiry_interval is not None and 299 <= p.message_expiry_interval <= 300


async def test_wildcard_first_level_spans_every_topic_including_new_ones(gw: Gateway) -> None:
    await gw.core.create_topic("before", 1)
    sub, _ = await gw.connect(connect("sub"))
    await subscribe(sub, Subscription("+/x", 1))
    pub, _ = await gw.connect(connect("pub"))
    await publish(pub, "before/x", b"1", 1)
    await publish(pub, "brand-new/x", b"2", 1)  # created by this publish
    await publish(pub, "brand-new/y", b"no match", 1)
    topics = set()
    for _ in range(2):
        got = await received(sub)
        topics.add((got.topic, bytes(got.payload)))
        assert got.packet_id is not None
        await sub.send(PubAck(got.packet_id))
    assert topics == {("before/x", b"1"), ("brand-new/x", b"2")}
    # a topic created through another protocol is found by the rescan
    await gw.core.create_topic("kafka-made", 1)
    await gw.core.append_messages("kafka-made", 0, [Message(b"x", b"3")])
    got = await received(sub)
    assert (got.topic, bytes(got.payload), got.qos) == ("kafka-made/x", b"3", 1)


async def test_message_from_another_protocol_is_delivered_at_qos1(gw: Gateway) -> None:
    await gw.core.create_topic("orders", 1)
    sub, _ = await gw.connect(connect("sub"))
    await subscribe(sub, Subscription("orders/#", 2))
    await gw.core.append_messages("orders", 0, [Message(b"eu/1", b"k", [("h", b"v")])])
    got = await received(sub)
    assert (got.topic, got.qos, got.properties.user_properties) == (
        "orders/eu/1", 1, (("h", "v"),))


async def test_no_local(gw: Gateway) -> None:
    client, _ = await gw.connect(connect("me"))
    await subscribe(client, Subscription("n/#", 1, no_local=True))
    await publish(client, "n/a", b"mine", 1)
    other, _ = await gw.connect(connect("other"))
    await publish(other, "n/a", b"theirs", 1)
    got = await received(client)
    assert bytes(got.payload) == b"theirs"


async def test_unsubscribe(gw: Gateway) -> None:
    sub, _ = await gw.connect(connect("sub"))
    await subscribe(sub, Subscription("u/#", 0))
    await sub.send(Unsubscribe(5, ("u/#", "never")))
    assert await sub.recv() == UnsubAck(5, (0, ReasonCode.NO_SUBSCRIPTION_EXISTED))
    pub, _ = await gw.connect(connect("pub"))
    await publish(pub, "u/a", b"x", 1)
    await sub.nothing(0.3)


async def test_311_subscribe_and_unsubscribe(gw: Gateway) -> None:
    sub, _ = await gw.connect(connect("sub", MQTT_311))
    ack = await subscribe(sub, Subscription("v/#", 1))
    assert ack.reason_codes == (1,)
    pub, _ = await gw.connect(connect("pub", MQTT_311))
    await publish(pub, "v/a", b"x", 1)
    got = await received(sub)
    assert (got.topic, got.qos) == ("v/a", 1)
    await sub.send(Unsubscribe(2, ("v/#",)))
    assert await sub.recv() == UnsubAck(2)


async def test_outbound_receive_maximum(gw: Gateway) -> None:
    sub, _ = await gw.connect(connect("sub", properties=Properties(receive_maximum=2)))
    await subscribe(sub, Subscription("rm/#", 1))
    pub, _ = await gw.connect(connect("pub"))
    for i in range(5):
        await publish(pub, "rm/a", b"%d" % i, 1, pid=i + 1)
    first = [await received(sub) for _ in range(2)]
    await sub.nothing(0.3)
    assert first[0].packet_id is not None
    await sub.send(PubAck(first[0].packet_id))
    third = await received(sub)
    assert bytes(third.payload) == b"2"
    await sub.nothing(0.3)


# ---------------------------------------------------------------- retained


async def test_retained_messages(gw: Gateway) -> None:
    pub, _ = await gw.connect(connect("pub"))
    await publish(pub, "r/a", b"A", 1, retain=True)
    await publish(pub, "r/b", b"B", 1, pid=2, retain=True)
    await publish(pub, "r/b", b"", 1, pid=3, retain=True)  # deletes
    sub, _ = await gw.connect(connect("sub"))
    await subscribe(sub, Subscription("r/#", 1))
    got = await received(sub)
    assert (got.topic, bytes(got.payload), got.retain, got.qos) == ("r/a", b"A", True, 1)
    assert got.packet_id is not None
    await sub.send(PubAck(got.packet_id))
    await sub.nothing(0.2)
    # retain handling 1: only for a new subscription; 2: never
    await subscribe(sub, Subscription("r/#", 1, retain_handling=1), pid=2)
    await subscribe(sub, Subscription("r/+", 1, retain_handling=2), pid=3)
    await sub.nothing(0.2)
    # a live delivery has retain 0 unless retain as published
    await publish(pub, "r/a", b"A2", 1, pid=4, retain=True)
    got = await received(sub)
    assert bytes(got.payload) == b"A2" and not got.retain


async def test_retain_as_published(gw: Gateway) -> None:
    sub, _ = await gw.connect(connect("sub"))
    await subscribe(sub, Subscription("rap/#", 0, retain_as_published=True))
    pub, _ = await gw.connect(connect("pub"))
    await publish(pub, "rap/a", b"x", 0, retain=True)
    assert (await received(sub)).retain


# ---------------------------------------------------------------- sessions


async def test_persistent_session_gets_what_was_published_while_away(gw: Gateway) -> None:
    props = Properties(session_expiry_interval=300)
    sub, _ = await gw.connect(connect("p", properties=props, clean_start=True))
    await subscribe(sub, Subscription("ps/#", 1))
    await sub.send(Disconnect())
    await sub.expect_closed()
    pub, _ = await gw.connect(connect("pub"))
    for i in range(3):
        await publish(pub, "ps/a", b"%d" % i, 1, pid=i + 1)
    sub, ack = await gw.connect(connect("p", properties=props, clean_start=False))
    assert ack.session_present
    got = [await received(sub) for _ in range(3)]
    assert [bytes(p.payload) for p in got] == [b"0", b"1", b"2"]


async def test_unacked_messages_are_redelivered_after_reconnect(gw: Gateway) -> None:
    props = Properties(session_expiry_interval=300)
    sub, _ = await gw.connect(connect("p", properties=props))
    await subscribe(sub, Subscription("re/#", 1))
    pub, _ = await gw.connect(connect("pub"))
    await publish(pub, "re/a", b"x", 1)
    first = await received(sub)
    await sub.aclose()  # no PUBACK
    sub, _ = await gw.connect(connect("p", properties=props, clean_start=False))
    again = await received(sub)
    assert bytes(again.payload) == b"x" and again.dup and first.qos == again.qos == 1


async def test_clean_session_forgets(gw: Gateway) -> None:
    sub, _ = await gw.connect(connect("c"))
    await subscribe(sub, Subscription("cs/#", 1))
    await sub.send(Disconnect())
    await sub.expect_closed()
    pub, _ = await gw.connect(connect("pub"))
    await publish(pub, "cs/a", b"x", 1)
    sub, ack = await gw.connect(connect("c", clean_start=False))
    assert not ack.session_present
    await sub.nothing(0.3)


async def test_311_persistent_session(gw: Gateway) -> None:
    sub, _ = await gw.connect(connect("p3", MQTT_311, clean_start=False))
    await subscribe(sub, Subscription("p3/#", 1))
    await sub.aclose()
    pub, _ = await gw.connect(connect("pub"))
    await publish(pub, "p3/a", b"x", 1)
    sub, ack = await gw.connect(connect("p3", MQTT_311, clean_start=False))
    assert ack.session_present
    assert bytes((await received(sub)).payload) == b"x"


async def test_session_expires(autojump_clock: trio.testing.MockClock) -> None:
    async with open_gateway({"allow_anonymous": True}) as gw:
        props = Properties(session_expiry_interval=30)
        sub, _ = await gw.connect(connect("e", properties=props))
        await subscribe(sub, Subscription("ex/#", 1))
        await sub.aclose()
        await trio.sleep(31)
        _, ack = await gw.connect(connect("e", properties=props, clean_start=False))
        assert not ack.session_present


async def test_shared_subscription_splits_messages(gw: Gateway) -> None:
    a, _ = await gw.connect(connect("a"))
    b, _ = await gw.connect(connect("b"))
    await subscribe(a, Subscription("$share/g/sh/#", 0))
    await subscribe(b, Subscription("$share/g/sh/#", 0))
    pub, _ = await gw.connect(connect("pub"))
    for i in range(6):
        await publish(pub, "sh/x", b"%d" % i, 0)
    got: list[bytes] = []
    for client in (a, b):
        with trio.move_on_after(0.5):
            while True:
                got.append(bytes((await received(client)).payload))
    assert sorted(got) == [b"%d" % i for i in range(6)]


# ---------------------------------------------------------------- flow control


async def test_slow_subscriber_qos0_is_dropped_and_counted() -> None:
    async with open_gateway({"allow_anonymous": True}) as gw:
        client_side, server_side = trio.testing.lockstep_stream_pair()
        info = ConnectionInfo("mqtt", "127.0.0.1", 1, "127.0.0.1", 1883)
        gw.nursery.start_soon(gw.handler.serve, server_side, info)
        slow = WireClient(client_side, MQTT_5)
        await slow.send(connect("slow"))
        await slow.recv()
        await subscribe(slow, Subscription("f/#", 0))
        pub, _ = await gw.connect(connect("pub"))
        for i in range(600):
            await publish(pub, "f/x", b"%d" % i, 0)
        await publish(pub, "f/x", b"sync", 1)  # the last QoS 0 are appended before this
        await trio.sleep(0.5)
        assert gw.handler.context is not None
        session = gw.handler.context.sessions.live("slow")
        assert isinstance(session, MqttSession)
        deliverer = session._deliverer
        assert deliverer is not None
        assert deliverer.dropped > 0
        # every QoS 0 message was either queued or dropped (the QoS 1 one may wait)
        assert 600 <= deliverer.dropped + deliverer.sent <= 601
        assert session._out.queued <= SEND_QUEUE


async def test_wildcard_subscription_starts_at_the_end_of_existing_topics(gw: Gateway) -> None:
    await gw.core.create_topic("old", 1)
    await gw.core.append_messages("old", 0, [Message(b"x", b"history")])
    sub, _ = await gw.connect(connect("sub"))
    await subscribe(sub, Subscription("#", 1))
    await sub.nothing(1.0)  # longer than a rescan
    await gw.core.append_messages("old", 0, [Message(b"x", b"new")])
    got = await received(sub)
    assert (got.topic, bytes(got.payload)) == ("old/x", b"new")


async def test_expired_messages_are_not_delivered(gw: Gateway) -> None:
    assert gw.handler.context is not None
    ctx = gw.handler.context
    now = [time.time_ns() // 1_000_000]  # the core checks expiry on its own clock too
    ctx.wall_ms = lambda: now[0]
    props = Properties(session_expiry_interval=300)
    sub, _ = await gw.connect(connect("x", properties=props))
    await subscribe(sub, Subscription("exp/#", 1))
    await sub.send(Disconnect())
    await sub.expect_closed()
    pub, _ = await gw.connect(connect("pub"))
    await publish(pub, "exp/short", b"s", 1, props=Properties(message_expiry_interval=10))
    await publish(pub, "exp/long", b"l", 1, pid=2, props=Properties(message_expiry_interval=100))
    await publish(pub, "exp/r", b"r", 1, pid=3, retain=True,
                  props=Properties(message_expiry_interval=10))
    now[0] += 30_000
    sub, _ = await gw.connect(connect("x", properties=props, clean_start=False))
    got = await received(sub)
    assert bytes(got.payload) == b"l"
    assert got.properties.message_expiry_interval == 70
    await subscribe(sub, Subscription("exp/r", 1), pid=2)  # the retained one expired too
    await sub.nothing(0.3)


async def test_qos2_delivery_holds_its_receive_maximum_slot_until_pubcomp(gw: Gateway) -> None:
    sub, _ = await gw.connect(connect("sub", properties=Properties(receive_maximum=1)))
    await subscribe(sub, Subscription("q2/#", 2))
    pub, _ = await gw.connect(connect("pub"))
    await publish(pub, "q2/a", b"1", 2)
    await publish(pub, "q2/a", b"2", 2, pid=2)
    first = await received(sub)
    assert first.packet_id is not None
    await sub.send(PubRec(first.packet_id))
    assert await sub.recv() == PubRel(first.packet_id)
    await sub.nothing(0.3)  # PUBCOMP still owed: no second message yet
    await sub.send(PubComp(first.packet_id))
    assert bytes((await received(sub)).payload) == b"2"


async def test_pubrel_is_sent_again_after_a_reconnect(gw: Gateway) -> None:
    props = Properties(session_expiry_interval=60)
    sub, _ = await gw.connect(connect("rel", properties=props))
    await subscribe(sub, Subscription("rel/#", 2))
    pub, _ = await gw.connect(connect("pub"))
    await publish(pub, "rel/a", b"x", 2)
    got = await received(sub)
    assert got.packet_id is not None
    await sub.send(PubRec(got.packet_id))
    assert await sub.recv() == PubRel(got.packet_id)
    await sub.aclose()
    sub, _ = await gw.connect(connect("rel", properties=props, clean_start=False))
    assert await sub.recv() == PubRel(got.packet_id)
    await sub.send(PubComp(got.packet_id))
    await sub.nothing(0.3)  # the message itself is not delivered again


async def test_subscribe_to_a_missing_topic_without_auto_create_fails_that_filter() -> None:
    async with open_gateway({"allow_anonymous": True}, auto_create_topics=False) as gw:
        await gw.core.create_topic("exists", 1)
        sub, _ = await gw.connect(connect("sub"))
        ack = await subscribe(sub, Subscription("missing/#", 1), Subscription("exists/#", 1))
        assert ack.reason_codes == (ReasonCode.UNSPECIFIED_ERROR, 1)


async def test_shutdown_does_not_publish_wills(gw: Gateway) -> None:
    watcher, _ = await gw.connect(connect("watcher"))
    await subscribe(watcher, Subscription("sw/#", 1))
    client, _ = await gw.connect(connect("c", will=Will("sw/c", b"bye")))
    gw.stopping.set()
    assert await client.expect_closed() == [Disconnect(ReasonCode.SERVER_SHUTTING_DOWN)]
    await trio.sleep(0.3)
    assert not await gw.messages("sw")


@pytest.mark.parametrize(("store", "compact"),
                         [("log", False), ("log", True), ("metadata", False)])
async def test_retained_messages_survive_a_restart(
    tmp_path: Path, store: str, compact: bool
) -> None:
    settings = {"allow_anonymous": True, "retained_store": store}
    url = f"file://{tmp_path}"
    async with open_gateway(settings, storage_url=url) as gw:
        pub, _ = await gw.connect(connect("pub"))
        await publish(pub, "rs/a", b"A", 1, retain=True)
        await publish(pub, "rs/b", b"B", 1, pid=2, retain=True)
        await publish(pub, "rs/b", b"", 1, pid=3, retain=True)
        await publish(pub, "rs/a", b"A2", 1, pid=4, retain=True)
        if compact:
            await compact_now(gw.core, f"public/default/{RETAINED_TOPIC}")
    async with open_gateway(settings, storage_url=url) as gw:
        sub, _ = await gw.connect(connect("sub"))
        await subscribe(sub, Subscription("rs/#", 0))
        got = await received(sub)
        assert (got.topic, bytes(got.payload), got.retain) == ("rs/a", b"A2", True)
        await sub.nothing(0.2)


async def test_the_retained_topic_is_reserved(gw: Gateway) -> None:
    pub, _ = await gw.connect(connect("pub"))
    await pub.send(Publish(f"{RETAINED_TOPIC}/x", b"no", 1, packet_id=1))
    assert await pub.recv() == PubAck(1, ReasonCode.TOPIC_NAME_INVALID)
    sub, _ = await gw.connect(connect("sub"))
    await subscribe(sub, Subscription("#", 0))
    await publish(pub, "vis/x", b"r", 1, pid=2, retain=True)
    got = await received(sub)  # the retained copy in the compacted topic is not delivered
    assert got.topic == "vis/x"
    await sub.nothing(1.0)


async def test_shared_subscription_redelivers_what_a_leaving_member_did_not_ack(
    gw: Gateway,
) -> None:
    a, _ = await gw.connect(connect("a"))
    await subscribe(a, Subscription("$share/g/sr/#", 1))
    pub, _ = await gw.connect(connect("pub"))
    await publish(pub, "sr/x", b"m", 1)
    got = await received(a)
    assert bytes(got.payload) == b"m"
    b, _ = await gw.connect(connect("b"))
    await subscribe(b, Subscription("$share/g/sr/#", 1))
    await a.aclose()  # never acknowledged
    again = await received(b)
    assert bytes(again.payload) == b"m" and again.dup


async def test_will_is_sent_when_the_session_ends_before_the_delay(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with open_gateway({"allow_anonymous": True}) as gw:
        will = Will("wd/x", b"w", properties=Properties(will_delay_interval=600))
        client, _ = await gw.connect(connect(
            "wd", will=will, properties=Properties(session_expiry_interval=20)))
        await client.aclose()
        await trio.sleep(19)
        assert not await _exists(gw, "wd")  # created by the will's publish
        await trio.sleep(2)
        assert [m.value for m in await gw.messages("wd")] == [b"w"]


async def _exists(gw: Gateway, topic: str) -> bool:
    return any(t.name.local == topic for t in await gw.core.list_topics())


async def test_a_deleted_and_recreated_topic_is_read_again(gw: Gateway) -> None:
    sub, _ = await gw.connect(connect("sub"))
    await subscribe(sub, Subscription("#", 0))
    pub, _ = await gw.connect(connect("pub"))
    await publish(pub, "del/x", b"1", 1)
    assert bytes((await received(sub)).payload) == b"1"
    await gw.core.delete_topic("del")
    await trio.sleep(0.2)
    await publish(pub, "del/x", b"2", 1, pid=2)  # creates the topic again
    assert bytes((await received(sub)).payload) == b"2"


async def test_many_retained_messages_respect_the_client_receive_maximum(gw: Gateway) -> None:
    pub, _ = await gw.connect(connect("pub"))
    for i in range(3):
        await publish(pub, f"rrm/{i}", b"%d" % i, 1, pid=i + 1, retain=True)
    sub, _ = await gw.connect(connect("sub", properties=Properties(receive_maximum=1)))
    await subscribe(sub, Subscription("rrm/#", 1))
    seen = []
    for _ in range(3):
        got = await received(sub)
        seen.append(bytes(got.payload))
        await sub.nothing(0.1)  # one at a time
        assert got.packet_id is not None
        await sub.send(PubAck(got.packet_id))
    assert sorted(seen) == [b"0", b"1", b"2"]


async def test_outbound_topic_aliases(gw: Gateway) -> None:
    sub, _ = await gw.connect(connect("sub", properties=Properties(topic_alias_maximum=2)))
    await subscribe(sub, Subscription("al/#", 0))
    pub, _ = await gw.connect(connect("pub"))
    for topic in ("al/a", "al/a", "al/b", "al/c", "al/b"):
        await publish(pub, topic, topic.encode(), 0)
    got = [await received(sub) for _ in range(5)]
    assert [(p.topic, p.properties.topic_alias, bytes(p.payload)) for p in got] == [
        ("al/a", 1, b"al/a"), ("", 1, b"al/a"), ("al/b", 2, b"al/b"), ("al/c", None, b"al/c"),
        ("", 2, b"al/b")]
