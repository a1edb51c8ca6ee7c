"""In-process MQTT sessions: CONNECT, auth, keep alive, takeover, errors, inbound PUBLISH."""

from __future__ import annotations

import logging
import random
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing
from test_mqtt_session_harness import Gateway, open_gateway

from core import headers as h
from handlers.mqtt import (
    MQTT_5,
    MQTT_311,
    ConnAck,
    Connect,
    Disconnect,
    PingReq,
    PingResp,
    Properties,
    PubAck,
    PubComp,
    Publish,
    PubRec,
    PubRel,
    ReasonCode,
    Will,
    encode,
)

GUEST = {"username": "guest", "password": b"guest"}


@pytest.fixture
async def gw() -> AsyncIterator[Gateway]:
    async with open_gateway({"receive_maximum": 3, "topic_alias_maximum": 4,
                             "max_keepalive": 120, "max_session_expiry": 600}) as g:
        yield g


@pytest.fixture
async def anon() -> AsyncIterator[Gateway]:
    """For MockClock tests: password checks run in a worker thread, which autojump skips over."""
    async with open_gateway({"allow_anonymous": True, "max_keepalive": 120,
                             "max_session_expiry": 600}) as g:
        yield g


def connect(client_id: str = "c1", level: int = MQTT_5, **kw: object) -> Connect:
    args: dict[str, object] = {"client_id": client_id, "protocol_level": level, **GUEST}
    if kw.pop("anonymous", False):
        args.update(username=None, password=None)
    args.update(kw)
    return Connect(**args)  # type: ignore[arg-type]


def anon_connect(client_id: str = "c1", **kw: Any) -> Connect:
    return connect(client_id, anonymous=True, **kw)


# ---------------------------------------------------------------- CONNECT


async def test_connack_advertises_the_server_limits(gw: Gateway) -> None:
    _, ack = await gw.connect(connect(keep_alive=30))
    p = ack.properties
    assert not ack.session_present
    assert p.receive_maximum == 3 and p.topic_alias_maximum == 4
    assert p.maximum_packet_size == 2 * 1024 * 1024
    assert p.retain_available == 1 and p.shared_subscription_available == 1
    assert p.wildcard_subscription_available == 1
    assert p.subscription_identifier_available == 1
    assert p.server_keep_alive is None  # 30 s is within the cap
    assert p.assigned_client_identifier is None


async def test_server_keep_alive_caps_the_client(gw: Gateway) -> None:
    _, ack = await gw.connect(connect(keep_alive=0))
    assert ack.properties.server_keep_alive == 120
    _, ack = await gw.connect(connect("c2", keep_alive=600))
    assert ack.properties.server_keep_alive == 120


async def test_session_expiry_is_capped(gw: Gateway) -> None:
    _, ack = await gw.connect(connect(properties=Properties(session_expiry_interval=9999)))
    assert ack.properties.session_expiry_interval == 600


async def test_empty_client_id_gets_one_assigned(gw: Gateway) -> None:
    _, ack = await gw.connect(connect(""))
    assigned = ack.properties.assigned_client_identifier
    assert assigned and assigned.startswith("ps-")


async def test_empty_client_id_without_clean_session_is_rejected_on_311(gw: Gateway) -> None:
    client, _ = await gw.connect(connect("", MQTT_311, clean_start=False), expect=0x02)
    assert await client.expect_closed() == []


@pytest.mark.parametrize(("level", "code"), [(MQTT_5, 0x87), (MQTT_311, 0x05)])
async def test_anonymous_is_refused_by_default(gw: Gateway, level: int, code: int) -> None:
    client, _ = await gw.connect(connect(level=level, username=None, password=None),
                                 expect=code)
    assert await client.expect_closed() == []


@pytest.mark.parametrize(("level", "code"), [(MQTT_5, 0x86), (MQTT_311, 0x04)])
async def test_bad_password_is_refused(gw: Gateway, level: int, code: int) -> None:
    await gw.connect(connect(level=level, password=b"nope"), expect=code)


async def test_guest_only_from_loopback(gw: Gateway) -> None:
    await gw.connect(connect(), peer="10.1.2.3", expect=0x86)


async def test_users_of_the_core_can_log_in(gw: Gateway) -> None:
    await gw.core.users.add("alice", "s3cret")
    await gw.connect(connect(username="alice", password=b"s3cret"), peer="10.1.2.3")


async def test_anonymous_allowed_when_configured() -> None:
    async with open_gateway({"allow_anonymous": True}) as g:
        await g.connect(connect(username=None, password=None))


