"""MQTT topic names and filters onto core topics and record keys (the default rule).

Default rule: the first level of an MQTT topic name is the core topic (in the namespace the
MQTT listener is configured for); the whole MQTT topic name, UTF-8 encoded, is the record key.
``orders/eu/1`` is stored in core topic ``orders`` with key ``b"orders/eu/1"``.

Escaping.  A core topic name is 1-249 characters of ``[A-Za-z0-9._=-]``, never ``.`` or ``..``,
never ending in ``-partition-<N>`` (see :mod:`core.names`).  A first level that breaks these
rules is escaped reversibly with ``=`` as the escape character (Kafka topic names can never
contain ``=``, so Kafka-named topics are their own MQTT prefix):

* each UTF-8 byte of a character outside ``[A-Za-z0-9._-]`` (``=`` included) becomes ``=xx``
  (two lowercase hex digits): ``a b`` → ``a=20b``, ``x=y`` → ``x=3dy``, ``été`` → ``=c3=a9t=c3=a9``;
* an empty first level (topic ``/a``) becomes ``=``;
* ``.`` and ``..`` become ``=2e`` and ``=2e=2e``;
* a trailing ``-partition-<N>`` gets its first ``-`` escaped: ``x-partition-3`` →
  ``x=2dpartition-3``.

Only canonical escapes are accepted back: a core topic ``T`` has an MQTT prefix exactly when
``escape(unescape(T)) == T``; other core topics (``a=b``, ``=ZZ``) are not reachable through
MQTT by the default rule.  A first level whose escape is longer than 249 characters cannot be
mapped (:class:`TopicNotMappable`).

``$`` topics (``$SYS/...``) are never stored in the log; filters whose first level starts with
``$`` span no core topic.  A filter whose first level is ``+`` or ``#`` spans every core topic of
the namespace; any other filter spans exactly the core topic of its first level (a session must
still match each record's MQTT topic against the filter with :func:`topic_matches`).
"""

from __future__ import annotations

import base64
import re
from dataclasses import dataclass
from functools import lru_cache

from core.headers import MQTT_TOPIC, first_header

from .topics import SHARED_PREFIX

MAX_CORE_TOPIC_LEN = 249
#: Longest MQTT topic name (a UTF-8 string with a two byte length).
MAX_MQTT_TOPIC_BYTES = 0xFFFF
ESCAPE = "="

_PLAIN_RE = re.compile(r"[A-Za-z0-9._-]+")
_UNESCAPED_CHAR = re.compile(r"[A-Za-z0-9._-]")
_PARTITION_RE = re.compile(r"-(partition-(?:0|[1-9][0-9]{0,8}))$")
_ESCAPE_RE = re.compile(r"=([0-9a-f]{2})")


class TopicNotMappable(ValueError):
    """An MQTT topic (or core topic) has no counterpart under the default rule."""


@dataclass(frozen=True, slots=True)
class Concrete:
    """A filter that spans exactly one core topic."""

    name: str


@dataclass(frozen=True, slots=True)
class AllTopics:
    """A filter that spans every core topic of the MQTT namespace (first level ``+``/``#``)."""


@dataclass(frozen=True, slots=True)
class NoTopics:
    """A filter that spans no core topic (``$SYS/#`` and other ``$`` filters)."""


CoreTopics = Concrete | AllTopics | NoTopics

ALL_TOPICS = AllTopics()
NO_TOPICS = NoTopics()


def _is_valid_core_name(name: str) -> bool:
    return (
        0 < len(name) <= MAX_CORE_TOPIC_LEN
        and name not in (".", "..")
        and _PARTITION_RE.search(name) is None
        and all(c == ESCAPE or _UNESCAPED_CHAR.match(c) for c in name)
    )


@lru_cache(maxsize=4096)  # called for every message delivered and published
def escape_level(level: str) -> str:
    """The core topic name for an MQTT first level; raises :class:`TopicNotMappable`."""
    if _PLAIN_RE.fullmatch(level) and level not in (".", ".."):
        escaped = level
    elif level == "":
        escaped = ESCAPE
    elif level in (".", ".."):
        escaped = "=2e" * len(level)
    else:
        escaped = "".join(
            c if _UNESCAPED_CHAR.match(c) else "".join(f"={b:02x}" for b in c.encode("utf-8"))
            for c in level
        )
    m = _PARTITION_RE.search(escaped)
    if m is not None:
        escaped = f"{escaped[: m.start()]}=2d{m.group(1)}"
    if len(escaped) > MAX_CORE_TOPIC_LEN:
        raise TopicNotMappable(
            f"MQTT topic level {level[:40]!r} maps to a core topic name over "
            f"{MAX_CORE_TOPIC_LEN} characters"
        )
    return escaped


