"""SASL responses carried in ``connection.start-ok``: PLAIN and RabbitMQ's AMQPLAIN.

Malformed responses are 403 ACCESS_REFUSED connection errors, as RabbitMQ answers them.
"""

from __future__ import annotations

import struct

from pamqp import decode

from handlers.amqp.errors import AMQPConnectionError, ReplyCode


def parse_plain(raw: bytes) -> tuple[str, str]:
    """SASL PLAIN (RFC 4616): ``[authzid] NUL authcid NUL passwd``."""
    parts = raw.split(b"\x00")
    if len(parts) != 3:
        raise AMQPConnectionError(ReplyCode.ACCESS_REFUSED, "PLAIN: invalid response", 10, 11)
    try:
        return parts[1].decode("utf-8"), parts[2].decode("utf-8")
    except UnicodeDecodeError:
        raise AMQPConnectionError(
            ReplyCode.ACCESS_REFUSED, "PLAIN: credentials are not UTF-8", 10, 11
        ) from None


def parse_amqplain(raw: bytes) -> tuple[str, str]:
    """AMQPLAIN: a field table *without* its length prefix holding LOGIN and PASSWORD."""
    try:
        _, table = decode.field_table(struct.pack(">I", len(raw)) + raw)
    except Exception:  # pamqp raises arbitrary types on hostile input
        table = {}
    login, password = table.get("LOGIN"), table.get("PASSWORD")
    if isinstance(login, bytes):
        login = login.decode("utf-8", "replace")
    if isinstance(password, bytes):
        password = password.decode("utf-8", "replace")
    if not isinstance(login, str) or not isinstance(password, str):
        raise AMQPConnectionError(
            ReplyCode.ACCESS_REFUSED, "AMQPLAIN: LOGIN and PASSWORD required", 10, 11
        )
    return login, password