async def test_unsupported_protocol_level_gets_connack_0x01(gw: Gateway) -> None:
    client = await gw.open(level=MQTT_311)
    # CONNECT with protocol level 3 ("MQTT" name): refused with the 3.1.1 return code
    await client.send_raw(b"\x10\x0c\x00\x04MQTT\x03\x02\x00\x3c\x00\x00")
    packets = await client.expect_closed()
    assert packets == [ConnAck(False, 0x01)]


async def test_first_packet_must_be_connect(gw: Gateway) -> None:
    client = await gw.open()
    await client.send_raw(b"\xc0\x00")  # PINGREQ
    assert await client.expect_closed() == []


async def test_no_connect_times_out(
    anon: Gateway, autojump_clock: trio.testing.MockClock
) -> None:
    client = await anon.open()
    assert await client.expect_closed(within=60) == []


# ---------------------------------------------------------------- keep alive, ping, disconnect


async def test_pingreq(gw: Gateway) -> None:
    client, _ = await gw.connect(connect())
    await client.send(PingReq())
    assert await client.recv() == PingResp()


async def test_keepalive_timeout_disconnects_with_0x8d_and_sends_the_will(
    anon: Gateway, autojump_clock: trio.testing.MockClock
) -> None:
    will = Will("wills/c1", b"gone", 1)
    client, _ = await anon.connect(anon_connect(keep_alive=10, will=will))
    start = trio.current_time()
    packets = await client.expect_closed(within=60)
    assert packets == [Disconnect(ReasonCode.KEEP_ALIVE_TIMEOUT)]
    assert 15 <= trio.current_time() - start < 16  # 1.5 x keep alive
    await trio.sleep(1)
    stored = await anon.messages("wills")
    assert [m.value for m in stored] == [b"gone"]


async def test_packets_keep_the_connection_alive(
    anon: Gateway, autojump_clock: trio.testing.MockClock
) -> None:
    client, _ = await anon.connect(anon_connect(keep_alive=10))
    for _ in range(5):
        await trio.sleep(9)
        await client.send(PingReq())
        assert await client.recv() == PingResp()


async def test_clean_disconnect_drops_the_will(gw: Gateway) -> None:
    client, _ = await gw.connect(connect(will=Will("wills/x", b"w")))
    await client.send(Disconnect())
    assert await client.expect_closed() == []
    await trio.sleep(0.2)
    with pytest.raises(Exception):  # noqa: B017 - the topic was never created
        await gw.messages("wills")


async def test_disconnect_with_will_message_sends_it(gw: Gateway) -> None:
    client, _ = await gw.connect(connect(will=Will("wills/x", b"w", retain=True)))
    await client.send(Disconnect(ReasonCode.DISCONNECT_WITH_WILL_MESSAGE))
    await client.expect_closed()
    await trio.sleep(0.2)
    assert [m.value for m in await gw.messages("wills")] == [b"w"]


async def test_will_delay_is_cancelled_by_a_reconnect(
    anon: Gateway, autojump_clock: trio.testing.MockClock
) -> None:
    will = Will("wills/d", b"late", properties=Properties(will_delay_interval=30))
    props = Properties(session_expiry_interval=100)
    client, _ = await anon.connect(anon_connect("d", will=will, properties=props))
    await client.aclose()
    await trio.sleep(10)
    await anon.connect(anon_connect("d", clean_start=False, properties=props))
    await trio.sleep(60)
    with pytest.raises(Exception):  # noqa: B017 - nothing was ever published there
        await anon.messages("wills")


async def test_will_delay_elapses(anon: Gateway, autojump_clock: trio.testing.MockClock) -> None:
    will = Will("wills/d", b"late", properties=Properties(will_delay_interval=30))
    client, _ = await anon.connect(anon_connect(
        "d", will=will, properties=Properties(session_expiry_interval=100)))
    await client.aclose()
    await trio.sleep(29)
    with pytest.raises(Exception):  # noqa: B017
        await anon.messages("wills")
    await trio.sleep(2)
    assert [m.value for m in await anon.messages("wills")] == [b"late"]


async def test_disconnect_cannot_set_expiry_after_zero(gw: Gateway) -> None:
    client, _ = await gw.connect(connect())
    await client.send(Disconnect(0, Properties(session_expiry_interval=10)))
    assert await client.expect_closed() == [Disconnect(ReasonCode.PROTOCOL_ERROR)]


# ---------------------------------------------------------------- takeover, errors