def unescape_level(core_topic: str) -> str:
    """The MQTT first level whose core topic is ``core_topic`` (inverse of :func:`escape_level`).

    Raises :class:`TopicNotMappable` unless ``core_topic`` is a canonical escape.
    """
    if ESCAPE not in core_topic:
        level = core_topic
    elif core_topic == ESCAPE:
        return ""
    else:
        raw = bytearray()
        pos = 0
        for m in _ESCAPE_RE.finditer(core_topic):
            raw += core_topic[pos : m.start()].encode("ascii", "replace")
            raw.append(int(m.group(1), 16))
            pos = m.end()
        raw += core_topic[pos:].encode("ascii", "replace")
        try:
            level = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise TopicNotMappable(f"core topic {core_topic!r} is not an MQTT level") from None
    try:
        canonical = escape_level(level) == core_topic
    except TopicNotMappable:
        canonical = False
    if not canonical or not _is_valid_core_name(core_topic):
        raise TopicNotMappable(f"core topic {core_topic!r} has no MQTT name under the default rule")
    return level


def mqtt_topic_to_core(name: str) -> tuple[str, bytes]:
    """``(core topic, record key)`` for a PUBLISH to MQTT topic ``name``.

    Raises :class:`TopicNotMappable` for ``$`` topics and first levels too long to map.
    """
    if name.startswith("$"):
        raise TopicNotMappable(f"$ topics are not stored in the log: {name[:60]!r}")
    first, _, _ = name.partition("/")
    return escape_level(first), name.encode("utf-8")


def _usable_topic_name(name: str) -> bool:
    return (
        bool(name)
        and "+" not in name
        and "#" not in name
        and "\x00" not in name
        and not name.startswith("$")
    )


def record_to_mqtt_topic(
    core_topic: str, key: bytes | None, headers: list[tuple[str, bytes]]
) -> str:
    """The MQTT topic name under which a record of ``core_topic`` is delivered.

    1. The first ``ps.mqtt.topic`` header, if it is a usable topic name (UTF-8, no wildcard,
       no U+0000, not a ``$`` topic) whose first level maps to ``core_topic`` (so a record copied
       to another core topic is not delivered under a name that its filter does not match).
    2. Otherwise ``<prefix>/<key>``, where ``<prefix>`` is the MQTT first level of
       ``core_topic``, or ``<prefix>`` alone when the key is ``None`` (``/`` for an empty
       prefix).  A key that is not valid
       UTF-8, or contains U+0000, ``+`` or ``#``, becomes the single level ``=<base64url>``
       (unpadded); if the result would exceed 65,535 bytes the key is left out.

    Raises :class:`TopicNotMappable` when rule 1 does not apply and ``core_topic`` has no MQTT
    prefix (see the module docstring).
    """
    raw = first_header(headers, MQTT_TOPIC) if headers else None
    if raw is not None:
        try:
            named = raw.decode("utf-8")
        except UnicodeDecodeError:
            named = ""
        if _usable_topic_name(named):
            try:
                if escape_level(named.partition("/")[0]) == core_topic:
                    return named
            except TopicNotMappable:
                pass
    prefix = unescape_level(core_topic)
    if key is None:
        return prefix or "/"  # core topic "=" is the empty first level; "" is no topic name
    try:
        level = key.decode("utf-8")
    except UnicodeDecodeError:
        level = None
    if level is None or "\x00" in level or "+" in level or "#" in level:
        level = ESCAPE + base64.urlsafe_b64encode(key).rstrip(b"=").decode("ascii")
    topic = f"{prefix}/{level}"
    if len(topic) * 4 > MAX_MQTT_TOPIC_BYTES and len(topic.encode("utf-8")) > MAX_MQTT_TOPIC_BYTES:
        return prefix or "/"
    return topic


def filter_core_topics(topic_filter: str) -> CoreTopics:
    """Which core topics an MQTT topic filter (possibly ``$share/<name>/...``) spans."""
    if topic_filter.startswith(SHARED_PREFIX):
        topic_filter = topic_filter[len(SHARED_PREFIX) :].partition("/")[2]
    first, _, _ = topic_filter.partition("/")
    if first in ("+", "#"):
        return ALL_TOPICS
    if first.startswith("$"):
        return NO_TOPICS
    try:
        return Concrete(escape_level(first))
    except TopicNotMappable:
        return NO_TOPICS


def topic_matches(topic_filter: str, name: str) -> bool:
    """MQTT topic filter matching (spec 4.7), including the ``$`` rule.

    A filter starting with ``+`` or ``#`` does not match a topic name starting with ``$``.
    ``$share/<name>/`` is stripped from a shared subscription filter first.
    """
    if topic_filter.startswith(SHARED_PREFIX):
        topic_filter = topic_filter[len(SHARED_PREFIX) :].partition("/")[2]
    if "+" not in topic_filter and "#" not in topic_filter:
        return topic_filter == name
    if name.startswith("$") and topic_filter[:1] in ("+", "#"):
        return False
    levels = name.split("/")
    for i, pattern in enumerate(topic_filter.split("/")):
        if pattern == "#":
            return True
        if i >= len(levels):
            return False
        if pattern != "+" and pattern != levels[i]:
            return False
    return len(levels) == len(topic_filter.split("/"))
