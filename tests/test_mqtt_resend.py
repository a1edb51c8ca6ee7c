"""MQTT-4.4.0-1: on a resumed session, unacknowledged PUBLISH packets are sent again with their
original packet identifiers (and DUP set)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from test_mqtt_session_harness import Gateway, WireClient, open_gateway

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
    SubAck,
    Subscribe,
    Subscription,
)
from handlers.mqtt.session_state import MAX_RESEND, SessionState

KEEP = Properties(session_expiry_interval=300)


@pytest.fixture
async def gw() -> AsyncIterator[Gateway]:
    async with open_gateway({"allow_anonymous": True}) as g:
        yield g


def connect(client_id: str, level: int, *, resume: bool) -> Connect:
    if level == MQTT_5:
        return Connect(client_id, level, clean_start=not resume, properties=KEEP)
    return Connect(client_id, level, clean_start=False)


async def subscribe(client: WireClient, topic_filter: str, qos: int) -> None:
    await client.send(Subscribe(1, (Subscription(topic_filter, qos),)))
    assert isinstance(await client.recv(), SubAck)


async def publish(client: WireClient, topic: str, payload: bytes, qos: int, pid: int) -> None:
    await client.send(Publish(topic, payload, qos, packet_id=pid))
    if qos == 1:
        assert await client.recv() == PubAck(pid)
    else:
        assert await client.recv() == PubRec(pid)
        await client.send(PubRel(pid))
        assert await client.recv() == PubComp(pid)


async def receive(client: WireClient, n: int) -> list[Publish]:
    got = [await client.recv() for _ in range(n)]
    assert all(isinstance(p, Publish) for p in got), got
    return [p for p in got if isinstance(p, Publish)]


@pytest.mark.parametrize("level", [MQTT_311, MQTT_5])
@pytest.mark.parametrize("qos", [1, 2])
async def test_unacked_deliveries_keep_their_packet_ids(gw: Gateway, level: int, qos: int) -> None:
    sub, _ = await gw.connect(connect("rs", level, resume=False))
    await subscribe(sub, "rs/#", qos)
    pub, _ = await gw.connect(Connect("rs-pub", MQTT_5))
    for i in range(4):
        await publish(pub, "rs/a", b"%d" % i, qos, i + 1)
    first = await receive(sub, 4)
    assert not any(p.dup for p in first)
    ids = [p.packet_id for p in first]
    assert len(set(ids)) == 4 and None not in ids
    # the client acknowledges the first and the third, then the connection drops
    for p in (first[0], first[2]):
        assert p.packet_id is not None
        await sub.send(PubAck(p.packet_id) if qos == 1 else PubRec(p.packet_id))
    if qos == 2:
        assert await sub.recv() == PubRel(ids[0] or 0)
        assert await sub.recv() == PubRel(ids[2] or 0)
    await sub.aclose()

    sub, ack = await gw.connect(connect("rs", level, resume=True))
    assert ack.session_present
    if qos == 2:  # the PUBREL of the exchanges that got their PUBREC come again first
        assert {await sub.recv(), await sub.recv()} == {PubRel(ids[0] or 0), PubRel(ids[2] or 0)}
        await sub.send(PubComp(ids[0] or 0))
        await sub.send(PubComp(ids[2] or 0))
    again = await receive(sub, 2)
    assert [(bytes(p.payload), p.packet_id, p.dup, p.qos) for p in again] == [
        (b"1", ids[1], True, qos), (b"3", ids[3], True, qos)]
    # new messages get other ids while those are in flight
    await publish(pub, "rs/a", b"4", qos, 9)
    (fresh,) = await receive(sub, 1)
    assert not fresh.dup and fresh.packet_id not in ids
    for p in (*again, fresh):
        assert p.packet_id is not None
        await sub.send(PubAck(p.packet_id) if qos == 1 else PubRec(p.packet_id))
    if qos == 2:
        for p in (*again, fresh):
            assert await sub.recv() == PubRel(p.packet_id or 0)
            await sub.send(PubComp(p.packet_id or 0))
    await sub.send(Disconnect())
    await sub.expect_closed()
    sub, _ = await gw.connect(connect("rs", level, resume=True))
    await sub.nothing(0.3)  # everything was acknowledged


async def test_packet_ids_kept_for_resending_survive_a_restart(tmp_path: Path) -> None:
    settings: dict[str, Any] = {"allow_anonymous": True}
    url = f"file://{tmp_path}"
    async with open_gateway(settings, storage_url=url) as gw:
        sub, _ = await gw.connect(connect("rr", MQTT_5, resume=False))
        await subscribe(sub, "rr/#", 1)
        pub, _ = await gw.connect(Connect("rr-pub", MQTT_5))
        for i in range(3):
            await publish(pub, "rr/a", b"%d" % i, 1, i + 1)
        first = await receive(sub, 3)
        await sub.send(PubAck(first[0].packet_id or 0))
        await sub.send(Disconnect())
        await sub.expect_closed()
    async with open_gateway(settings, storage_url=url) as gw:
        sub, ack = await gw.connect(connect("rr", MQTT_5, resume=True))
        assert ack.session_present
        again = await receive(sub, 2)
        assert [(bytes(p.payload), p.packet_id, p.dup) for p in again] == [
            (b"1", first[1].packet_id, True), (b"2", first[2].packet_id, True)]


def test_kept_ids_are_not_allocated_and_round_trip_through_json() -> None:
    state: SessionState[None] = SessionState("c")
    state.keep_for_resend(("t", None, 0, 10), 1)
    state.keep_for_resend(("t", "$share/g/t/#", 1, 11), 2)
    assert [state.start_outbound(1, None) for _ in range(2)] == [3, 4]
    restored: SessionState[None] = SessionState.from_json(state.to_json())
    assert restored.resend == state.resend
    assert restored.start_outbound(1, None) == 3
    assert restored.resend_id(("t", None, 0, 10)) == 1
    assert restored.resend_id(("t", None, 0, 10)) is None  # once
    assert restored.start_outbound(1, None, 1) == 1
    restored.outbound.pop(1)
    assert restored.start_outbound(1, None) == 4  # 1 is free again, but the counter moved on
    # an id taken meanwhile (cannot happen through the Deliverer) is not reused
    restored.keep_for_resend(("t", None, 0, 12), 4)
    assert restored.resend_id(("t", None, 0, 12)) is None


def test_bad_stored_resend_entries_are_refused() -> None:
    state: SessionState[None] = SessionState("c")
    state.keep_for_resend(("t", None, 0, 1), 5)
    data = state.to_json().replace(b"5]]", b"0]]")
    with pytest.raises(ValueError):
        SessionState.from_json(data)


def test_kept_ids_are_bounded() -> None:
    state: SessionState[None] = SessionState("c")
    for offset in range(MAX_RESEND + 10):
        state.keep_for_resend(("t", "$share/g/t", 0, offset), offset % 0xFFFF + 1)
    assert len(state.resend) == MAX_RESEND
    assert ("t", "$share/g/t", 0, 0) not in state.resend  # the oldest went first
    assert state.start_outbound(1, None) == 1  # its id is free again
