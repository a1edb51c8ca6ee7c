"""PacketReader: incremental framing, size bound, protocol level and direction rules."""

from __future__ import annotations

import pytest

from handlers.mqtt import (
    MQTT_5,
    MQTT_311,
    Connect,
    MalformedPacket,
    PacketReader,
    PacketTooLarge,
    PingReq,
    Properties,
    ProtocolError,
    PubAck,
    Publish,
    Role,
    SubAck,
    encode,
)


def test_huge_declared_length_is_rejected_before_buffering() -> None:
    reader = PacketReader(max_packet_size=1024)
    reader.receive_data(b"\x30\xff\xff\xff\x7f")  # declares a 256 MiB PUBLISH
    with pytest.raises(PacketTooLarge) as info:
        reader.next_packet()
    assert info.value.reason_code == 0x95
    assert reader.buffered == 5


def test_size_bound_counts_the_whole_packet() -> None:
    connect = encode(Connect("c", MQTT_311), MQTT_311)
    publish = encode(Publish("t", b"x" * 100), MQTT_311)
    reader = PacketReader(max_packet_size=len(publish))
    reader.receive_data(connect + publish)
    assert isinstance(reader.next_packet(), Connect)
    assert isinstance(reader.next_packet(), Publish)

    reader = PacketReader(max_packet_size=len(publish) - 1)
    reader.receive_data(connect + publish[:3])
    assert isinstance(reader.next_packet(), Connect)
    with pytest.raises(PacketTooLarge):
        reader.next_packet()


def test_length_over_four_bytes_is_malformed() -> None:
    reader = PacketReader(protocol_version=MQTT_311)
    reader.receive_data(b"\x30\x80\x80\x80")
    assert reader.next_packet() is None
    reader.receive_data(b"\x80")
    with pytest.raises(MalformedPacket):
        reader.next_packet()


def test_first_packet_must_be_connect() -> None:
    reader = PacketReader()
    reader.receive_data(b"\xc0\x00")
    with pytest.raises(ProtocolError):
        reader.next_packet()


def test_second_connect_is_a_protocol_error() -> None:
    data = encode(Connect("c", MQTT_5), MQTT_5)
    reader = PacketReader()
    reader.receive_data(data + data)
    assert isinstance(reader.next_packet(), Connect)
    with pytest.raises(ProtocolError):
        reader.next_packet()


@pytest.mark.parametrize("level", [MQTT_311, MQTT_5])
def test_protocol_level_comes_from_connect(level: int) -> None:
    reader = PacketReader()
    assert reader.protocol_version is None
    reader.receive_data(encode(Connect("c", level), level))
    assert isinstance(reader.next_packet(), Connect)
    assert reader.protocol_version == level
    reader.receive_data(b"\x40\x03\x00\x07\x10")  # PUBACK with a reason code: MQTT 5 only
    if level == MQTT_5:
        assert reader.next_packet() == PubAck(7, 0x10)
    else:
        with pytest.raises(MalformedPacket):
            reader.next_packet()


def test_server_rejects_server_packets_and_client_rejects_client_packets() -> None:
    server = PacketReader(Role.SERVER, protocol_version=MQTT_5)
    server.receive_data(encode(SubAck(1, (0,)), MQTT_5))
    with pytest.raises(ProtocolError):
        server.next_packet()
    client = PacketReader(Role.CLIENT, protocol_version=MQTT_5)
    client.receive_data(b"\xc0\x00")
    with pytest.raises(ProtocolError):
        client.next_packet()
    client = PacketReader(Role.CLIENT, protocol_version=MQTT_5)
    client.receive_data(b"\x00\x00")
    with pytest.raises(MalformedPacket):
        client.next_packet()


def test_bad_arguments() -> None:
    with pytest.raises(ValueError):
        PacketReader(Role.CLIENT)
    with pytest.raises(ValueError):
        PacketReader(protocol_version=3)
    with pytest.raises(ValueError):
        PacketReader(max_packet_size=1)


def test_payload_view_survives_more_input() -> None:
    reader = PacketReader(protocol_version=MQTT_311)
    reader.receive_data(encode(Publish("t", b"first"), MQTT_311) + b"\x30")
    packet = reader.next_packet()
    assert isinstance(packet, Publish)
    reader.receive_data(b"\x04\x00\x01u2" + b"\xc0\x00")  # would fail if the view pinned the buffer
    second = reader.next_packet()
    assert second == Publish("u", b"2")
    assert reader.next_packet() == PingReq()
    assert bytes(packet.payload) == b"first"


def test_many_packets_in_one_chunk() -> None:
    packets = [Publish(f"t/{i}", bytes([i]) * i, 1, packet_id=i + 1) for i in range(50)]
    reader = PacketReader(protocol_version=MQTT_5)
    reader.receive_data(b"".join(encode(p, MQTT_5) for p in packets))
    got = []
    while (packet := reader.next_packet()) is not None:
        got.append(packet)
    assert got == packets
    assert reader.buffered == 0


def test_client_publish_with_subscription_identifier_is_refused_by_a_server() -> None:
    data = encode(Publish("t", properties=Properties(subscription_identifiers=(4,))), MQTT_5)
    server = PacketReader(Role.SERVER, protocol_version=MQTT_5)
    server.receive_data(data)
    with pytest.raises(ProtocolError):
        server.next_packet()
    client = PacketReader(Role.CLIENT, protocol_version=MQTT_5)
    client.receive_data(data)
    packet = client.next_packet()
    assert isinstance(packet, Publish)
    assert packet.properties.subscription_identifiers == (4,)
