"""Per-message shortcuts for the common case: constructors and byte encoders, no I/O.

How it works
------------
Every PUBLISH and PUBACK of a busy connection goes through a handful of functions; this module
holds their cheap forms so the general codec stays readable:

* :func:`new_publish` and :func:`new_puback` build frozen dataclasses the way
  :mod:`core.records` does (with its :func:`~core.records.slot_setters`: ``object.__new__``
  and the slots' own setters, about half the cost of a frozen ``__init__``); the field lists
  are checked at import, so a change to a class fails loudly instead of building half-filled
  objects.  :func:`new_message` is :func:`core.records.new_message`, re-exported.
* :func:`puback_bytes` is a success PUBACK (the same bytes for 3.1.1 and 5.0: a reason code
  of 0 without properties may be omitted).
* :func:`plain_headers` recognises the headers an MQTT publish without MQTT 5 properties is
  stored with (topic, QoS, and the retain flag when set; see :mod:`.mapping`), and
  :func:`encode_plain_publish` writes the PUBLISH delivering such a message straight to
  bytes; :func:`plain_publish_parts` gives the same bytes in pieces (the payload among them,
  not copied), so a batch of deliveries is joined into one write with one copy per payload.
  Both agree with :func:`.mapping.message_to_publish` followed by :func:`.encoder.encode`
  for those messages (the tests check it); anything else takes that general path.
"""

from __future__ import annotations

from core import headers as h
from core.records import new_message, slot_setters

from .packets import PubAck, Publish
from .primitives import encode_varint
from .properties import EMPTY_PROPERTIES, Properties

__all__ = [
    "encode_plain_publish",
    "new_message",
    "new_puback",
    "new_publish",
    "plain_headers",
    "plain_publish_parts",
    "puback_bytes",
    "topic_field",
]


_PUBLISH_SET = slot_setters(
    Publish, ("topic", "payload", "qos", "retain", "dup", "packet_id", "properties"))
_PUBACK_SET = slot_setters(PubAck, ("packet_id", "reason_code", "properties"))


def new_publish(
    topic: str, payload: bytes | bytearray | memoryview, qos: int, retain: bool, dup: bool,
    packet_id: int | None, properties: Properties,
) -> Publish:
    """``Publish(...)`` for the decoder's hot path (all fields given, already validated)."""
    p: Publish = object.__new__(Publish)
    s_topic, s_payload, s_qos, s_retain, s_dup, s_pid, s_props = _PUBLISH_SET
    s_topic(p, topic)
    s_payload(p, payload)
    s_qos(p, qos)
    s_retain(p, retain)
    s_dup(p, dup)
    s_pid(p, packet_id)
    s_props(p, properties)
    return p


def new_puback(packet_id: int) -> PubAck:
    """``PubAck(packet_id)``: success, no properties."""
    p: PubAck = object.__new__(PubAck)
    s_pid, s_code, s_props = _PUBACK_SET
    s_pid(p, packet_id)
    s_code(p, 0)
    s_props(p, EMPTY_PROPERTIES)
    return p


_PUBACK_HEAD = b"\x40\x02"


def puback_bytes(packet_id: int) -> bytes:
    """A success PUBACK for ``packet_id`` (1..65535), valid for 3.1.1 and 5.0."""
    return _PUBACK_HEAD + packet_id.to_bytes(2, "big")


_QOS = {b"0": 0, b"1": 1, b"2": 2}


def plain_headers(headers: list[tuple[str, bytes]]) -> tuple[bytes, int, bool] | None:
    """``(topic name bytes, QoS, retain)`` when ``headers`` are exactly what a PUBLISH without
    MQTT 5 properties is stored with (``ps.mqtt.topic``, ``ps.mqtt.qos`` and, when set,
    ``ps.mqtt.retain: 1``); None for any other header list."""
    n = len(headers)
    if n == 2:
        (n_topic, topic), (n_qos, raw_qos) = headers
        retain = False
    elif n == 3:
        (n_topic, topic), (n_qos, raw_qos), (n_retain, raw_retain) = headers
        if n_retain != h.MQTT_RETAIN or raw_retain != b"1":
            return None
        retain = True
    else:
        return None
    if n_topic != h.MQTT_TOPIC or n_qos != h.MQTT_QOS:
        return None
    qos = _QOS.get(raw_qos)
    if qos is None:
        return None
    return topic, qos, retain


def topic_field(topic: str) -> bytes:
    """The topic name as a PUBLISH carries it: two length bytes, then UTF-8.

    ``topic`` is a valid topic name (from :func:`.topic_mapping.record_to_mqtt_topic`).
    """
    raw = topic.encode("utf-8")
    return len(raw).to_bytes(2, "big") + raw


def encode_plain_publish(
    topic: bytes, payload: bytes, qos: int, retain: bool, dup: bool, packet_id: int | None,
    v5: bool,
) -> bytes:
    """A PUBLISH without properties: ``topic`` from :func:`topic_field`; ``packet_id`` only
    (and required) when ``qos`` is 1 or 2."""
    return b"".join(plain_publish_parts(topic, payload, qos, retain, dup, packet_id, v5))


def plain_publish_parts(
    topic: bytes, payload: bytes, qos: int, retain: bool, dup: bool, packet_id: int | None,
    v5: bool,
) -> tuple[bytes, ...]:
    """:func:`encode_plain_publish` in pieces: their concatenation is the packet."""
    first = 0x30 | dup << 3 | qos << 1 | retain
    size = len(topic) + len(payload) + v5
    if qos:
        assert packet_id is not None
        size += 2
        if v5:
            return (_FIRST_BYTES[first], encode_varint(size), topic,
                    packet_id.to_bytes(2, "big"), b"\x00", payload)
        return (_FIRST_BYTES[first], encode_varint(size), topic, packet_id.to_bytes(2, "big"),
                payload)
    if v5:
        return _FIRST_BYTES[first], encode_varint(size), topic, b"\x00", payload
    return _FIRST_BYTES[first], encode_varint(size), topic, payload


_FIRST_BYTES = [bytes((i,)) for i in range(256)]
