"""Topic name and topic filter syntax (spec section 4.7)."""

from __future__ import annotations

from .errors import MalformedPacket, ProtocolError

SHARED_PREFIX = "$share/"


def validate_topic_name(topic: str) -> None:
    """Reject an empty topic name or one containing ``+`` or ``#``."""
    if not topic:
        raise MalformedPacket("empty topic name")
    if "+" in topic or "#" in topic:
        raise MalformedPacket(f"topic name contains a wildcard: {topic!r}")


def _validate_filter_levels(topic_filter: str) -> None:
    if not topic_filter:
        raise MalformedPacket("empty topic filter")
    if "+" not in topic_filter and "#" not in topic_filter:
        return
    levels = topic_filter.split("/")
    last = len(levels) - 1
    for i, level in enumerate(levels):
        if level in ("+", ""):
            continue
        if level == "#":
            if i != last:
                raise MalformedPacket(f"'#' is not the last level: {topic_filter!r}")
        elif "+" in level or "#" in level:
            raise MalformedPacket(f"wildcard does not fill a level: {topic_filter!r}")


def is_shared(topic_filter: str) -> bool:
    """True for an MQTT 5 shared subscription filter (``$share/<name>/<filter>``)."""
    return topic_filter.startswith(SHARED_PREFIX)


def validate_topic_filter(topic_filter: str, *, shared_allowed: bool = True) -> None:
    """Reject a malformed topic filter; with ``shared_allowed`` also check ``$share/`` syntax."""
    if shared_allowed and is_shared(topic_filter):
        name, sep, rest = topic_filter[len(SHARED_PREFIX):].partition("/")
        if not name or "+" in name or "#" in name:
            raise ProtocolError(f"invalid share name in {topic_filter!r}")
        if not sep or not rest:
            raise ProtocolError(f"shared subscription without a filter: {topic_filter!r}")
        _validate_filter_levels(rest)
        return
    _validate_filter_levels(topic_filter)
