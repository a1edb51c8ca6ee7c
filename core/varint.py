"""Zigzag varints as Kafka's v2 records use them (protobuf ``sint64`` encoding).

A value ``v`` is first zigzag-mapped (``0, -1, 1, -2 …`` to ``0, 1, 2, 3 …``)
so small negatives stay short, then written seven bits per byte, least
significant group first, with the high bit set on every byte but the last.

Hot loops in :mod:`core.records` look a varint's first byte up in
:data:`SHORT_VARINTS` (the value when the varint is that one byte, ``None``
otherwise) and call :func:`decode_varint` only for longer varints; encoders look non-negative
values below :data:`TABLE_SIZE` up in :data:`VARINT_TABLE` and call
:func:`encode_varint` for the rest.  Nothing here knows about record batches:
malformed input raises ``ValueError`` (over-long varint) or ``IndexError``
(input ends mid-varint) and the caller maps those onto its own error.
"""

from __future__ import annotations

#: Longest varint accepted: ten bytes hold 64 bits.
MAX_VARINT_BYTES = 10


def zigzag(value: int) -> int:
    """Map a signed 64-bit ``value`` onto the unsigned zigzag space."""
    return (value << 1) ^ (value >> 63)


def encode_varint(value: int) -> bytes:
    """The zigzag varint encoding of the signed 64-bit ``value``."""
    z = (value << 1) ^ (value >> 63)
    if z < 0x80:
        return bytes((z,))
    out = bytearray()
    while z >= 0x80:
        out.append((z & 0x7F) | 0x80)
        z >>= 7
    out.append(z)
    return bytes(out)


def decode_varint(buf: bytes, pos: int) -> tuple[int, int]:
    """Decode the zigzag varint at ``buf[pos]``; return ``(value, next position)``.

    Raises ``IndexError`` when ``buf`` ends inside the varint and ``ValueError``
    when it runs longer than :data:`MAX_VARINT_BYTES`.
    """
    result = 0
    shift = 0
    limit = pos + MAX_VARINT_BYTES
    while pos < limit:
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if b < 0x80:
            return (result >> 1) ^ -(result & 1), pos
        shift += 7
    raise ValueError(f"varint longer than {MAX_VARINT_BYTES} bytes")


#: Non-negative values below this have a precomputed encoding in :data:`VARINT_TABLE`.
TABLE_SIZE = 4096

#: ``VARINT_TABLE[n] == encode_varint(n)`` for ``0 <= n < TABLE_SIZE`` (lengths, offset deltas).
VARINT_TABLE: tuple[bytes, ...] = tuple(encode_varint(n) for n in range(TABLE_SIZE))

#: The encoding of -1 (a null key, value or header value).
NULL_VARINT = encode_varint(-1)

#: ``SHORT_VARINTS[b]`` is the value of the one-byte varint ``b`` (``b < 0x80``), else ``None``.
SHORT_VARINTS: tuple[int | None, ...] = tuple(
    (b >> 1) ^ -(b & 1) if b < 0x80 else None for b in range(256)
)
