"""Exchanges: their types, declared attributes and the routing rule of each type.

Pure logic, no I/O.  A binding's *matcher* decides whether a message (its routing key, i.e. the
record key, and its headers as stored in the log) goes through that binding:

* ``direct``: routing key equals the binding key.
* ``fanout``: always.
* ``topic``: the binding key is a pattern of ``.``-separated words where ``*`` is exactly one
  word and ``#`` zero or more words (AMQP 0-9-1 / RabbitMQ semantics).
* ``headers``: the binding arguments (minus ``x-`` keys) are compared with the message's
  headers; ``x-match`` is ``all`` (default) or ``any``; ``all-with-x``/``any-with-x`` also
  compare ``x-`` keys.  Headers are compared as stored in the log (see
  :mod:`handlers.amqp.mapping`): strings as UTF-8, other values rendered
  (:func:`render_value`), so a Kafka producer's header matches an AMQP binding on the same text.
  A void (``None``) binding value only requires the header to be present.
"""

from __future__ import annotations

import datetime
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from enum import Enum
from functools import lru_cache

from pamqp import common

__all__ = [
    "PREDECLARED",
    "Exchange",
    "ExchangeType",
    "Matcher",
    "make_matcher",
    "render_value",
    "topic_matches",
]

#: A matcher sees the routing key and the stored headers of a message.
Matcher = Callable[[str, Sequence[tuple[str, bytes]]], bool]


class ExchangeType(Enum):
    """The four exchange types of AMQP 0-9-1."""

    DIRECT = "direct"
    FANOUT = "fanout"
    TOPIC = "topic"
    HEADERS = "headers"


@dataclass(slots=True)
class Exchange:
    """A declared exchange (the default exchange has the empty name)."""

    name: str
    type: ExchangeType
    durable: bool = True
    auto_delete: bool = False
    internal: bool = False
    arguments: common.FieldTable = field(default_factory=dict)

    @property
    def alternate_exchange(self) -> str | None:
        """The ``alternate-exchange`` argument: where unroutable messages go."""
        value = self.arguments.get("alternate-exchange")
        if isinstance(value, bytes | bytearray):
            return bytes(value).decode("utf-8", "replace")
        return value if isinstance(value, str) and value else None


#: Exchanges every vhost has from the start (all durable), besides the default exchange.
PREDECLARED: dict[str, ExchangeType] = {
    "amq.direct": ExchangeType.DIRECT,
    "amq.fanout": ExchangeType.FANOUT,
    "amq.topic": ExchangeType.TOPIC,
    "amq.headers": ExchangeType.HEADERS,
    "amq.match": ExchangeType.HEADERS,
}


def topic_matches(pattern: str, routing_key: str) -> bool:
    """Whether ``routing_key`` matches a topic-exchange binding ``pattern``."""
    return _topic_match(tuple(pattern.split(".")), tuple(routing_key.split(".")))


@lru_cache(maxsize=4096)
def _topic_match(pattern: tuple[str, ...], words: tuple[str, ...]) -> bool:
    # Iterative matcher with backtracking on the last '#', like glob matching.
    p = w = 0
    star_p = star_w = -1
    while w < len(words):
        if p < len(pattern) and pattern[p] == "#":
            star_p, star_w = p, w
            p += 1
        elif p < len(pattern) and (pattern[p] == "*" or pattern[p] == words[w]):
            p += 1
            w += 1
        elif star_p >= 0:
            star_w += 1
            w = star_w
            p = star_p + 1
        else:
            return False
    while p < len(pattern) and pattern[p] == "#":
        p += 1
    return p == len(pattern)


def render_value(value: common.FieldValue) -> bytes | None:
    """A table value as the header bytes the log holds for it (None for void)."""
    if value is None:
        return None
    if isinstance(value, bool):
        return b"true" if value else b"false"
    if isinstance(value, str):
        return value.encode("utf-8")
    if isinstance(value, bytes | bytearray):
        return bytes(value)
    if isinstance(value, int | Decimal):
        return str(value).encode("ascii")
    if isinstance(value, float):
        return repr(value).encode("ascii")
    if isinstance(value, datetime.datetime):
        return value.isoformat().encode("ascii")
    return str(value).encode("utf-8")


def make_matcher(
    type: ExchangeType, binding_key: str, arguments: common.FieldTable | None
) -> Matcher:
    """The matcher of one binding on an exchange of ``type``."""
    if type is ExchangeType.FANOUT:
        return lambda key, headers: True
    if type is ExchangeType.DIRECT:
        return lambda key, headers: key == binding_key
    if type is ExchangeType.TOPIC:
        pattern = tuple(binding_key.split("."))
        return lambda key, headers: _topic_match(pattern, tuple(key.split(".")))
    return _headers_matcher(arguments or {})


def _headers_matcher(arguments: common.FieldTable) -> Matcher:
    mode = arguments.get("x-match", "all")
    if isinstance(mode, bytes | bytearray):
        mode = bytes(mode).decode("utf-8", "replace")
    with_x = mode in ("all-with-x", "any-with-x")
    match_any = mode in ("any", "any-with-x")
    wanted = tuple(
        (name, render_value(value))
        for name, value in arguments.items()
        if name != "x-match" and (with_x or not name.startswith("x-"))
    )

    def one(headers: Sequence[tuple[str, bytes]], name: str, value: bytes | None) -> bool:
        return any(k == name and (value is None or v == value) for k, v in headers)

    def check(key: str, headers: Sequence[tuple[str, bytes]]) -> bool:
        if not wanted:
            return not match_any
        results = (one(headers, name, value) for name, value in wanted)
        return any(results) if match_any else all(results)

    return check
