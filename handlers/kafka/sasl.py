"""The SASL state machine of one Kafka connection (sans-IO: no sockets, no trio).

Theory of operation
-------------------
A listener with SASL on (``sasl_mechanisms`` in the handler settings) gives each connection a
:class:`KafkaSaslServer`.  Until it is :attr:`~KafkaSaslServer.authenticated` only ApiVersions,
SaslHandshake and SaslAuthenticate are served (:meth:`~KafkaSaslServer.allows`); the session
closes the connection on anything else, as Kafka does.

1. ``SaslHandshake`` picks the mechanism (:meth:`~KafkaSaslServer.handshake`).  With v1 the
   tokens that follow travel in ``SaslAuthenticate`` requests; with v0 they follow as *raw*
   frames (``size:int32`` + token, no Kafka header), read with :class:`RawTokenReader`.
2. Each client token goes to :meth:`~KafkaSaslServer.receive_token`, which answers with what
   the caller must do next:

   * :class:`NeedPlainCheck` (PLAIN): check the password with ``core.users.authenticate_plain``
     and hand the :class:`~core.users.AuthResult` to :meth:`~KafkaSaslServer.plain_checked`;
   * :class:`NeedScramCredentials` (SCRAM client-first): look up the user's credentials and
     whether it may log in from this peer, and hand both to
     :meth:`~KafkaSaslServer.scram_credentials`, which returns the server-first challenge;
   * :class:`Authenticated` (PLAIN checked, or a SCRAM client-final with a valid proof): send
     its token; the connection is now authenticated.

3. Any failure raises :class:`SaslFailure`: its ``code`` is the Kafka error, ``reason`` says
   why for the log (unknown user, bad password, not from loopback, ...), and
   ``client_message`` is what the client is told (never which of those it was).  The machine
   is then :attr:`~SaslState.FAILED` and the connection must be closed.

Re-authentication (KIP-368) is not supported: SaslAuthenticate v1+ reports a session lifetime
of 0, so clients never try it, and a handshake after authentication is ``ILLEGAL_SASL_STATE``.
"""

from __future__ import annotations

import enum
import struct
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final

from core.scram import ScramCredentials, ScramError, ScramFailure, ScramMechanism, ScramServer
from core.scram import client_first_username as scram_username
from core.users import AuthOutcome, AuthResult
from handlers.kafka.apis import ApiKey
from handlers.kafka.errors import ErrorCode

__all__ = [
    "MECHANISMS",
    "PLAIN",
    "Authenticated",
    "Challenge",
    "KafkaSaslServer",
    "NeedPlainCheck",
    "NeedScramCredentials",
    "RawTokenReader",
    "SaslFailure",
    "SaslState",
    "Step",
    "frame_token",
    "parse_mechanisms",
]

PLAIN: Final = "PLAIN"
MECHANISMS: Final = (PLAIN, ScramMechanism.SHA_256.value, ScramMechanism.SHA_512.value)
"""Every mechanism the gateway can serve, in the order it advertises them."""

MAX_TOKEN_BYTES: Final = 64 * 1024
"""The largest client token accepted (real PLAIN/SCRAM tokens are a few hundred bytes)."""

_OPEN_APIS: Final = frozenset({int(ApiKey.ApiVersions), int(ApiKey.SaslHandshake),
                               int(ApiKey.SaslAuthenticate)})
_SIZE = struct.Struct(">i")


def parse_mechanisms(raw: object, where: str = "sasl_mechanisms") -> tuple[str, ...]:
    """Validate a ``sasl_mechanisms`` setting: a list of names from :data:`MECHANISMS`."""
    if not isinstance(raw, list | tuple) or not all(isinstance(m, str) for m in raw):
        raise ValueError(f"{where}: expected a list of mechanism names, got {raw!r}")
    names = [m.upper() for m in raw]
    unknown = [m for m in names if m not in MECHANISMS]
    if unknown:
        raise ValueError(f"{where}: unsupported SASL mechanism {unknown[0]!r} "
                         f"(supported: {', '.join(MECHANISMS)})")
    return tuple(dict.fromkeys(names))


