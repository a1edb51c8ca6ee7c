"""Hypothesis: arbitrary or mutated bytes only ever raise the codec's own errors."""

from __future__ import annotations

import contextlib
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from handlers.mqtt import (
    MQTT_5,
    MQTT_311,
    MQTTError,
    NeedMoreData,
    PacketReader,
    Properties,
    Publish,
    Role,
    Subscribe,
    Subscription,
    decode,
    decode_packet,
    encode,
)

FIXTURES = [
    bytes.fromhex(p.read_text().strip())
    for p in sorted((Path(__file__).resolve().parent / "fixtures" / "mqtt").glob("*.hex"))
]
READERS = st.sampled_from(
    [(Role.SERVER, None), (Role.SERVER, MQTT_311), (Role.SERVER, MQTT_5),
     (Role.CLIENT, MQTT_311), (Role.CLIENT, MQTT_5)]
)


def _drain(reader: PacketReader, chunks: list[bytes]) -> None:
    for chunk in chunks:
        reader.receive_data(chunk)
        while reader.next_packet() is not None:
            pass


@settings(max_examples=300, deadline=None)
@given(st.lists(st.binary(max_size=64), max_size=8), READERS)
def test_reader_on_arbitrary_bytes(
    chunks: list[bytes], reader_args: tuple[Role, int | None]
) -> None:
    role, version = reader_args
    reader = PacketReader(role, protocol_version=version, max_packet_size=4096)
    with contextlib.suppress(MQTTError):
        _drain(reader, chunks)


@settings(max_examples=500, deadline=None)
@given(st.integers(0, 255), st.binary(max_size=80), st.sampled_from([MQTT_311, MQTT_5]))
def test_decode_packet_on_arbitrary_bodies(first: int, body: bytes, version: int) -> None:
    with contextlib.suppress(MQTTError):
        decode_packet(first, memoryview(body), version)


@settings(max_examples=500, deadline=None)
@given(
    st.sampled_from(FIXTURES),
    st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 255)), min_size=1, max_size=4),
    st.sampled_from([MQTT_311, MQTT_5]),
)
def test_decode_mutated_fixtures(data: bytes, edits: list[tuple[int, int]], version: int) -> None:
    mutated = bytearray(data)
    for pos, value in edits:
        mutated[pos % len(mutated)] = value
    with contextlib.suppress(MQTTError, NeedMoreData):
        decode(bytes(mutated), version)


TEXT = st.text(st.characters(codec="utf-8", exclude_characters="\x00+#/"),
               min_size=1, max_size=8)
TOPIC = st.lists(TEXT, min_size=1, max_size=4).map("/".join)
USER_PROPS = st.lists(st.tuples(TEXT, st.text(max_size=5).filter(lambda t: "\x00" not in t
                                                                   and t.isprintable())),
                      max_size=3).map(tuple)


@st.composite
def publishes(draw: st.DrawFn) -> tuple[Publish, int]:
    version = draw(st.sampled_from([MQTT_311, MQTT_5]))
    qos = draw(st.integers(0, 2))
    props = Properties()
    if version == MQTT_5:
        props = Properties(
            content_type=draw(st.none() | TEXT),
            message_expiry_interval=draw(st.none() | st.integers(0, 2**32 - 1)),
            subscription_identifiers=tuple(draw(st.lists(st.integers(1, 268_435_455),
                                                         max_size=2))),
            user_properties=draw(USER_PROPS),
        )
    packet = Publish(
        draw(TOPIC), draw(st.binary(max_size=300)), qos, draw(st.booleans()),
        draw(st.booleans()) if qos else False,
        draw(st.integers(1, 65535)) if qos else None, props,
    )
    return packet, version


@settings(max_examples=200, deadline=None)
@given(publishes())
def test_publish_round_trip(case: tuple[Publish, int]) -> None:
    packet, version = case
    data = encode(packet, version)
    assert decode(data, version) == (packet, len(data))


@settings(max_examples=200, deadline=None)
@given(
    st.integers(1, 65535),
    st.lists(st.tuples(st.lists(st.sampled_from(["+", "a", "bc", ""]), min_size=1, max_size=4),
                       st.booleans(), st.integers(0, 2), st.booleans(), st.booleans(),
                       st.integers(0, 2)), min_size=1, max_size=5),
)
def test_subscribe_round_trip(
    packet_id: int, raw: list[tuple[list[str], bool, int, bool, bool, int]]
) -> None:
    subs = tuple(
        Subscription(("/".join(levels) or "x") + ("/#" if hash_ else ""), qos, no_local, rap, rh)
        for levels, hash_, qos, no_local, rap, rh in raw
    )
    packet = Subscribe(packet_id, subs)
    data = encode(packet, MQTT_5)
    assert decode(data, MQTT_5) == (packet, len(data))
    plain = Subscribe(packet_id, tuple(Subscription(s.topic_filter, s.qos) for s in subs))
    data = encode(plain, MQTT_311)
    assert decode(data, MQTT_311) == (plain, len(data))
