"""AMQP 0-9-1 ``basic.publish`` onto the protocol-neutral :class:`~core.records.Message` and back.

Pure functions, no I/O: the session calls :func:`publish_to_message` for every complete
:class:`~handlers.amqp.events.Publish` and :func:`message_to_amqp` for every delivery.

Publish → message
    * key: the routing key as UTF-8; an empty routing key is no key (``None``).
    * value: the body.  timestamp: the broker's receive time given by the session — *not* the
      AMQP ``timestamp`` property (one-second resolution, set by client clocks, often absent);
      that property is kept exactly in ``ps.amqp.timestamp``.
    * properties: one gateway header each (see :mod:`core.headers`), strings as UTF-8,
      ``delivery_mode``/``priority``/``timestamp`` (seconds) as ASCII decimal, ``expiration``
      verbatim as ``ps.expiry-ms``.  An empty string property is no header (pamqp treats ``""``
      as absent when writing, so it could not be delivered anyway).
    * application ``headers`` table, in table order: a string (or a non-UTF-8 long string) becomes
      a user header with its bytes; every other value becomes a user header with a readable
      rendering (``true``/``false``, decimal numbers, ISO 8601 timestamps, JSON for tables and
      arrays, empty for void) *and* goes, exactly, into one pamqp-encoded field table in
      ``ps.amqp.typed-headers``.  A byte array (``x``) that is not valid UTF-8 needs no copy.
      Entries named in a ``ps.amqp.repeated`` array are arrays of repeated headers (see below)
      and become one header per element.  Entries named ``ps.amqp.typed-headers`` or
      ``ps.amqp.repeated`` sent by a client are reserved and dropped.

Message → delivery
    * routing key: the key as UTF-8 (no key: ``""``).  A key that is not UTF-8 or is longer than
      255 bytes cannot be a routing key: the routing key is ``""`` and the key goes, as a byte
      array, into the table entry ``ps.key``.
    * the first occurrence of each property header becomes the property when it fits (a
      shortstr: valid UTF-8, 1-255 bytes; an octet: canonical 0-255; a timestamp:
      canonical seconds up to 2^32-1, above which pamqp would read it back as milliseconds).
      Everything else — user headers, later occurrences, values that do not fit, ``ps.mqtt.*`` —
      goes into the headers table under its own name: a UTF-8 value as a long string, any other
      as a byte array (pamqp cannot write a non-UTF-8 long string).
    * repeated names (AMQP tables have unique keys): the values become an array, in order, and the
      array's name is listed in the table entry ``ps.amqp.repeated``, so a republish through AMQP
      restores the repeats.
    * entries in ``ps.amqp.typed-headers`` replace the inferred value of the same (non-repeated)
      name, restoring nested tables, arrays, numbers, decimals, timestamps exactly.

What AMQP cannot carry: header names that are empty or longer than 128 UTF-8 bytes (dropped);
the order of different header names (pamqp writes table keys sorted); an empty headers table
(delivered as none).  Floating point values are subject to pamqp, which writes every float as a
32-bit ``f`` — the same bytes it would write for the original message.  Non-UTF-8 long strings
inside nested tables come back as byte arrays.
"""

from __future__ import annotations

import calendar
import contextlib
import datetime
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from pamqp import commands, common, decode, encode

from core import headers as h
from core.records import Message
from handlers.amqp.events import Publish
from handlers.amqp.frames import encode_properties

SHORTSTR_MAX = 255
TABLE_KEY_MAX = 128
_TIMESTAMP_MAX = 0xFFFFFFFF

# (pamqp attribute, header) for the shortstr properties, in header order.
_SHORTSTR_PROPERTIES: tuple[tuple[str, str], ...] = (
    ("content_type", h.CONTENT_TYPE),
    ("correlation_id", h.CORRELATION_ID),
    ("reply_to", h.REPLY_TO),
    ("expiration", h.EXPIRY_MS),
    ("content_encoding", h.AMQP_CONTENT_ENCODING),
    ("message_id", h.AMQP_MESSAGE_ID),
    ("message_type", h.AMQP_TYPE),
    ("user_id", h.AMQP_USER_ID),
    ("app_id", h.AMQP_APP_ID),
)
_OCTET_PROPERTIES: tuple[tuple[str, str], ...] = (
    ("delivery_mode", h.AMQP_DELIVERY_MODE),
    ("priority", h.AMQP_PRIORITY),
)
_RESERVED_TABLE_KEYS = frozenset({h.AMQP_TYPED_HEADERS, h.AMQP_REPEATED})


