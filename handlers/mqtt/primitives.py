"""MQTT data representations (spec section 1.5): integers, variable byte integers, strings, binary.

Decoders take a ``memoryview`` and an offset and return ``(value, new_offset)``. A buffer that
ends too early raises :class:`NeedMoreData`; a value that breaks the spec's rules raises
:class:`MalformedPacket`. Encoders return ``bytes`` and raise :class:`EncodeError` for values that
cannot be represented.
"""

from __future__ import annotations

import struct

from .errors import EncodeError, MalformedPacket, NeedMoreData

#: Largest value a variable byte integer can hold (four bytes).
VARINT_MAX = 268_435_455

_U16 = struct.Struct("!H")
_U32 = struct.Struct("!I")

_SMALL_VARINTS = tuple(bytes((n,)) for n in range(128))


def decode_varint(buf: memoryview, offset: int) -> tuple[int, int]:
    """Decode a variable byte integer (1-4 bytes, minimal encoding)."""
    end = len(buf)
    if offset >= end:
        raise NeedMoreData
    byte = buf[offset]
    if byte < 0x80:
        return byte, offset + 1
    value = byte & 0x7F
    shift = 7
    for i in range(1, 4):
        pos = offset + i
        if pos >= end:
            raise NeedMoreData
        byte = buf[pos]
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            if byte == 0:
                raise MalformedPacket("variable byte integer is not minimally encoded")
            return value, pos + 1
        shift += 7
    raise MalformedPacket("variable byte integer longer than 4 bytes")


def encode_varint(value: int) -> bytes:
    """Encode a variable byte integer."""
    if 0 <= value < 128:
        return _SMALL_VARINTS[value]
    if value < 0 or value > VARINT_MAX:
        raise EncodeError(f"variable byte integer out of range: {value}")
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def decode_uint8(buf: memoryview, offset: int) -> tuple[int, int]:
    """Decode one byte."""
    if offset >= len(buf):
        raise NeedMoreData
    return buf[offset], offset + 1


def decode_uint16(buf: memoryview, offset: int) -> tuple[int, int]:
    """Decode a big-endian two byte integer."""
    if offset + 2 > len(buf):
        raise NeedMoreData
    return _U16.unpack_from(buf, offset)[0], offset + 2


def decode_uint32(buf: memoryview, offset: int) -> tuple[int, int]:
    """Decode a big-endian four byte integer."""
    if offset + 4 > len(buf):
        raise NeedMoreData
    return _U32.unpack_from(buf, offset)[0], offset + 4


def decode_binary(buf: memoryview, offset: int) -> tuple[bytes, int]:
    """Decode binary data: a two byte length and that many bytes."""
    length, offset = decode_uint16(buf, offset)
    end = offset + length
    if end > len(buf):
        raise NeedMoreData
    return bytes(buf[offset:end]), end


def decode_utf8(buf: memoryview, offset: int) -> tuple[str, int]:
    """Decode a UTF-8 encoded string: well-formed UTF-8 (no surrogates), no U+0000."""
    length, offset = decode_uint16(buf, offset)
    end = offset + length
    if end > len(buf):
        raise NeedMoreData
    raw = bytes(buf[offset:end])
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise MalformedPacket(f"ill-formed UTF-8 string: {exc.reason}") from None
    if "\x00" in text:
        raise MalformedPacket("UTF-8 string contains U+0000")
    return text, end


def decode_utf8_pair(buf: memoryview, offset: int) -> tuple[tuple[str, str], int]:
    """Decode a UTF-8 string pair (name, value)."""
    name, offset = decode_utf8(buf, offset)
    value, offset = decode_utf8(buf, offset)
    return (name, value), offset


def encode_uint16(value: int) -> bytes:
    """Encode a big-endian two byte integer."""
    try:
        return _U16.pack(value)
    except struct.error:
        raise EncodeError(f"two byte integer out of range: {value}") from None


def encode_uint32(value: int) -> bytes:
    """Encode a big-endian four byte integer."""
    try:
        return _U32.pack(value)
    except struct.error:
        raise EncodeError(f"four byte integer out of range: {value}") from None


def encode_binary(data: bytes | bytearray | memoryview) -> bytes:
    """Encode binary data with its two byte length prefix."""
    if len(data) > 0xFFFF:
        raise EncodeError("binary data longer than 65535 bytes")
    return _U16.pack(len(data)) + bytes(data)


def encode_utf8(text: str) -> bytes:
    """Encode a UTF-8 string with its two byte length prefix, enforcing the spec's rules."""
    if "\x00" in text:
        raise EncodeError("UTF-8 string contains U+0000")
    try:
        raw = text.encode("utf-8")
    except UnicodeEncodeError:
        raise EncodeError("string contains a lone surrogate") from None
    if len(raw) > 0xFFFF:
        raise EncodeError("UTF-8 string longer than 65535 bytes")
    return _U16.pack(len(raw)) + raw


def encode_utf8_pair(pair: tuple[str, str]) -> bytes:
    """Encode a UTF-8 string pair."""
    return encode_utf8(pair[0]) + encode_utf8(pair[1])
