"""MQTT 5 / 3.1.1 PUBLISH onto the protocol-neutral :class:`~core.records.Message` and back.

Pure functions, no I/O: the session calls :func:`publish_to_message` for every PUBLISH it
accepts (after resolving a topic alias) and :func:`message_to_publish` for every delivery.

Publish → message
    * core topic and key from :func:`~handlers.mqtt.topic_mapping.mqtt_topic_to_core`: the first
      topic level is the core topic, the full topic name (UTF-8) is the key.
    * value: the payload.  timestamp: the broker's receive time given by the session.
    * headers, in this order: ``ps.mqtt.topic`` (the topic name), ``ps.mqtt.qos`` (``0``-``2``),
      ``ps.mqtt.retain`` (``1``, only when the retain flag is set), then the MQTT 5 properties
      ``ps.content-type``, ``ps.correlation-id`` (bytes as sent), ``ps.reply-to`` (response
      topic), ``ps.expiry-ms`` (message expiry interval in ms), ``ps.mqtt.payload-format``
      (``0``/``1``), then every user property in order, repeats kept.
    * user properties named ``ps.b64:<name>`` carry a header ``<name>`` whose value is the
      property's value base64-decoded; ``ps.b64n:<b64 name>`` does the same with a base64 name.
      A property with either prefix whose base64 is not canonical (RFC 4648, padded) is taken
      verbatim.  Other properties: name as is, value as UTF-8.
    * MQTT 3.1.1 has no properties: only topic, QoS and retain are recorded.

Message → delivery
    * topic: :func:`~handlers.mqtt.topic_mapping.record_to_mqtt_topic`.
    * QoS: ``min(granted, ps.mqtt.qos)``, where a message without a (valid) ``ps.mqtt.qos`` —
      one published through Kafka or AMQP — counts as QoS 1: it is stored durably, so it is
      delivered at least once when the subscription allows.
    * retain: ``ps.mqtt.retain`` only when the subscription has *retain as published*.
    * MQTT 5 properties from the first occurrence of each gateway header when it fits: content
      type and response topic must be MQTT strings (UTF-8, no U+0000; the response topic also a
      valid topic name), correlation data at most 65,535 bytes, payload format ``0``/``1``,
      expiry a canonical integer of ms, sent as seconds rounded up (minus the time the message
      has waited since its record timestamp when ``now_ms`` is given; the session drops
      expired messages, see :func:`core.headers.is_expired`).
    * every other header — user headers, later occurrences, gateway headers that do not fit
      (``ps.amqp.*`` included) — becomes a user property, in order.  A name or value that is not
      an MQTT string (not UTF-8, or containing U+0000) is sent as ``ps.b64:<name>`` (or
      ``ps.b64n:<base64 name>`` when the name is the problem) with a base64 value; so is any
      header whose own name starts with ``ps.b64`` (so it is not mistaken for an escape).
    * what MQTT cannot carry: names or values over 65,535 bytes once encoded (dropped), and for
      MQTT 3.1.1 every property and user header.
"""

from __future__ import annotations

import base64
import binascii

from core import headers as h
from core.records import Message

from .hot_path import new_message
from .packet_types import MQTT_5
from .packets import Publish
from .properties import EMPTY_PROPERTIES, Properties
from .topic_mapping import mqtt_topic_to_core, record_to_mqtt_topic

B64_PREFIX = "ps.b64:"
B64_NAME_PREFIX = "ps.b64n:"
_B64_STEM = "ps.b64"
STRING_MAX = 0xFFFF
_EXPIRY_MAX = 0xFFFFFFFF
_DEFAULT_QOS = 1
_RETAIN = b"1"


def publish_to_message(
    publish: Publish, timestamp_ms: int, core_and_key: tuple[str, bytes] | None = None
) -> tuple[str, Message]:
    """``(core topic, message)`` for an accepted PUBLISH (topic alias already resolved).

    Raises :class:`~handlers.mqtt.topic_mapping.TopicNotMappable` for ``$`` topics and topics
    whose first level cannot be a core topic.  ``core_and_key`` is
    :func:`~handlers.mqtt.topic_mapping.mqtt_topic_to_core` of the topic when the caller has
    it already.
    """
    core_topic, key = core_and_key or mqtt_topic_to_core(publish.topic)
    headers = [(h.MQTT_TOPIC, key), (h.MQTT_QOS, h.SMALL_UINTS[publish.qos])]
    if publish.retain:
        headers.append((h.MQTT_RETAIN, _RETAIN))
    props = publish.properties
    if props is not EMPTY_PROPERTIES:
        _properties_to_headers(props, headers)
    return core_topic, new_message(key, bytes(publish.payload), headers, timestamp_ms)


