"""MQTT data representations: variable byte integers, strings, binary data, integers."""

from __future__ import annotations

import pytest

from handlers.mqtt import EncodeError, MalformedPacket, NeedMoreData
from handlers.mqtt.primitives import (
    decode_binary,
    decode_uint16,
    decode_uint32,
    decode_utf8,
    decode_varint,
    encode_binary,
    encode_utf8,
    encode_varint,
)

VARINTS = [
    (0, b"\x00"), (127, b"\x7f"), (128, b"\x80\x01"), (16_383, b"\xff\x7f"),
    (16_384, b"\x80\x80\x01"), (2_097_151, b"\xff\xff\x7f"), (2_097_152, b"\x80\x80\x80\x01"),
    (268_435_455, b"\xff\xff\xff\x7f"),
]


@pytest.mark.parametrize(("value", "data"), VARINTS)
def test_varint_spec_table(value: int, data: bytes) -> None:
    assert encode_varint(value) == data
    assert decode_varint(memoryview(b"\xaa" + data + b"\xbb"), 1) == (value, 1 + len(data))
    for cut in range(len(data)):
        with pytest.raises(NeedMoreData):
            decode_varint(memoryview(data[:cut]), 0)


def test_varint_limits() -> None:
    with pytest.raises(MalformedPacket):
        decode_varint(memoryview(b"\x80\x80\x80\x80\x01"), 0)
    with pytest.raises(MalformedPacket):
        decode_varint(memoryview(b"\x80\x00"), 0)
    for bad in (-1, 268_435_456):
        with pytest.raises(EncodeError):
            encode_varint(bad)


def test_integers() -> None:
    view = memoryview(b"\x01\x02\x03\x04\x05")
    assert decode_uint16(view, 0) == (0x0102, 2)
    assert decode_uint32(view, 1) == (0x02030405, 5)
    with pytest.raises(NeedMoreData):
        decode_uint16(view, 4)
    with pytest.raises(NeedMoreData):
        decode_uint32(view, 2)


def test_utf8_round_trip_and_rules() -> None:
    text = "a/ü/€/\U0001f600"
    data = encode_utf8(text)
    assert decode_utf8(memoryview(data + b"rest"), 0) == (text, len(data))
    assert decode_utf8(memoryview(b"\x00\x00"), 0) == ("", 2)
    for bad in (b"\x00\x01\x00", b"\x00\x01\xff", b"\x00\x03\xed\xa0\x80", b"\x00\x02\xc0\x80"):
        with pytest.raises(MalformedPacket):
            decode_utf8(memoryview(bad), 0)
    with pytest.raises(NeedMoreData):
        decode_utf8(memoryview(b"\x00\x05abc"), 0)
    for bad_text in ("a\x00b", "\ud800", "x" * 65536):
        with pytest.raises(EncodeError):
            encode_utf8(bad_text)


def test_binary() -> None:
    assert encode_binary(b"\x00\xff") == b"\x00\x02\x00\xff"
    assert decode_binary(memoryview(b"\x00\x02\x00\xff"), 0) == (b"\x00\xff", 4)
    with pytest.raises(NeedMoreData):
        decode_binary(memoryview(b"\x00\x03\x00"), 0)
    with pytest.raises(EncodeError):
        encode_binary(b"x" * 65536)
