"""A sans-IO SCRAM server exchange (RFC 5802, RFC 7677): SCRAM-SHA-256 and SCRAM-SHA-512.

No sockets, no trio: a protocol session feeds the client's two messages in and
sends the returned bytes back.  A typical session::

    username = client_first_username(client_first)     # ScramError if malformed
    creds = await users.scram_credentials(username, mechanism)
    server = ScramServer(mechanism, creds)
    send(server.first(client_first))
    send(server.final(client_final))                   # ScramError on a bad proof
    # then check the user's address restrictions (UserInfo.allows_peer)

Theory of operation: the server never sees a password.  It holds, per user and
mechanism, ``StoredKey = H(HMAC(SaltedPassword, "Client Key"))`` and
``ServerKey = HMAC(SaltedPassword, "Server Key")``.  The client proves it knows
``ClientKey`` by sending ``ClientKey XOR HMAC(StoredKey, AuthMessage)``; the
server recovers ``ClientKey``, hashes it and compares with ``StoredKey``; it then
proves it knows ``ServerKey`` by returning ``HMAC(ServerKey, AuthMessage)``.

For an unknown user (``credentials=None``) the server runs a fake exchange with
credentials derived from a per-process secret and the user name, so the salt is
stable across attempts and the work done is the same; the exchange then fails
with :attr:`ScramFailure.UNKNOWN_USER` after the proof check.

Not implemented: channel binding (``-PLUS`` mechanisms; a client that asks for
it is refused), SASLprep of names and passwords (both are used as UTF-8 bytes,
as Kafka does), and extensions (accepted and ignored).
"""

from __future__ import annotations

import base64
import binascii
import enum
import hashlib
import hmac
import os
import secrets
from dataclasses import dataclass

DEFAULT_ITERATIONS = 4096
MAX_MESSAGE_BYTES = 4096
"""Longest client message accepted (a real one is well under 300 bytes)."""

_FAKE_SECRET = os.urandom(32)


class ScramMechanism(enum.Enum):
    """The SCRAM mechanisms supported, by their SASL names."""

    SHA_256 = "SCRAM-SHA-256"
    SHA_512 = "SCRAM-SHA-512"

    @property
    def hash_name(self) -> str:
        """The :mod:`hashlib` name of the mechanism's hash function."""
        return "sha256" if self is ScramMechanism.SHA_256 else "sha512"

    @property
    def digest_size(self) -> int:
        return 32 if self is ScramMechanism.SHA_256 else 64

    @classmethod
    def parse(cls, name: str) -> ScramMechanism:
        """Look a mechanism up by SASL name (case-insensitive); ValueError if unknown."""
        try:
            return cls(name.upper())
        except ValueError:
            raise ValueError(f"unsupported SCRAM mechanism {name!r}") from None


@dataclass(frozen=True, slots=True)
class ScramCredentials:
    """What the server stores for one user and mechanism (never the password)."""

    mechanism: ScramMechanism
    salt: bytes
    iterations: int
    stored_key: bytes
    server_key: bytes


def _hmac(mechanism: ScramMechanism, key: bytes, msg: bytes) -> bytes:
    return hmac.digest(key, msg, mechanism.hash_name)


def derive_credentials(
    mechanism: ScramMechanism, password: str, salt: bytes, iterations: int = DEFAULT_ITERATIONS
) -> ScramCredentials:
    """Derive the stored credentials from a password (PBKDF2: CPU-heavy, run it in a thread)."""
    salted = hashlib.pbkdf2_hmac(mechanism.hash_name, password.encode("utf-8"), salt, iterations)
    client_key = _hmac(mechanism, salted, b"Client Key")
    stored_key = hashlib.new(mechanism.hash_name, client_key).digest()
    server_key = _hmac(mechanism, salted, b"Server Key")
    return ScramCredentials(mechanism, salt, iterations, stored_key, server_key)


def fake_credentials(mechanism: ScramMechanism, username: str) -> ScramCredentials:
    """Credentials for a user that does not exist: stable per name and process, matching none."""
    seed = mechanism.value.encode() + b"\0" + username.encode("utf-8", "surrogatepass")
    salt = _hmac(ScramMechanism.SHA_256, _FAKE_SECRET, b"salt\0" + seed)[:16]
    stored = _hmac(mechanism, _FAKE_SECRET, b"stored\0" + seed)
    server = _hmac(mechanism, _FAKE_SECRET, b"server\0" + seed)
    return ScramCredentials(mechanism, salt, DEFAULT_ITERATIONS, stored, server)