def _properties_to_headers(props: Properties, out: list[tuple[str, bytes]]) -> None:
    if props.content_type is not None:
        out.append((h.CONTENT_TYPE, props.content_type.encode("utf-8")))
    if props.correlation_data is not None:
        out.append((h.CORRELATION_ID, bytes(props.correlation_data)))
    if props.response_topic is not None:
        out.append((h.REPLY_TO, props.response_topic.encode("utf-8")))
    if props.message_expiry_interval is not None:
        out.append((h.EXPIRY_MS, h.format_uint(props.message_expiry_interval * 1000)))
    if props.payload_format_indicator is not None:
        out.append((h.MQTT_PAYLOAD_FORMAT, h.SMALL_UINTS[props.payload_format_indicator]))
    for name, value in props.user_properties:
        if name.startswith(_B64_STEM):
            out.append(_unescape_user_property(name, value))
        else:
            out.append((name, value.encode("utf-8")))


def _b64decode(text: str) -> bytes | None:
    """Canonical (padded, no stray characters, re-encodes identically) base64, else None."""
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        return None
    return raw if base64.b64encode(raw).decode("ascii") == text else None


def _unescape_user_property(name: str, value: str) -> tuple[str, bytes]:
    decoded_name: str | None = None
    if name.startswith(B64_PREFIX):
        decoded_name = name[len(B64_PREFIX) :]
    elif name.startswith(B64_NAME_PREFIX):
        raw_name = _b64decode(name[len(B64_NAME_PREFIX) :])
        if raw_name is not None:
            try:
                decoded_name = raw_name.decode("utf-8", "surrogatepass")
            except UnicodeDecodeError:
                decoded_name = None
    raw_value = _b64decode(value) if decoded_name is not None else None
    if decoded_name is None or raw_value is None:
        return name, value.encode("utf-8")
    return decoded_name, raw_value


# --- message -> delivery ------------------------------------------------------------------------


def _mqtt_string(value: bytes) -> str | None:
    if len(value) > STRING_MAX:
        return None
    try:
        text = value.decode("utf-8")
    except UnicodeDecodeError:
        return None
    return None if "\x00" in text else text


def _name_is_plain(name: str) -> bool:
    if "\x00" in name or name.startswith(_B64_STEM):
        return False
    if name.isascii():
        return len(name) <= STRING_MAX
    try:
        return len(name.encode("utf-8")) <= STRING_MAX
    except UnicodeEncodeError:  # lone surrogate
        return False


def to_user_property(name: str, value: bytes) -> tuple[str, str] | None:
    """The MQTT 5 user property for one header, escaped as needed; ``None`` if too long."""
    if _name_is_plain(name):
        text = _mqtt_string(value)
        if text is not None:
            return name, text
        escaped_name = B64_PREFIX + name
        if len(escaped_name.encode("utf-8")) > STRING_MAX:
            return None
    else:
        raw_name = name.encode("utf-8", "surrogatepass")
        if (len(raw_name) + 2) // 3 * 4 + len(B64_NAME_PREFIX) > STRING_MAX:
            return None
        escaped_name = B64_NAME_PREFIX + base64.b64encode(raw_name).decode("ascii")
    if (len(value) + 2) // 3 * 4 > STRING_MAX:
        return None
    return escaped_name, base64.b64encode(value).decode("ascii")


class _Outgoing:
    """The native properties collected while scanning a message's headers once."""

    __slots__ = ("content_type", "correlation", "expiry_ms", "payload_format", "qos",
                 "reply_to", "retain")

    def __init__(self) -> None:
        self.qos: int | None = None
        self.retain = False
        self.content_type: str | None = None
        self.correlation: bytes | None = None
        self.reply_to: str | None = None
        self.expiry_ms: int | None = None
        self.payload_format: int | None = None