async def test_takeover_disconnects_the_old_connection_with_0x8e(gw: Gateway) -> None:
    props = Properties(session_expiry_interval=60)
    old, _ = await gw.connect(connect("same", properties=props))
    new, ack = await gw.connect(connect("same", clean_start=False, properties=props))
    assert ack.session_present
    assert await old.expect_closed() == [Disconnect(ReasonCode.SESSION_TAKEN_OVER)]
    await new.send(PingReq())
    assert await new.recv() == PingResp()


async def test_takeover_on_311_just_closes(gw: Gateway) -> None:
    old, _ = await gw.connect(connect("same", MQTT_311))
    await gw.connect(connect("same", MQTT_311))
    assert await old.expect_closed() == []


async def test_malformed_packet_gets_disconnect_0x81_on_v5(gw: Gateway) -> None:
    client, _ = await gw.connect(connect())
    await client.send_raw(b"\x32\x03\x00\x05a")  # topic length runs past the packet
    assert await client.expect_closed() == [Disconnect(ReasonCode.MALFORMED_PACKET)]


async def test_malformed_packet_closes_311(gw: Gateway) -> None:
    client, _ = await gw.connect(connect(level=MQTT_311))
    await client.send_raw(b"\x36\x05\x00\x01a\x00\x01")  # QoS 3
    assert await client.expect_closed() == []


async def test_packet_too_large(gw: Gateway) -> None:
    async with open_gateway({"max_packet_size": 64}) as g:
        client, _ = await g.connect(connect())
        await client.send(Publish("t/x", b"x" * 100))
        assert await client.expect_closed() == [Disconnect(ReasonCode.PACKET_TOO_LARGE)]


async def test_shutdown_sends_0x8b(gw: Gateway) -> None:
    client, _ = await gw.connect(connect())
    gw.stopping.set()
    assert await client.expect_closed() == [Disconnect(ReasonCode.SERVER_SHUTTING_DOWN)]


# ---------------------------------------------------------------- inbound PUBLISH


async def test_publish_qos0_1_2_are_stored_with_mapping(gw: Gateway) -> None:
    client, _ = await gw.connect(connect())
    await client.send(Publish("orders/eu/1", b"zero"))
    await client.send(Publish("orders/eu/1", b"one", 1, packet_id=1))
    assert await client.recv() == PubAck(1)
    await client.send(Publish("orders/eu/2", b"two", 2, packet_id=2))
    assert await client.recv() == PubRec(2)
    await client.send(PubRel(2))
    assert await client.recv() == PubComp(2)
    stored = await gw.messages("orders")
    assert [(m.key, m.value) for m in stored] == [
        (b"orders/eu/1", b"zero"), (b"orders/eu/1", b"one"), (b"orders/eu/2", b"two")]
    assert [h.first_header(m.headers, h.MQTT_QOS) for m in stored] == [b"0", b"1", b"2"]


async def test_qos2_resent_publish_is_stored_once(gw: Gateway) -> None:
    client, _ = await gw.connect(connect())
    for dup in (False, True, True):
        await client.send(Publish("q/x", b"once", 2, dup=dup, packet_id=9))
        assert await client.recv() == PubRec(9)
    await client.send(PubRel(9))
    assert await client.recv() == PubComp(9)
    await client.send(PubRel(9))
    assert await client.recv() == PubComp(9, ReasonCode.PACKET_IDENTIFIER_NOT_FOUND)
    assert [m.value for m in await gw.messages("q")] == [b"once"]


async def test_qos2_state_survives_a_reconnect(gw: Gateway) -> None:
    props = Properties(session_expiry_interval=60)
    client, _ = await gw.connect(connect("q2", properties=props))
    await client.send(Publish("q/x", b"once", 2, packet_id=3))
    assert await client.recv() == PubRec(3)
    await client.aclose()
    client, ack = await gw.connect(connect("q2", clean_start=False, properties=props))
    assert ack.session_present
    await client.send(Publish("q/x", b"once", 2, dup=True, packet_id=3))
    assert await client.recv() == PubRec(3)
    await client.send(PubRel(3))
    assert await client.recv() == PubComp(3)
    assert [m.value for m in await gw.messages("q")] == [b"once"]


async def test_receive_maximum_exceeded(gw: Gateway) -> None:
    client, _ = await gw.connect(connect())
    for pid in range(1, 4):
        await client.send(Publish("r/x", b"m", 2, packet_id=pid))
        assert await client.recv() == PubRec(pid)
    await client.send(Publish("r/x", b"m", 2, packet_id=4))
    assert await client.expect_closed() == [Disconnect(ReasonCode.RECEIVE_MAXIMUM_EXCEEDED)]


