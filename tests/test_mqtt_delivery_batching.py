"""Bursts: packets that arrive in one read are handled together (one append, one ack_many,
one queued write) and must behave exactly like the same packets one by one."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from test_mqtt_session_harness import Gateway, WireClient, open_gateway

from handlers.mqtt import (
    MQTT_5,
    Connect,
    Disconnect,
    Packet,
    PingReq,
    PingResp,
    Properties,
    PubAck,
    PubComp,
    Publish,
    PubRec,
    PubRel,
    SubAck,
    Subscribe,
    Subscription,
)
from handlers.mqtt.encoder import encode


@pytest.fixture
async def gw() -> AsyncIterator[Gateway]:
    async with open_gateway({"allow_anonymous": True}) as g:
        yield g


async def burst(client: WireClient, packets: list[Packet]) -> None:
    """Send ``packets`` in one write (so the server reads them together)."""
    await client.send_raw(b"".join(encode(p, MQTT_5) for p in packets))


async def subscribe(client: WireClient, sub: Subscription) -> None:
    await client.send(Subscribe(1, (sub,)))
    assert isinstance(await client.recv(), SubAck)


async def received(client: WireClient, n: int) -> list[Publish]:
    got = [await client.recv() for _ in range(n)]
    assert all(isinstance(p, Publish) for p in got), got
    return [p for p in got if isinstance(p, Publish)]


async def test_qos1_burst_respects_receive_maximum_and_batched_pubacks_settle_it(
    gw: Gateway,
) -> None:
    props = Properties(session_expiry_interval=300, receive_maximum=8)
    sub, _ = await gw.connect(Connect("bs", MQTT_5, properties=props))
    await subscribe(sub, Subscription("bq/#", 1))
    pub, _ = await gw.connect(Connect("bp", MQTT_5))
    await burst(pub, [Publish("bq/a", b"%d" % i, 1, packet_id=i + 1) for i in range(30)])
    assert [await pub.recv() for _ in range(30)] == [PubAck(i + 1) for i in range(30)]
    payloads: list[bytes] = []
    for size in (8, 8, 8, 6):
        got = await received(sub, size)
        await sub.nothing(0.2)  # the Receive Maximum is full until the client acknowledges
        assert len({p.packet_id for p in got}) == size
        payloads += [bytes(p.payload) for p in got]
        await burst(sub, [PubAck(p.packet_id or 0) for p in got])
    assert payloads == [b"%d" % i for i in range(30)]
    await sub.send(Disconnect())
    await sub.expect_closed()
    sub, ack = await gw.connect(Connect("bs", MQTT_5, clean_start=False, properties=props))
    assert ack.session_present
    await sub.nothing(0.3)  # every PUBACK of the bursts reached the core


async def test_qos2_burst_both_ways(gw: Gateway) -> None:
    sub, _ = await gw.connect(Connect("bs2", MQTT_5))
    await subscribe(sub, Subscription("b2/#", 2))
    pub, _ = await gw.connect(Connect("bp2", MQTT_5))
    await burst(pub, [Publish("b2/a", b"%d" % i, 2, packet_id=i + 1) for i in range(10)])
    assert [await pub.recv() for _ in range(10)] == [PubRec(i + 1) for i in range(10)]
    await burst(pub, [PubRel(i + 1) for i in range(10)])
    assert [await pub.recv() for _ in range(10)] == [PubComp(i + 1) for i in range(10)]
    got = await received(sub, 10)
    assert [bytes(p.payload) for p in got] == [b"%d" % i for i in range(10)]
    pids = [p.packet_id or 0 for p in got]
    await burst(sub, [PubRec(pid) for pid in pids])
    assert [await sub.recv() for _ in range(10)] == [PubRel(pid) for pid in pids]
    await burst(sub, [PubComp(pid) for pid in pids])
    await sub.nothing(0.3)  # each message once


async def test_topic_aliases_assigned_within_one_burst(gw: Gateway) -> None:
    sub, _ = await gw.connect(Connect("ba", MQTT_5, properties=Properties(topic_alias_maximum=2)))
    await subscribe(sub, Subscription("ba/#", 0))
    pub, _ = await gw.connect(Connect("bpa", MQTT_5))
    topics = ("ba/a", "ba/a", "ba/b", "ba/c", "ba/b", "ba/a")
    await burst(pub, [Publish(t, t.encode(), 0) for t in topics])
    got = await received(sub, len(topics))
    assert [(p.topic, p.properties.topic_alias, bytes(p.payload)) for p in got] == [
        ("ba/a", 1, b"ba/a"), ("", 1, b"ba/a"), ("ba/b", 2, b"ba/b"), ("ba/c", None, b"ba/c"),
        ("", 2, b"ba/b"), ("", 1, b"ba/a")]


async def test_reads_during_an_append_keep_the_acks_in_order(gw: Gateway) -> None:
    """The reader reads on while the storer appends: PUBACKs still follow the PUBLISH order
    and a later packet (PINGREQ) is answered after them."""
    pub, _ = await gw.connect(Connect("order", MQTT_5))
    for i in range(40):  # separate writes: separate reads, merged by the storer or not
        await pub.send(Publish("ord/a", b"%d" % i, 1, packet_id=i + 1))
    await pub.send(PingReq())
    assert [await pub.recv() for _ in range(41)] == [PubAck(i + 1) for i in range(40)] + [
        PingResp()]
    assert [m.value for m in await gw.messages("ord")] == [b"%d" % i for i in range(40)]