class ScramFailure(enum.Enum):
    """Why an exchange failed (for log lines; every client sees the same generic error)."""

    MALFORMED = "malformed message"
    CHANNEL_BINDING = "channel binding requested but not supported"
    MANDATORY_EXTENSION = "unsupported mandatory extension"
    AUTHZID = "authorization identity differs from the user name"
    NONCE_MISMATCH = "nonce does not match"
    BAD_PROOF = "invalid client proof"
    UNKNOWN_USER = "unknown user"
    OUT_OF_ORDER = "message out of order"


class ScramError(Exception):
    """The exchange failed; ``reason`` says why, ``server_error`` is RFC 5802's ``e=`` value."""

    def __init__(self, reason: ScramFailure, detail: str = "") -> None:
        super().__init__(f"{reason.value}: {detail}" if detail else reason.value)
        self.reason = reason

    @property
    def server_error(self) -> bytes:
        """A server-final-message reporting the failure without telling users apart."""
        if self.reason is ScramFailure.CHANNEL_BINDING:
            return b"e=server-does-support-channel-binding"
        if self.reason is ScramFailure.MANDATORY_EXTENSION:
            return b"e=extensions-not-supported"
        if self.reason in (ScramFailure.BAD_PROOF, ScramFailure.UNKNOWN_USER):
            return b"e=invalid-proof"
        return b"e=other-error"


def _decode(data: bytes) -> str:
    if len(data) > MAX_MESSAGE_BYTES:
        raise ScramError(ScramFailure.MALFORMED, f"message longer than {MAX_MESSAGE_BYTES} bytes")
    try:
        text = bytes(data).decode("utf-8")
    except UnicodeDecodeError:
        raise ScramError(ScramFailure.MALFORMED, "not UTF-8") from None
    if "\0" in text:
        raise ScramError(ScramFailure.MALFORMED, "NUL in message")
    return text


def _attribute(part: str, name: str) -> str:
    if not part.startswith(name + "="):
        raise ScramError(ScramFailure.MALFORMED, f"expected attribute {name!r}")
    return part[len(name) + 1 :]


def _saslname(text: str) -> str:
    """Undo RFC 5802's escaping (``=2C`` is ``,``, ``=3D`` is ``=``)."""
    out: list[str] = []
    i = 0
    while i < len(text):
        if text[i] == "=":
            code = text[i + 1 : i + 3]
            if code == "2C":
                out.append(",")
            elif code == "3D":
                out.append("=")
            else:
                raise ScramError(ScramFailure.MALFORMED, "bad escape in name")
            i += 3
        else:
            out.append(text[i])
            i += 1
    if not out:
        raise ScramError(ScramFailure.MALFORMED, "empty name")
    return "".join(out)


def _check_nonce(nonce: str) -> None:
    if not nonce or any(not 0x21 <= ord(c) <= 0x7E or c == "," for c in nonce):
        raise ScramError(ScramFailure.MALFORMED, "bad nonce")


@dataclass(frozen=True, slots=True)
class ClientFirst:
    """A parsed client-first-message."""

    gs2_header: str
    username: str
    authzid: str | None
    nonce: str
    bare: str


def parse_client_first(data: bytes) -> ClientFirst:
    """Parse a client-first-message; raise :class:`ScramError` when it is malformed or refused."""
    text = _decode(data)
    parts = text.split(",")
    if len(parts) < 4:
        raise ScramError(ScramFailure.MALFORMED, "too few attributes in client-first-message")
    cbind, authz = parts[0], parts[1]
    if cbind.startswith("p="):
        raise ScramError(ScramFailure.CHANNEL_BINDING)
    if cbind not in ("n", "y"):
        raise ScramError(ScramFailure.MALFORMED, "bad channel-binding flag")
    authzid = _saslname(_attribute(authz, "a")) if authz else None
    rest = parts[2:]
    if rest[0].startswith("m="):
        raise ScramError(ScramFailure.MANDATORY_EXTENSION)
    username = _saslname(_attribute(rest[0], "n"))
    nonce = _attribute(rest[1], "r")
    _check_nonce(nonce)
    if authzid is not None and authzid != username:
        raise ScramError(ScramFailure.AUTHZID)
    return ClientFirst(
        gs2_header=f"{cbind},{authz},",
        username=username,
        authzid=authzid,
        nonce=nonce,
        bare=",".join(rest),
    )


def client_first_username(data: bytes) -> str:
    """The user name in a client-first-message (to look its credentials up)."""
    return parse_client_first(data).username


