"""The copy-saving paths of the MQTT handler: the reader's position-based buffer, PUBLISH
packets delivered in pieces, and the writer joining queued items into one write."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from handlers.mqtt import MQTT_5, MQTT_311, PacketReader, PingReq, PubAck, Publish, encode
from handlers.mqtt.hot_path import encode_plain_publish, plain_publish_parts, topic_field
from handlers.mqtt.outbox import Outbox

# remaining lengths of one, two and three bytes, PUBACK runs, a packet for the general path
PACKETS = [
    Publish("a/b", b"x" * 100, 1, packet_id=1),
    PubAck(1),
    Publish("a/b", bytes(range(256)) * 4, 1, packet_id=2),
    PubAck(2),
    PubAck(3),
    Publish("c", b"y" * 20_000, 0),
    Publish("a/b", b"z" * 1024, 1, retain=True, packet_id=3),
    PingReq(),
]


def _read_all(reader: PacketReader, stream: bytes, step: int, kind: type) -> list[object]:
    got: list[object] = []
    for i in range(0, len(stream), step):
        reader.receive_data(kind(stream[i:i + step]))
        while (packet := reader.next_packet()) is not None:
            got.append(packet)
    return got


@pytest.mark.parametrize("level", [MQTT_311, MQTT_5])
@pytest.mark.parametrize("step", [1, 3, 7, 129, 1500, 65536])
@pytest.mark.parametrize("kind", [bytes, bytearray, memoryview])
def test_any_split_of_the_stream_gives_the_same_packets(
    level: int, step: int, kind: type
) -> None:
    packets = [*PACKETS, PubAck(4, 0x10)] if level == MQTT_5 else PACKETS
    stream = b"".join(encode(p, level) for p in packets)
    reader = PacketReader(protocol_version=level)
    got = _read_all(reader, stream, step, kind)
    assert got == packets
    assert reader.buffered == 0
    payloads = [p.payload for p in got if isinstance(p, Publish)]
    assert all(type(p) is bytes for p in payloads)  # owned copies, not views of the reader


def test_buffered_counts_what_is_not_consumed() -> None:
    first = encode(Publish("t", b"1" * 300, 1, packet_id=9), MQTT_311)
    reader = PacketReader(protocol_version=MQTT_311)
    reader.receive_data(first + first[:10])
    assert reader.next_packet() == Publish("t", b"1" * 300, 1, packet_id=9)
    assert reader.buffered == 10
    assert reader.next_packet() is None
    reader.receive_data(first[10:])
    assert reader.next_packet() == Publish("t", b"1" * 300, 1, packet_id=9)
    assert reader.buffered == 0


def test_take_pubacks_reads_from_the_current_position() -> None:
    reader = PacketReader(protocol_version=MQTT_311)
    publish = encode(Publish("t", b"p", 1, packet_id=5), MQTT_311)
    reader.receive_data(publish + b"\x40\x02\x00\x07\x40\x02\x00\x08\x40\x02\x00")
    assert reader.next_packet() == Publish("t", b"p", 1, packet_id=5)
    ids: list[int] = []
    assert reader.take_pubacks(ids) == 2
    assert ids == [7, 8]
    assert reader.buffered == 3
    reader.receive_data(b"\x09")
    assert reader.next_packet() == PubAck(9)


@pytest.mark.parametrize("v5", [False, True])
@pytest.mark.parametrize("qos", [0, 1, 2])
def test_publish_parts_join_to_the_encoded_packet(v5: bool, qos: int) -> None:
    field = topic_field("sensors/1")
    payload = b"\x00\x01" * 700
    pid = 42 if qos else None
    parts = plain_publish_parts(field, payload, qos, True, bool(qos), pid, v5)
    assert b"".join(parts) == encode_plain_publish(field, payload, qos, True, bool(qos), pid, v5)
    level = MQTT_5 if v5 else MQTT_311
    expected = Publish("sensors/1", payload, qos, True, bool(qos), pid)
    assert b"".join(parts) == encode(expected, level)
    assert any(part is payload for part in parts)  # the payload is not copied into a packet


async def test_pieces_and_bytes_queue_in_order_and_oversized_ones_are_skipped() -> None:
    outbox = Outbox()
    field = topic_field("a/b")
    small = plain_publish_parts(field, b"s" * 10, 1, False, False, 1, False)
    big = plain_publish_parts(field, b"b" * 500, 1, False, False, 2, False)
    plain = encode_plain_publish(field, b"p" * 20, 1, False, False, 3, False)
    outbox.max_packet_size = 100
    queued = await outbox.send_publishes([small, big, plain], droppable=False)
    assert queued == [True, False, True]
    assert bytes(outbox.take_queued()) == b"".join(small) + plain


async def test_the_writer_joins_queued_items_into_one_write() -> None:
    outbox = Outbox()
    items = [bytes([i]) * (i + 1) for i in range(5)]
    for item in items:
        await outbox.send(item)
    outbox.close()
    send, receive = trio.testing.memory_stream_pair()
    writes: list[int] = []

    class Counting(trio.abc.Stream):
        async def send_all(self, data: bytes | bytearray | memoryview) -> None:
            writes.append(len(data))
            await send.send_all(data)

        async def wait_send_all_might_not_block(self) -> None:  # pragma: no cover
            await send.wait_send_all_might_not_block()

        async def receive_some(self, max_bytes: int | None = None) -> bytes:  # pragma: no cover
            return await send.receive_some(max_bytes)

        async def aclose(self) -> None:  # pragma: no cover
            await send.aclose()

    await outbox.write_to(Counting())
    assert writes == [sum(map(len, items))]
    assert await receive.receive_some() == b"".join(items)