def _take(out: _Outgoing, name: str, value: bytes, topic: bytes) -> bool:
    """Store a gateway header's native meaning in ``out``; False if it does not fit."""
    if name == h.MQTT_TOPIC:
        return value == topic
    if name == h.MQTT_QOS:
        out.qos = h.parse_uint(value, 2)
        return out.qos is not None
    if name == h.MQTT_RETAIN:
        out.retain = value == _RETAIN
        return value in (b"0", _RETAIN)
    if name == h.CONTENT_TYPE:
        out.content_type = _mqtt_string(value)
        return out.content_type is not None
    if name == h.CORRELATION_ID:
        if len(value) > STRING_MAX:
            return False
        out.correlation = value
        return True
    if name == h.REPLY_TO:
        text = _mqtt_string(value)
        if not text or "+" in text or "#" in text:
            return False
        out.reply_to = text
        return True
    if name == h.EXPIRY_MS:
        out.expiry_ms = h.parse_uint(value)
        return out.expiry_ms is not None
    if name == h.MQTT_PAYLOAD_FORMAT:
        out.payload_format = h.parse_uint(value, 1)
        return out.payload_format is not None
    return False


_NATIVE = frozenset({
    h.MQTT_TOPIC, h.MQTT_QOS, h.MQTT_RETAIN, h.CONTENT_TYPE, h.CORRELATION_ID, h.REPLY_TO,
    h.EXPIRY_MS, h.MQTT_PAYLOAD_FORMAT,
})


def message_to_publish(
    message: Message,
    core_topic: str,
    *,
    granted_qos: int,
    protocol_level: int = MQTT_5,
    retain_as_published: bool = False,
    packet_id: int | None = None,
    subscription_identifiers: tuple[int, ...] = (),
    now_ms: int | None = None,
    topic: str | None = None,
) -> Publish:
    """The PUBLISH that delivers ``message`` (read from ``core_topic``) to a subscriber.

    ``packet_id`` is used when the resulting QoS is above 0 and ignored at QoS 0; the session
    learns that QoS beforehand from :func:`delivery_qos`.  Raises
    :class:`~handlers.mqtt.topic_mapping.TopicNotMappable` when no MQTT topic name exists for
    the record (see :func:`~handlers.mqtt.topic_mapping.record_to_mqtt_topic`).
    ``topic`` is that function's result when the caller has it already.
    """
    if topic is None:
        topic = record_to_mqtt_topic(core_topic, message.key, message.headers)
    topic_bytes = topic.encode("utf-8")
    v5 = protocol_level >= MQTT_5
    out = _Outgoing()
    user: list[tuple[str, str]] = []
    seen: set[str] = set()
    for name, value in message.headers:
        if name in _NATIVE and name not in seen:
            seen.add(name)
            if _take(out, name, value, topic_bytes):
                continue
        if v5:
            prop = to_user_property(name, value)
            if prop is not None:
                user.append(prop)
    qos = min(granted_qos, _DEFAULT_QOS if out.qos is None else out.qos)
    properties = EMPTY_PROPERTIES
    if v5:
        properties = _properties(out, user, subscription_identifiers, message, now_ms)
    payload = message.value if message.value is not None else b""
    return Publish(topic, payload, qos, retain_as_published and out.retain, False,
                   packet_id if qos else None, properties)


def _properties(
    out: _Outgoing,
    user: list[tuple[str, str]],
    subscription_identifiers: tuple[int, ...],
    message: Message,
    now_ms: int | None,
) -> Properties:
    expiry: int | None = None
    if out.expiry_ms is not None:
        remaining = out.expiry_ms
        if now_ms is not None:
            remaining -= max(0, now_ms - message.timestamp_ms)
        expiry = min(_EXPIRY_MAX, -(-max(0, remaining) // 1000))
    if (
        not user and not subscription_identifiers and expiry is None
        and out.content_type is None and out.correlation is None and out.reply_to is None
        and out.payload_format is None
    ):
        return EMPTY_PROPERTIES
    return Properties(
        payload_format_indicator=out.payload_format,
        message_expiry_interval=expiry,
        content_type=out.content_type,
        response_topic=out.reply_to,
        correlation_data=out.correlation,
        subscription_identifiers=subscription_identifiers,
        user_properties=tuple(user),
    )


def delivery_qos(message: Message, granted_qos: int) -> int:
    """The QoS :func:`message_to_publish` will use (to pick a packet id beforehand)."""
    qos = h.parse_uint(h.first_header(message.headers, h.MQTT_QOS) or b"", 2)
    return min(granted_qos, _DEFAULT_QOS if qos is None else qos)
