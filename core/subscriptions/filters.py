"""Message filters: predicates over a message's key and headers.

A subscription with a filter delivers only the messages it matches; every other
message is skipped **and acknowledged** on the subscription's cursor (so it
never counts in the backlog and is never redelivered).  AMQP binding filters
(routing key, headers exchange ``x-match``) and MQTT topic filters on the record
key are built from these.

A filter is any ``Callable[[Message], bool]``; the helpers below build the
common ones.  A filter must be pure and cheap: it runs on the dispatch path.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping

from core.records import Message

__all__ = [
    "MessageFilter",
    "all_of",
    "any_of",
    "headers_match",
    "key_in",
    "key_prefix",
    "match_all",
]

MessageFilter = Callable[[Message], bool]


def match_all(message: Message) -> bool:
    """The filter that keeps every message."""
    return True


def key_in(keys: Iterable[bytes | None]) -> MessageFilter:
    """Keep messages whose key is one of ``keys`` (``None`` matches keyless messages)."""
    wanted = frozenset(keys)

    def check(message: Message) -> bool:
        return message.key in wanted

    return check


def key_prefix(prefix: bytes) -> MessageFilter:
    """Keep messages whose key starts with ``prefix`` (keyless messages never match)."""

    def check(message: Message) -> bool:
        return message.key is not None and message.key.startswith(prefix)

    return check


def headers_match(
    required: Mapping[str, bytes | None], *, match_any: bool = False
) -> MessageFilter:
    """Keep messages whose headers carry ``required`` (``None``: the header is present).

    By default every entry must match (AMQP ``x-match=all``); with
    ``match_any`` one is enough (``x-match=any``).  An empty ``required``
    matches everything.  When a header repeats, any of its values may match.
    """
    items = tuple(required.items())

    def one(headers: list[tuple[str, bytes]], name: str, value: bytes | None) -> bool:
        return any(k == name and (value is None or v == value) for k, v in headers)

    def check(message: Message) -> bool:
        if not items:
            return True
        results = (one(message.headers, name, value) for name, value in items)
        return any(results) if match_any else all(results)

    return check


def all_of(*filters: MessageFilter) -> MessageFilter:
    """Keep messages every filter keeps."""

    def check(message: Message) -> bool:
        return all(f(message) for f in filters)

    return check


def any_of(*filters: MessageFilter) -> MessageFilter:
    """Keep messages at least one filter keeps (none given: keep nothing)."""

    def check(message: Message) -> bool:
        return any(f(message) for f in filters)

    return check
