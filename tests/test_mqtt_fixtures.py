"""The MQTT codec against bytes captured from real clients and a real broker.

See tests/fixtures/mqtt/README.md for how the fixtures were captured.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from handlers.mqtt import (
    MQTT_5,
    Connect,
    NeedMoreData,
    PacketReader,
    PacketType,
    PingReq,
    PingResp,
    Publish,
    Role,
    decode,
    encode,
)
from handlers.mqtt.packets import Packet

FIXTURE_DIR = Path(__file__).resolve().parent / "fixtures" / "mqtt"
FIXTURES = {
    path.stem: bytes.fromhex(path.read_text().strip()) for path in sorted(FIXTURE_DIR.glob("*.hex"))
}

# These senders wrote MQTT 5 properties in insertion order, not identifier order; our encoder
# always writes identifier order, so their re-encoding differs byte-wise (same packet).
NON_CANONICAL = {
    "connack_v5_mosquittobroker_001",
    "connect_v5_mosquittocli_002",
    "connect_v5_mosquittocli_003",
    "publish_v5_mosquittocli_002",
}


def _meta(name: str) -> tuple[PacketType, int, Role]:
    packet, level, peer, _ = name.split("_")
    role = Role.CLIENT if peer == "mosquittobroker" else Role.SERVER
    return PacketType[packet.upper()], int(level[1:]), role


def _reader(name: str) -> PacketReader:
    ptype, level, role = _meta(name)
    if ptype is PacketType.CONNECT:
        return PacketReader(role)
    return PacketReader(role, protocol_version=level)


def _trailer(role: Role) -> tuple[bytes, Packet]:
    return (b"\xc0\x00", PingReq()) if role is Role.SERVER else (b"\xd0\x00", PingResp())


def test_fixtures_cover_every_packet_type() -> None:
    seen = {(_meta(name)[0], _meta(name)[1]) for name in FIXTURES}
    for level in (4, 5):
        for ptype in PacketType:
            if ptype in (PacketType.WILL, PacketType.AUTH):
                continue
            assert (ptype, level) in seen, (ptype, level)
    assert len(FIXTURES) > 50


@pytest.mark.parametrize("name", sorted(FIXTURES))
def test_decode_whole(name: str) -> None:
    data = FIXTURES[name]
    ptype, level, _ = _meta(name)
    packet, consumed = decode(data, level)
    assert consumed == len(data)
    assert packet.packet_type is ptype
    if isinstance(packet, Connect):
        assert packet.protocol_level == level


@pytest.mark.parametrize("name", sorted(FIXTURES))
def test_reader_one_byte_at_a_time_then_trailing_bytes(name: str) -> None:
    data = FIXTURES[name]
    _, level, role = _meta(name)
    expected, _ = decode(data, level)

    reader = _reader(name)
    got = []
    for i in range(len(data)):
        reader.receive_data(data[i : i + 1])
        packet = reader.next_packet()
        if packet is not None:
            got.append((i, packet))
    assert got == [(len(data) - 1, expected)]
    assert reader.buffered == 0
    assert reader.protocol_version == level

    trailer, trailer_packet = _trailer(role)
    reader = _reader(name)
    reader.receive_data(data + trailer + trailer[:1])
    assert reader.next_packet() == expected
    assert reader.next_packet() == trailer_packet
    assert reader.next_packet() is None
    assert reader.buffered == 1


@pytest.mark.parametrize("name", sorted(FIXTURES))
def test_every_truncated_prefix_needs_more_data(name: str) -> None:
    data = FIXTURES[name]
    _, level, _ = _meta(name)
    for cut in range(len(data)):
        with pytest.raises(NeedMoreData):
            decode(data[:cut], level)
        reader = _reader(name)
        reader.receive_data(data[:cut])
        assert reader.next_packet() is None


@pytest.mark.parametrize("name", sorted(FIXTURES))
def test_reencode(name: str) -> None:
    data = FIXTURES[name]
    _, level, _ = _meta(name)
    packet, _ = decode(data, level)
    encoded = encode(packet, level)
    if name in NON_CANONICAL:
        assert encoded != data
        assert len(encoded) == len(data)
    else:
        assert encoded == data
    assert decode(encoded, level)[0] == packet


def test_selected_fixture_fields() -> None:
    """Spot checks that the decoded values are what the capture script asked the clients for."""
    connect, _ = decode(FIXTURES["connect_v5_paho_001"], MQTT_5)
    assert isinstance(connect, Connect)
    assert connect.username == "alice" and connect.password == b"secret"
    assert connect.properties.session_expiry_interval == 3600
    assert connect.properties.receive_maximum == 20
    assert connect.properties.topic_alias_maximum == 10
    assert connect.properties.user_properties == (("region", "eu"), ("region", "us"))
    will = connect.will
    assert will is not None
    assert (will.topic, will.payload, will.qos, will.retain) == (
        "clients/paho/state", b"offline", 1, True,
    )
    assert will.properties.will_delay_interval == 5
    assert will.properties.message_expiry_interval == 120
    assert will.properties.content_type == "text/plain"
    assert will.properties.user_properties == (("why", "gone"),)

    publish, _ = decode(FIXTURES["publish_v5_mosquittobroker_002"], MQTT_5)
    assert isinstance(publish, Publish)
    assert publish.topic == "push/one" and publish.qos == 2
    assert publish.properties.subscription_identifiers == (42,)
    assert bytes(publish.payload) == b"to myself"

    big, _ = decode(FIXTURES["publish_v4_paho_005"], 4)
    assert isinstance(big, Publish)
    assert bytes(big.payload) == bytes(range(256)) * 4
    assert isinstance(big.payload, memoryview)