@dataclass(frozen=True, slots=True)
class AmqpDelivery:
    """What a ``basic.deliver``/``basic.get-ok`` needs from a message."""

    routing_key: str
    properties: commands.Basic.Properties
    body: bytes


# --- publish -> message -------------------------------------------------------------------------


#: raw property lists whose headers :func:`publish_to_message` keeps (bounded, then cleared)
PUBLISH_CACHE_SIZE = 512
_publish_cache: dict[bytes, tuple[tuple[str, bytes], ...]] = {}


def publish_to_message(publish: Publish, timestamp_ms: int) -> Message:
    """The message for a complete ``basic.publish``, stamped with the broker's ``timestamp_ms``.

    The headers depend on the properties alone, so when the event carries the raw property
    bytes they are computed once per distinct property list (a bounded cache).
    """
    raw = publish.raw_properties
    if not raw:
        return properties_to_message(
            publish.method.routing_key, publish.properties, publish.body, timestamp_ms
        )
    found = _publish_cache.get(raw)
    if found is None:
        found = tuple(properties_to_message("", publish.properties, b"", 0).headers)
        if len(_publish_cache) >= PUBLISH_CACHE_SIZE:
            _publish_cache.clear()
        _publish_cache[raw] = found
    routing_key = publish.method.routing_key
    key = routing_key.encode("utf-8") if routing_key else None
    return Message(key, publish.body, list(found), timestamp_ms)


def properties_to_message(
    routing_key: str,
    properties: commands.Basic.Properties,
    body: bytes,
    timestamp_ms: int,
) -> Message:
    """The message for a routing key, content properties and body (see the module docstring)."""
    key = routing_key.encode("utf-8") if routing_key else None
    if _no_properties(properties):
        return Message(key, body, [], timestamp_ms)
    headers: list[tuple[str, bytes]] = []
    for attr, name in _SHORTSTR_PROPERTIES:
        text = getattr(properties, attr)
        if text:  # pamqp writes "" as absent, so "" is no header either
            headers.append((name, text.encode("utf-8")))
    for attr, name in _OCTET_PROPERTIES:
        number = getattr(properties, attr)
        if number is not None:
            headers.append((name, h.format_uint(number)))
    if properties.timestamp is not None:
        seconds = _epoch_seconds(properties.timestamp)
        if seconds >= 0:  # the wire type is unsigned: only a hand-made datetime can be negative
            headers.append((h.AMQP_TIMESTAMP, h.format_uint(seconds)))
    if properties.cluster_id:
        headers.append((h.AMQP_CLUSTER_ID, properties.cluster_id.encode("utf-8")))
    if properties.headers:
        _table_to_headers(properties.headers, headers)
    return Message(key, body, headers, timestamp_ms)


def _no_properties(p: commands.Basic.Properties) -> bool:
    """Whether no property would become a header (the common bare publish), cheaply."""
    return (
        not p.content_type
        and not p.headers
        and p.delivery_mode is None
        and p.priority is None
        and p.timestamp is None
        and not p.correlation_id
        and not p.reply_to
        and not p.expiration
        and not p.message_id
        and not p.content_encoding
        and not p.message_type
        and not p.user_id
        and not p.app_id
        and not p.cluster_id
    )


def _epoch_seconds(value: datetime.datetime | time.struct_time) -> int:
    if isinstance(value, time.struct_time):
        return calendar.timegm(value)
    if value.tzinfo is None:
        value = value.replace(tzinfo=datetime.UTC)
    return int(value.timestamp())


