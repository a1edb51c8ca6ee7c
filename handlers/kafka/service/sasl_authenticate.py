"""SaslAuthenticate (v0-v2): one SASL token each way, after a SaslHandshake v1.

:func:`authenticate` serves the request for the session (which owns the connection's
:class:`~handlers.kafka.sasl.KafkaSaslServer`); :func:`exchange_token` runs one client token
through the state machine, doing the user-store look-ups it asks for, and is also used for the
raw tokens that follow a v0 handshake.  A failure answers ``SASL_AUTHENTICATION_FAILED`` (or
``ILLEGAL_SASL_STATE``) with a message, and the session closes the connection after it.
``session_lifetime_ms`` (v1+) is 0: no re-authentication.

:func:`handle` (the ``SERVICES`` entry) serves listeners without SASL:
``ILLEGAL_SASL_STATE``, as Kafka answers on a PLAINTEXT listener.
"""

from __future__ import annotations

from handlers.kafka import registry
from handlers.kafka.apis import ApiKey
from handlers.kafka.codec import KafkaRequest
from handlers.kafka.errors import ErrorCode
from handlers.kafka.sasl import (
    Challenge,
    KafkaSaslServer,
    NeedPlainCheck,
    NeedScramCredentials,
    SaslFailure,
)
from handlers.kafka.service.context import Reply, ServiceContext

__all__ = ["authenticate", "exchange_token", "handle"]


async def handle(ctx: ServiceContext, request: KafkaRequest) -> Reply:
    """SaslAuthenticate on a listener without SASL: ``ILLEGAL_SASL_STATE``."""
    cls = registry.response_class(ApiKey.SaslAuthenticate, request.api_version)
    return cls(error_code=int(ErrorCode.ILLEGAL_SASL_STATE),
               error_message="SASL is not enabled on this listener", auth_bytes=b"",
               session_lifetime_ms=0)


async def exchange_token(ctx: ServiceContext, sasl: KafkaSaslServer, token: bytes) -> bytes:
    """Run one client token through ``sasl``; return the server's token (SaslFailure)."""
    step = sasl.receive_token(token)
    users = ctx.core.users
    if isinstance(step, NeedPlainCheck):
        result = await users.authenticate_plain(step.user, step.password,
                                                peer_is_loopback=sasl.peer_is_loopback)
        return sasl.plain_checked(result).token
    if isinstance(step, NeedScramCredentials):
        credentials = await users.scram_credentials(step.user, step.mechanism)
        info = await users.get(step.user) if credentials is not None else None
        allowed = info is not None and info.allows_peer(sasl.peer_is_loopback)
        challenge: Challenge = sasl.scram_credentials(credentials, allowed)
        return challenge.token
    return step.token


async def authenticate(ctx: ServiceContext, sasl: KafkaSaslServer, request: KafkaRequest
                       ) -> tuple[Reply, SaslFailure | None]:
    """Answer a SaslAuthenticate; with a failure the session logs it and closes after it."""
    cls = registry.response_class(ApiKey.SaslAuthenticate, request.api_version)
    try:
        sasl.check_authenticate_request()
        token = await exchange_token(ctx, sasl, bytes(request.body.auth_bytes or b""))
    except SaslFailure as exc:
        return cls(error_code=int(exc.code), error_message=exc.client_message, auth_bytes=b"",
                   session_lifetime_ms=0), exc
    return cls(error_code=0, error_message=None, auth_bytes=token, session_lifetime_ms=0), None