async def test_topic_alias_inbound(gw: Gateway) -> None:
    client, _ = await gw.connect(connect())
    await client.send(Publish("alias/a", b"1", 1, packet_id=1,
                              properties=Properties(topic_alias=2)))
    assert await client.recv() == PubAck(1)
    await client.send(Publish("", b"2", 1, packet_id=2, properties=Properties(topic_alias=2)))
    assert await client.recv() == PubAck(2)
    stored = await gw.messages("alias")
    assert [(m.key, m.value) for m in stored] == [(b"alias/a", b"1"), (b"alias/a", b"2")]
    await client.send(Publish("x", b"3", properties=Properties(topic_alias=5)))
    assert await client.expect_closed() == [Disconnect(ReasonCode.TOPIC_ALIAS_INVALID)]


async def test_dollar_topics_are_not_stored(gw: Gateway) -> None:
    client, _ = await gw.connect(connect())
    await client.send(Publish("$SYS/x", b"no", 1, packet_id=1))
    assert await client.recv() == PubAck(1, ReasonCode.NO_MATCHING_SUBSCRIBERS)


async def test_311_publish(gw: Gateway) -> None:
    client, _ = await gw.connect(connect(level=MQTT_311))
    await client.send(Publish("v3/a", b"x", 1, packet_id=1))
    assert await client.recv() == PubAck(1)
    assert [m.value for m in await gw.messages("v3")] == [b"x"]


async def test_publishes_arriving_together_are_stored_together(gw: Gateway) -> None:
    client, _ = await gw.connect(connect())
    burst = b"".join(encode(p, MQTT_5) for p in [
        Publish("b/x", b"0"),
        Publish("b/x", b"1", 1, packet_id=1),
        Publish("other/x", b"2", 1, packet_id=2),
        Publish("b/x", b"3", 2, packet_id=3),
        Publish("b/x", b"3", 2, dup=True, packet_id=3),  # a repeat inside the same burst
    ])
    await client.send_raw(burst)
    got = [await client.recv() for _ in range(4)]
    assert got == [PubAck(1), PubAck(2), PubRec(3), PubRec(3)]
    assert [m.value for m in await gw.messages("b")] == [b"0", b"1", b"3"]
    assert [m.value for m in await gw.messages("other")] == [b"2"]


async def test_publishes_before_a_protocol_error_are_kept(gw: Gateway) -> None:
    client, _ = await gw.connect(connect())
    burst = encode(Publish("e/x", b"kept", 1, packet_id=1), MQTT_5) + b"\x32\x03\x00\x05a"
    await client.send_raw(burst)
    assert await client.expect_closed() == [PubAck(1), Disconnect(ReasonCode.MALFORMED_PACKET)]
    assert [m.value for m in await gw.messages("e")] == [b"kept"]


async def test_garbage_after_connect_never_breaks_the_gateway(
    gw: Gateway, caplog: pytest.LogCaptureFixture
) -> None:
    rng = random.Random(1883)
    valid = [encode(p, MQTT_5) for p in (
        Publish("g/x", b"p", 1, packet_id=1), PingReq(), PubRel(1), Disconnect())]
    for n in range(60):
        client, _ = await gw.connect(connect(f"fuzz-{n}"))
        blob = bytearray(rng.choice(valid))
        for _ in range(rng.randint(1, 4)):
            blob[rng.randrange(len(blob))] = rng.randrange(256)
        blob += bytes(rng.randrange(256) for _ in range(rng.randint(0, 8)))
        await client.send_raw(bytes(blob))
        await client.aclose()
    client, _ = await gw.connect(connect("still-fine"))
    await client.send(PingReq())
    assert await client.recv() == PingResp()
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


async def test_qos2_packet_ids_survive_a_gateway_restart(tmp_path: Path) -> None:
    url = f"file://{tmp_path}"
    props = Properties(session_expiry_interval=600)
    async with open_gateway({"allow_anonymous": True}, storage_url=url) as g:
        client, _ = await g.connect(anon_connect("q2r", properties=props))
        await client.send(Publish("q2r/x", b"once", 2, packet_id=5))
        assert await client.recv() == PubRec(5)
    async with open_gateway({"allow_anonymous": True}, storage_url=url) as g:
        client, ack = await g.connect(anon_connect("q2r", properties=props, clean_start=False))
        assert ack.session_present
        await client.send(Publish("q2r/x", b"once", 2, dup=True, packet_id=5))
        assert await client.recv() == PubRec(5)
        await client.send(PubRel(5))
        assert await client.recv() == PubComp(5)
        assert [m.value for m in await g.messages("q2r")] == [b"once"]