def _table_to_headers(table: common.FieldTable, out: list[tuple[str, bytes]]) -> None:
    marker = table.get(h.AMQP_REPEATED)
    repeated: frozenset[object] = frozenset()
    if isinstance(marker, list) and all(isinstance(item, str) for item in marker):
        repeated = frozenset(marker)
    typed: common.FieldTable = {}
    for name, value in table.items():
        if name in _RESERVED_TABLE_KEYS:
            continue
        if isinstance(value, str):
            out.append((name, value.encode("utf-8")))
        elif isinstance(value, bytes):
            out.append((name, value))
        elif name in repeated and _is_repeat_array(value):
            out.extend((name, _plain_bytes(item)) for item in value)  # type: ignore[union-attr]
        else:
            out.append((name, _render(value)))
            if not (isinstance(value, bytearray) and not _is_utf8(value)):
                typed[name] = _encodable(value)
    # A value pamqp cannot write never came off the wire; without a copy it stays text.
    if typed:
        with contextlib.suppress(TypeError, ValueError):
            out.append((h.AMQP_TYPED_HEADERS, encode.field_table(typed)))


def _is_repeat_array(value: common.FieldValue) -> bool:
    """Whether ``value`` has exactly the shape the gateway gives repeated headers."""
    return (
        isinstance(value, list)
        and len(value) >= 2
        and all(
            isinstance(item, str) or (isinstance(item, bytearray) and not _is_utf8(item))
            for item in value
        )
    )


def _plain_bytes(item: common.FieldValue) -> bytes:
    return item.encode("utf-8") if isinstance(item, str) else bytes(item)  # type: ignore[arg-type]


def _is_utf8(value: bytes | bytearray) -> bool:
    try:
        value.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def _encodable(value: common.FieldValue) -> common.FieldValue:
    """``value`` with every ``bytes`` (a non-UTF-8 long string) made a byte array for pamqp."""
    if isinstance(value, bytes):
        return bytearray(value)
    if isinstance(value, dict):
        return {k: _encodable(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_encodable(v) for v in value]
    return value


def _render(value: common.FieldValue) -> bytes:
    """A readable rendering of a typed table value."""
    if isinstance(value, bool):
        return b"true" if value else b"false"
    if isinstance(value, bytes | bytearray):
        return bytes(value)
    if value is None:
        return b""
    if isinstance(value, dict | list):
        return json.dumps(_jsonable(value), ensure_ascii=False, separators=(",", ":")).encode()
    if isinstance(value, datetime.datetime):
        return value.isoformat().encode("ascii")
    return str(value).encode("ascii")  # int, float, Decimal


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_jsonable(v) for v in value]
    if isinstance(value, bytes | bytearray):
        return bytes(value).decode("utf-8", "backslashreplace")
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, datetime.datetime):
        return value.isoformat()
    if isinstance(value, time.struct_time):
        return time.strftime("%Y-%m-%dT%H:%M:%S+00:00", value)
    return value


# --- message -> delivery ------------------------------------------------------------------------


def _set_shortstr(attr: str) -> Callable[[commands.Basic.Properties, bytes], bool]:
    def setter(props: commands.Basic.Properties, value: bytes) -> bool:
        if not value or len(value) > SHORTSTR_MAX:  # pamqp would not write "" at all
            return False
        try:
            setattr(props, attr, value.decode("utf-8"))
        except UnicodeDecodeError:
            return False
        return True

    return setter


def _set_octet(attr: str) -> Callable[[commands.Basic.Properties, bytes], bool]:
    def setter(props: commands.Basic.Properties, value: bytes) -> bool:
        number = h.parse_uint(value, 255)
        if number is None:
            return False
        setattr(props, attr, number)
        return True

    return setter


def _set_timestamp(props: commands.Basic.Properties, value: bytes) -> bool:
    seconds = h.parse_uint(value, _TIMESTAMP_MAX)
    if seconds is None:
        return False
    props.timestamp = datetime.datetime.fromtimestamp(seconds, datetime.UTC)
    return True


_SETTERS: dict[str, Callable[[commands.Basic.Properties, bytes], bool]] = {
    **{name: _set_shortstr(attr) for attr, name in _SHORTSTR_PROPERTIES},
    **{name: _set_octet(attr) for attr, name in _OCTET_PROPERTIES},
    h.AMQP_CLUSTER_ID: _set_shortstr("cluster_id"),
    h.AMQP_TIMESTAMP: _set_timestamp,
}