class _State(enum.Enum):
    START = enum.auto()
    SENT_FIRST = enum.auto()
    DONE = enum.auto()
    FAILED = enum.auto()


class ScramServer:
    """One server side of a SCRAM exchange: :meth:`first`, then :meth:`final`.

    ``credentials`` is the lookup result for the user named in the client-first
    message (``None`` when the user or its credentials for this mechanism do not
    exist).  Any failure raises :class:`ScramError` and ends the exchange.
    """

    def __init__(
        self,
        mechanism: ScramMechanism,
        credentials: ScramCredentials | None,
        *,
        server_nonce: str | None = None,
    ) -> None:
        if credentials is not None and credentials.mechanism is not mechanism:
            raise ValueError("credentials are for another mechanism")
        if server_nonce is not None:
            _check_nonce(server_nonce)
        self.mechanism = mechanism
        self._credentials = credentials
        self._server_nonce = server_nonce or secrets.token_urlsafe(24)
        self._state = _State.START
        self._client_first: ClientFirst | None = None
        self._server_first = ""
        self._effective: ScramCredentials | None = None

    @property
    def username(self) -> str | None:
        """The user name from the client-first-message, once received."""
        return self._client_first.username if self._client_first else None

    @property
    def authenticated(self) -> bool:
        """True once :meth:`final` accepted the client's proof."""
        return self._state is _State.DONE

    def _fail(self, error: ScramError) -> ScramError:
        self._state = _State.FAILED
        return error

    def first(self, client_first: bytes) -> bytes:
        """Take the client-first-message, return the server-first-message."""
        if self._state is not _State.START:
            raise self._fail(ScramError(ScramFailure.OUT_OF_ORDER, "client-first again"))
        try:
            parsed = parse_client_first(client_first)
        except ScramError as exc:
            raise self._fail(exc) from None
        creds = self._credentials or fake_credentials(self.mechanism, parsed.username)
        self._client_first = parsed
        self._effective = creds
        salt = base64.b64encode(creds.salt).decode("ascii")
        self._server_first = f"r={parsed.nonce}{self._server_nonce},s={salt},i={creds.iterations}"
        self._state = _State.SENT_FIRST
        return self._server_first.encode("ascii")

    def final(self, client_final: bytes) -> bytes:
        """Take the client-final-message, return the server-final-message (``v=...``)."""
        if self._state is not _State.SENT_FIRST:
            raise self._fail(ScramError(ScramFailure.OUT_OF_ORDER, "client-final out of order"))
        try:
            return self._final(client_final)
        except ScramError as exc:
            raise self._fail(exc) from None

    def _final(self, client_final: bytes) -> bytes:
        assert self._client_first is not None and self._effective is not None
        first, creds = self._client_first, self._effective
        text = _decode(client_final)
        without_proof, sep, proof_attr = text.rpartition(",")
        if not sep:
            raise ScramError(ScramFailure.MALFORMED, "too few attributes in client-final-message")
        parts = without_proof.split(",")
        if len(parts) < 2:
            raise ScramError(ScramFailure.MALFORMED, "too few attributes in client-final-message")
        try:
            cbind = base64.b64decode(_attribute(parts[0], "c"), validate=True)
            proof = base64.b64decode(_attribute(proof_attr, "p"), validate=True)
        except binascii.Error:
            raise ScramError(ScramFailure.MALFORMED, "bad base64") from None
        if cbind != first.gs2_header.encode("utf-8"):
            raise ScramError(ScramFailure.CHANNEL_BINDING, "channel-binding data mismatch")
        if _attribute(parts[1], "r") != first.nonce + self._server_nonce:
            raise ScramError(ScramFailure.NONCE_MISMATCH)
        if len(proof) != self.mechanism.digest_size:
            raise ScramError(ScramFailure.MALFORMED, "proof has the wrong length")
        auth_message = f"{first.bare},{self._server_first},{without_proof}".encode()
        signature = _hmac(self.mechanism, creds.stored_key, auth_message)
        client_key = bytes(a ^ b for a, b in zip(proof, signature, strict=True))
        computed = hashlib.new(self.mechanism.hash_name, client_key).digest()
        proof_ok = hmac.compare_digest(computed, creds.stored_key)
        if self._credentials is None:
            raise ScramError(ScramFailure.UNKNOWN_USER, first.username)
        if not proof_ok:
            raise ScramError(ScramFailure.BAD_PROOF, first.username)
        server_signature = _hmac(self.mechanism, creds.server_key, auth_message)
        self._state = _State.DONE
        return b"v=" + base64.b64encode(server_signature)
