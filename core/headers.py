"""Reserved header names of the protocol-neutral message, and small helpers to read them.

Every record header whose name starts with ``ps.`` belongs to the gateway; all other headers are
*user headers* (Kafka headers = AMQP application ``headers`` entries = MQTT 5 user properties).
The gateway headers carry what one protocol says in a dedicated property, so that another
protocol can say it again:

* common: :data:`CONTENT_TYPE`, :data:`CORRELATION_ID`, :data:`REPLY_TO`, :data:`EXPIRY_MS`;
* core only: :data:`DELIVER_AT_MS` (delayed delivery on Shared subscriptions);
* AMQP only: ``ps.amqp.*`` (one per ``basic`` property, plus :data:`AMQP_TYPED_HEADERS`);
* MQTT only: ``ps.mqtt.*`` (:data:`MQTT_TOPIC`, :data:`MQTT_QOS`, :data:`MQTT_RETAIN`,
  :data:`MQTT_PAYLOAD_FORMAT`).

Values are bytes like every header value.  Integers are written in canonical ASCII decimal (no
sign, no leading zeros); a reader accepts only that form (:func:`parse_uint`), so a value that is
not canonical is never half-interpreted: the protocol mappings then pass it on unchanged as an
ordinary header under its own name.

Rule shared by every mapping: the *first* occurrence of a gateway header is the one a protocol
turns into its native property; every other occurrence (and a first one the target cannot
express) travels on as an ordinary header/table entry/user property under its own name.
"""

from __future__ import annotations

from collections.abc import Iterable

#: Prefix of every gateway-owned header name.
PREFIX = "ps."

CONTENT_TYPE = "ps.content-type"
CORRELATION_ID = "ps.correlation-id"
REPLY_TO = "ps.reply-to"
#: Time to live in milliseconds, counted from the record timestamp.
EXPIRY_MS = "ps.expiry-ms"
#: Deliver no earlier than this, in epoch ms (Shared subscriptions; core.subscriptions.delayed).
DELIVER_AT_MS = "ps.deliver-at-ms"

AMQP_CONTENT_ENCODING = "ps.amqp.content-encoding"
AMQP_DELIVERY_MODE = "ps.amqp.delivery-mode"
AMQP_PRIORITY = "ps.amqp.priority"
AMQP_MESSAGE_ID = "ps.amqp.message-id"
#: The AMQP ``timestamp`` property in seconds since the epoch.
AMQP_TIMESTAMP = "ps.amqp.timestamp"
AMQP_TYPE = "ps.amqp.type"
AMQP_USER_ID = "ps.amqp.user-id"
AMQP_APP_ID = "ps.amqp.app-id"
AMQP_CLUSTER_ID = "ps.amqp.cluster-id"
#: Exact copy of the AMQP application headers that are not plain strings (a field table).
AMQP_TYPED_HEADERS = "ps.amqp.typed-headers"
#: AMQP table entry (never a record header) naming the entries that hold repeated headers.
AMQP_REPEATED = "ps.amqp.repeated"
#: AMQP table entry (never a record header) with a record key that cannot be a routing key.
KEY = "ps.key"

#: The full MQTT topic name the message was published to.
MQTT_TOPIC = "ps.mqtt.topic"
MQTT_QOS = "ps.mqtt.qos"
#: ``1`` when the MQTT publish had the retain flag; absent otherwise.
MQTT_RETAIN = "ps.mqtt.retain"
MQTT_PAYLOAD_FORMAT = "ps.mqtt.payload-format"

#: The gateway headers that make the core drop or hold back a message (expiry, delay).
TIMING_HEADERS = frozenset((EXPIRY_MS, DELIVER_AT_MS))

_MAX_UINT_DIGITS = 20
#: ASCII decimal renderings of small integers, shared to keep the hot path allocation-free.
SMALL_UINTS: tuple[bytes, ...] = tuple(str(i).encode() for i in range(256))


def is_gateway_header(name: str) -> bool:
    """Whether ``name`` is reserved for the gateway (starts with ``ps.``)."""
    return name.startswith(PREFIX)


def first_header(headers: Iterable[tuple[str, bytes]], name: str) -> bytes | None:
    """The value of the first header called ``name``, or ``None`` when there is none."""
    for key, value in headers:
        if key == name:
            return value
    return None


def any_timing_header(header_lists: Iterable[list[tuple[str, bytes]]]) -> bool:
    """Whether any of these header lists holds a :data:`TIMING_HEADERS` name.

    One pass per batch: when it is False, no message of the batch can expire by
    header or wait for a delivery time, so the per-message checks are skipped.
    """
    timing = TIMING_HEADERS
    for headers in header_lists:
        for name, _ in headers:
            if name in timing:
                return True
    return False


def user_headers(headers: Iterable[tuple[str, bytes]]) -> list[tuple[str, bytes]]:
    """The user headers (every header not reserved for the gateway), in order."""
    return [(k, v) for k, v in headers if not k.startswith(PREFIX)]


def format_uint(value: int) -> bytes:
    """Canonical ASCII decimal of a non-negative integer."""
    if value < 0:
        raise ValueError(f"negative value {value}")
    if value < 256:
        return SMALL_UINTS[value]
    return str(value).encode("ascii")


def parse_uint(value: bytes, maximum: int | None = None) -> int | None:
    """Parse canonical ASCII decimal (``0`` or no leading zero); ``None`` if not canonical.

    A value above ``maximum`` is also ``None``.
    """
    if not value or len(value) > _MAX_UINT_DIGITS or not value.isdigit():
        return None
    if len(value) > 1 and value[0] == 0x30:  # leading zero
        return None
    number = int(value)
    if maximum is not None and number > maximum:
        return None
    return number


def expiry_deadline_ms(headers: Iterable[tuple[str, bytes]], timestamp_ms: int) -> int | None:
    """When a message expires (epoch ms), from its first ``ps.expiry-ms`` header.

    ``None`` when it never expires (no header, or a value that is not a canonical integer).
    """
    # The scan is inlined (no first_header call): it runs for every delivered message.
    for key, raw in headers:
        if key == EXPIRY_MS:
            ttl = parse_uint(raw)
            return None if ttl is None else timestamp_ms + ttl
    return None


def is_expired(headers: Iterable[tuple[str, bytes]], timestamp_ms: int, now_ms: int) -> bool:
    """Whether a message with these headers and record timestamp has expired at ``now_ms``."""
    for key, raw in headers:
        if key == EXPIRY_MS:
            ttl = parse_uint(raw)
            return ttl is not None and now_ms >= timestamp_ms + ttl
    return False