def message_to_amqp(message: Message) -> AmqpDelivery:
    """Routing key, content properties and body for delivering ``message`` to an AMQP client."""
    key = message.key
    if not message.headers and (key is None or (len(key) <= SHORTSTR_MAX and _is_utf8(key))):
        # the cheap path: no headers, so no properties and no table
        return AmqpDelivery(
            key.decode("utf-8") if key else "",
            commands.Basic.Properties(),
            message.value if message.value is not None else b"",
        )
    props = commands.Basic.Properties()
    table: common.FieldTable = {}
    repeated: list[str] = []
    typed_blob: bytes | None = None
    seen: set[str] = set()
    for name, value in message.headers:
        if name.startswith(h.PREFIX):
            if name == h.AMQP_TYPED_HEADERS:
                if typed_blob is None:
                    typed_blob = value
                continue
            if name == h.AMQP_REPEATED:
                continue
            if name not in seen:
                seen.add(name)
                setter = _SETTERS.get(name)
                if setter is not None and setter(props, value):
                    continue
        if not name or (len(name) > TABLE_KEY_MAX // 4 and len(name.encode()) > TABLE_KEY_MAX):
            continue
        item: common.FieldValue = value.decode("utf-8") if _is_utf8(value) else bytearray(value)
        if name not in table:
            table[name] = item
        elif isinstance(existing := table[name], list):
            existing.append(item)
        else:
            table[name] = [existing, item]
            repeated.append(name)
    if typed_blob is not None and table:
        _restore_typed(typed_blob, table, repeated)
    routing_key = ""
    key = message.key
    if key is not None:
        if len(key) <= SHORTSTR_MAX and _is_utf8(key):
            routing_key = key.decode("utf-8")
        else:
            table[h.KEY] = bytearray(key)
    if repeated:
        table[h.AMQP_REPEATED] = list[common.FieldValue](repeated)
    if table:
        props.headers = table
    body = message.value if message.value is not None else b""
    return AmqpDelivery(routing_key, props, body)


#: (key, headers) -> (routing key, encoded properties) entries kept by :func:`delivery_fields`
DELIVERY_CACHE_SIZE = 512
_DELIVERY_CACHE_HEADERS = 4
_delivery_cache: dict[tuple[bytes | None, tuple[tuple[str, bytes], ...]], tuple[str, bytes]] = {}


def delivery_fields(message: Message) -> tuple[str, bytes, bytes]:
    """Routing key, encoded content properties (flags and list) and body for a delivery.

    The same as :func:`message_to_amqp` followed by
    :func:`~handlers.amqp.frames.encode_properties`, but messages with few headers share the
    result through a bounded cache keyed by their key and headers: a stream of messages from
    one publisher usually repeats the same few properties (delivery mode, content type).
    """
    headers = message.headers
    body = message.value if message.value is not None else b""
    if len(headers) > _DELIVERY_CACHE_HEADERS:
        out = message_to_amqp(message)
        return out.routing_key, encode_properties(out.properties), body
    cache_key = (message.key, tuple(headers))
    found = _delivery_cache.get(cache_key)
    if found is None:
        out = message_to_amqp(message)
        found = (out.routing_key, encode_properties(out.properties))
        if len(_delivery_cache) >= DELIVERY_CACHE_SIZE:
            _delivery_cache.clear()
        _delivery_cache[cache_key] = found
    return found[0], found[1], body


def _restore_typed(blob: bytes, table: common.FieldTable, repeated: list[str]) -> None:
    """Replace inferred values by the exact typed ones; a damaged blob is ignored."""
    try:
        consumed, typed = decode.field_table(blob)
        if consumed != len(blob):
            return
        typed = {k: _encodable(v) for k, v in typed.items() if k in table and k not in repeated}
        encode.field_table(typed)  # everything must be writable again
    except Exception:  # pamqp raises arbitrary types on hostile bytes (see frames.py)
        return
    table.update(typed)
