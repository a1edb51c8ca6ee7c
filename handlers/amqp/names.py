"""Validation of what clients send as names and tables; pamqp checks these only when *encoding*.

Decisions:

* Exchange and queue names are shortstrs, so the wire already caps them at 255 bytes; a name that
  is not valid UTF-8 fails to decode and is a 501 FRAME_ERROR (RabbitMQ: "cannot decode").
* RabbitMQ itself accepts any UTF-8 name, and real clients rely on more than the spec's
  ``^[a-zA-Z0-9-_.:]*$`` (kombu names its pidbox queues ``celery@host.celery.pidbox``).  But the
  broker must be able to *send* an accepted name back (``queue.declare-ok``, ``basic.deliver``),
  and pamqp refuses to encode names outside ``^[a-zA-Z0-9-_.:@#,/+ ]*$`` and exchange names over
  127 characters.  So the default :attr:`NamePolicy.COMPATIBLE` accepts exactly what pamqp can
  encode; :attr:`NamePolicy.STRICT` enforces the spec's domain (pattern, 127 characters).  A name
  that fails is a 406 PRECONDITION_FAILED *channel* error, RabbitMQ's code for an unacceptable
  declare argument; the connection survives.
* Declaring (non-passively) an exchange or queue whose name starts with ``amq.`` is refused
  with 403 ACCESS_REFUSED, a channel error, as RabbitMQ does.  Declaring or deleting the default
  exchange (empty name) is also 403.
* Field tables: keys must be non-empty and at most 128 bytes of UTF-8 (spec 4.2.5.5 guideline) and
  nesting is capped at :data:`MAX_TABLE_DEPTH`; violations are 502 SYNTAX_ERROR connection
  errors, which is what the spec prescribes for bad field names.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from enum import Enum

from pamqp import common, constants

from handlers.amqp.errors import AMQPChannelError, AMQPConnectionError, ReplyCode

#: The spec's exchange-name / queue-name domain pattern.
NAME_PATTERN = re.compile(r"^[a-zA-Z0-9\-_.:]*$")
#: What pamqp can encode (its own, wider pattern), used by the default policy.
ENCODABLE_PATTERN: re.Pattern[str] = constants.DOMAIN_REGEX["queue-name"]
SHORTSTR_MAX = 255
#: The spec's max-length for exchange-name (pamqp enforces it when encoding basic.deliver).
EXCHANGE_NAME_MAX = 127
TABLE_KEY_MAX = 128
MAX_TABLE_DEPTH = 16
RESERVED_PREFIX = "amq."


class NamePolicy(Enum):
    """How strictly exchange and queue names are checked."""

    COMPATIBLE = "compatible"
    STRICT = "strict"


def shortstr_fits(value: str) -> bool:
    """Whether ``value`` fits a shortstr (at most 255 UTF-8 bytes)."""
    return len(value.encode("utf-8", "surrogatepass")) <= SHORTSTR_MAX


def check_name(
    kind: str,
    name: str,
    policy: NamePolicy,
    class_id: int = 0,
    method_id: int = 0,
) -> None:
    """Validate an exchange or queue name; raises a channel error (406) when it is unusable."""
    strict = policy is NamePolicy.STRICT
    limit = EXCHANGE_NAME_MAX if kind == "exchange" or strict else SHORTSTR_MAX
    if len(name) > limit or not shortstr_fits(name):
        raise AMQPChannelError(
            ReplyCode.PRECONDITION_FAILED,
            f"{kind} name longer than {limit} characters",
            class_id,
            method_id,
        )
    pattern = NAME_PATTERN if strict else ENCODABLE_PATTERN
    if not pattern.fullmatch(name):
        raise AMQPChannelError(
            ReplyCode.PRECONDITION_FAILED,
            f"{kind} name {name[:60]!r} does not match {pattern.pattern}",
            class_id,
            method_id,
        )


def check_not_reserved(kind: str, name: str, class_id: int = 0, method_id: int = 0) -> None:
    """Refuse (403) declaring a name with the reserved ``amq.`` prefix."""
    if name.startswith(RESERVED_PREFIX):
        raise AMQPChannelError(
            ReplyCode.ACCESS_REFUSED,
            f"{kind} name {name!r} contains reserved prefix {RESERVED_PREFIX!r}",
            class_id,
            method_id,
        )


def check_table(
    table: Mapping[str, common.FieldValue] | None,
    class_id: int = 0,
    method_id: int = 0,
) -> None:
    """Validate a field table as decoded from the wire; raises a 502 connection error."""
    if table is None:
        return
    _check_table(table, 1, class_id, method_id)


def _check_table(
    table: Mapping[str, common.FieldValue], depth: int, class_id: int, method_id: int
) -> None:
    if depth > MAX_TABLE_DEPTH:
        raise AMQPConnectionError(
            ReplyCode.SYNTAX_ERROR,
            f"field table nested deeper than {MAX_TABLE_DEPTH}",
            class_id,
            method_id,
        )
    for key, value in table.items():
        # pamqp writes keys cut at 128 *bytes*: count bytes so nothing is silently truncated
        if not key or len(key.encode("utf-8", "surrogateescape")) > TABLE_KEY_MAX:
            raise AMQPConnectionError(
                ReplyCode.SYNTAX_ERROR,
                f"invalid field table key {key[:40]!r} (length {len(key)})",
                class_id,
                method_id,
            )
        _check_value(value, depth, class_id, method_id)


def _check_value(value: common.FieldValue, depth: int, class_id: int, method_id: int) -> None:
    if isinstance(value, dict):
        _check_table(value, depth + 1, class_id, method_id)
    elif isinstance(value, list):
        _check_array(value, depth + 1, class_id, method_id)


def _check_array(
    values: Iterable[common.FieldValue], depth: int, class_id: int, method_id: int
) -> None:
    if depth > MAX_TABLE_DEPTH:
        raise AMQPConnectionError(
            ReplyCode.SYNTAX_ERROR,
            f"field array nested deeper than {MAX_TABLE_DEPTH}",
            class_id,
            method_id,
        )
    for value in values:
        _check_value(value, depth, class_id, method_id)