class SaslState(enum.Enum):
    """Where a connection is in its SASL exchange."""

    HANDSHAKE = enum.auto()
    """Waiting for SaslHandshake."""
    AUTHENTICATE = enum.auto()
    """Mechanism chosen; waiting for the client's first token."""
    SCRAM_FINAL = enum.auto()
    """SCRAM server-first sent; waiting for the client-final token."""
    AUTHENTICATED = enum.auto()
    FAILED = enum.auto()


class SaslFailure(Exception):
    """The exchange failed: answer with ``code`` and ``client_message``, log ``reason``, close."""

    def __init__(self, code: ErrorCode, reason: str, client_message: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason
        self.client_message = client_message


@dataclass(frozen=True, slots=True)
class NeedPlainCheck:
    """Check this PLAIN login (``core.users.authenticate_plain``), then call ``plain_checked``."""

    user: str
    password: str


@dataclass(frozen=True, slots=True)
class NeedScramCredentials:
    """Look up ``user``'s credentials for ``mechanism``, then call ``scram_credentials``."""

    user: str
    mechanism: ScramMechanism


@dataclass(frozen=True, slots=True)
class Challenge:
    """Send ``token`` to the client and wait for its next token."""

    token: bytes


@dataclass(frozen=True, slots=True)
class Authenticated:
    """Send ``token``; ``user`` is now logged in."""

    user: str
    token: bytes


Step = NeedPlainCheck | NeedScramCredentials | Authenticated


def _auth_failed(mechanism: str) -> str:
    if mechanism == PLAIN:
        return "Authentication failed: Invalid username or password"
    return (f"Authentication failed during authentication due to invalid credentials with SASL "
            f"mechanism {mechanism}")


class KafkaSaslServer:
    """The server side of one connection's SASL exchange; see the module docstring."""

    def __init__(self, mechanisms: Iterable[str], *, peer_is_loopback: bool) -> None:
        self.mechanisms = tuple(mechanisms)
        if not self.mechanisms:
            raise ValueError("a SASL server needs at least one mechanism")
        self.peer_is_loopback = peer_is_loopback
        self.state = SaslState.HANDSHAKE
        self.mechanism: str | None = None
        self.raw_tokens = False
        """True after a v0 handshake: tokens arrive as raw size-prefixed frames."""
        self.user: str | None = None
        """The authenticated user (or the one trying, for log lines)."""
        self._scram: ScramServer | None = None
        self._pending_first: bytes | None = None
        self._peer_allowed = False

    @property
    def authenticated(self) -> bool:
        return self.state is SaslState.AUTHENTICATED

    def allows(self, api_key: int) -> bool:
        """Whether a request with ``api_key`` may be served now."""
        return self.authenticated or api_key in _OPEN_APIS

    def _fail(self, code: ErrorCode, reason: str, client_message: str | None = None
              ) -> SaslFailure:
        self.state = SaslState.FAILED
        self._scram = None
        return SaslFailure(code, reason, client_message or reason)

    # -- handshake -----------------------------------------------------------------------------

    def handshake(self, mechanism: str, version: int) -> None:
        """Take a SaslHandshake; raises SaslFailure (ILLEGAL_SASL_STATE, UNSUPPORTED_...)."""
        if self.state is not SaslState.HANDSHAKE:
            raise self._fail(ErrorCode.ILLEGAL_SASL_STATE,
                             f"SaslHandshake in state {self.state.name}",
                             "Unexpected SaslHandshake request")
        if mechanism not in self.mechanisms:
            raise self._fail(ErrorCode.UNSUPPORTED_SASL_MECHANISM,
                             f"unsupported SASL mechanism {mechanism[:40]!r}",
                             f"Unsupported SASL mechanism {mechanism[:40]}")
        self.mechanism = mechanism
        self.raw_tokens = version == 0
        self.state = SaslState.AUTHENTICATE

    def check_authenticate_request(self) -> None:
        """A SaslAuthenticate request is about to be served: is one expected?"""
        if self.state not in (SaslState.AUTHENTICATE, SaslState.SCRAM_FINAL) or self.raw_tokens:
            what = "after a v0 handshake" if self.raw_tokens else f"in state {self.state.name}"
            raise self._fail(ErrorCode.ILLEGAL_SASL_STATE, f"SaslAuthenticate {what}",
                             "Unexpected SaslAuthenticate request")

    # -- tokens --------------------------------------------------------------------------------

    def receive_token(self, token: bytes) -> Step:
        """The client's next token: what to do next (see the module docstring)."""
        if len(token) > MAX_TOKEN_BYTES:
            raise self._fail(ErrorCode.SASL_AUTHENTICATION_FAILED,
                             f"SASL token of {len(token)} bytes", "SASL token too large")
        if self.state is SaslState.SCRAM_FINAL:
            return self._scram_final(token)
        if self.state is not SaslState.AUTHENTICATE or self._pending_first is not None:
            raise self._fail(ErrorCode.ILLEGAL_SASL_STATE, f"SASL token in state "
                             f"{self.state.name}", "Unexpected SASL token")
        assert self.mechanism is not None
        if self.mechanism == PLAIN:
            user, password = self._parse_plain(token)
            self.user = user
            return NeedPlainCheck(user, password)
        mechanism = ScramMechanism.parse(self.mechanism)
        try:
            user = scram_username(token)
        except ScramError as exc:
            raise self._fail(ErrorCode.SASL_AUTHENTICATION_FAILED, f"{mechanism.value}: {exc}",
                             _auth_failed(mechanism.value)) from None
        self.user = user
        self._pending_first = bytes(token)
        return NeedScramCredentials(user, mechanism)

    def _parse_plain(self, token: bytes) -> tuple[str, str]:
        parts = bytes(token).split(b"\0")
        if len(parts) != 3:
            raise self._fail(ErrorCode.SASL_AUTHENTICATION_FAILED, "PLAIN: malformed token",
                             "Authentication failed: Invalid SASL/PLAIN response: expected 3 "
                             "tokens")
        try:
            authzid, user, password = (p.decode("utf-8") for p in parts)
        except UnicodeDecodeError:
            raise self._fail(ErrorCode.SASL_AUTHENTICATION_FAILED, "PLAIN: token not UTF-8",
                             _auth_failed(PLAIN)) from None
        if not user or not password:
            raise self._fail(ErrorCode.SASL_AUTHENTICATION_FAILED,
                             "PLAIN: empty user name or password",
                             "Authentication failed: username or password not specified")
        if authzid and authzid != user:
            raise self._fail(ErrorCode.SASL_AUTHENTICATION_FAILED,
                             f"PLAIN: authorization id {authzid[:40]!r} differs from user "
                             f"{user[:40]!r}",
                             "Authentication failed: Client requested an authorization id "
                             "that is different from username")
        return user, password

    def plain_checked(self, result: AuthResult) -> Authenticated:
        """The outcome of the PLAIN check asked for by :class:`NeedPlainCheck`."""
        if self.state is not SaslState.AUTHENTICATE or self.mechanism != PLAIN:
            raise self._fail(ErrorCode.ILLEGAL_SASL_STATE, "PLAIN result out of order")
        if not result.ok:
            raise self._fail(ErrorCode.SASL_AUTHENTICATION_FAILED,
                             f"PLAIN login of {result.user[:60]!r} failed: "
                             f"{result.outcome.value}", _auth_failed(PLAIN))
        self.user = result.user
        self.state = SaslState.AUTHENTICATED
        return Authenticated(result.user, b"")

    def scram_credentials(self, credentials: ScramCredentials | None, allowed_from_peer: bool
                          ) -> Challenge:
        """Credentials asked for by :class:`NeedScramCredentials` (None: no such user) and
        whether the user may log in from this peer; returns the server-first challenge."""
        first = self._pending_first
        if self.state is not SaslState.AUTHENTICATE or first is None or self.mechanism is None:
            raise self._fail(ErrorCode.ILLEGAL_SASL_STATE, "SCRAM credentials out of order")
        self._pending_first = None
        mechanism = ScramMechanism.parse(self.mechanism)
        self._scram = ScramServer(mechanism, credentials)
        self._peer_allowed = allowed_from_peer
        try:
            challenge = self._scram.first(first)
        except ScramError as exc:
            raise self._fail(ErrorCode.SASL_AUTHENTICATION_FAILED, f"{mechanism.value}: {exc}",
                             _auth_failed(mechanism.value)) from None
        self.state = SaslState.SCRAM_FINAL
        return Challenge(challenge)

    def _scram_final(self, token: bytes) -> Authenticated:
        scram = self._scram
        assert scram is not None and self.mechanism is not None
        try:
            final = scram.final(bytes(token))
        except ScramError as exc:
            reason = {ScramFailure.UNKNOWN_USER: AuthOutcome.UNKNOWN_USER.value,
                      ScramFailure.BAD_PROOF: AuthOutcome.BAD_PASSWORD.value}.get(exc.reason,
                                                                                  str(exc))
            raise self._fail(ErrorCode.SASL_AUTHENTICATION_FAILED,
                             f"{self.mechanism} login of {(self.user or '?')[:60]!r} failed: "
                             f"{reason}", _auth_failed(self.mechanism)) from None
        if not self._peer_allowed:
            raise self._fail(ErrorCode.SASL_AUTHENTICATION_FAILED,
                             f"{self.mechanism} login of {(self.user or '?')[:60]!r} failed: "
                             f"{AuthOutcome.NOT_ALLOWED_FROM_ADDRESS.value}",
                             _auth_failed(self.mechanism))
        self.state = SaslState.AUTHENTICATED
        self._scram = None
        return Authenticated(scram.username or "", final)


class RawTokenReader:
    """Reads the raw ``size:int32`` + token frames that follow a SaslHandshake v0.

    Bytes after the last token (the client's next Kafka requests) are returned by
    :meth:`leftover` so the session can hand them back to the Kafka framing.
    """

    def __init__(self, max_token_bytes: int = MAX_TOKEN_BYTES) -> None:
        self._buffer = bytearray()
        self._max = max_token_bytes

    def receive_data(self, data: bytes | bytearray | memoryview) -> None:
        """Feed bytes from the peer."""
        self._buffer += data
        if len(self._buffer) > self._max + _SIZE.size:
            self.next_token()  # raises on an oversized frame

    def next_token(self) -> bytes | None:
        """The next complete token, or None until more bytes arrive; SaslFailure when a frame
        is negative or larger than the limit."""
        if len(self._buffer) < _SIZE.size:
            return None
        (size,) = _SIZE.unpack_from(self._buffer)
        if not 0 <= size <= self._max:
            raise SaslFailure(ErrorCode.SASL_AUTHENTICATION_FAILED,
                              f"raw SASL token frame of {size} bytes",
                              "SASL token too large")
        end = _SIZE.size + size
        if len(self._buffer) < end:
            return None
        token = bytes(self._buffer[_SIZE.size:end])
        del self._buffer[:end]
        return token

    def leftover(self) -> bytes:
        """Every byte received after the last complete token (and forget them)."""
        data = bytes(self._buffer)
        self._buffer.clear()
        return data


def frame_token(token: bytes) -> bytes:
    """A raw (v0) token frame: ``size:int32`` + token."""
    return _SIZE.pack(len(token)) + token
