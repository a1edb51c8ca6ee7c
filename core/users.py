"""Users of the gateway and their credentials, kept in the metadata store.

A user is the record ``users/<name>`` holding JSON::

    {"name": "alice", "loopback_only": false,
     "scram": {"SCRAM-SHA-256": {"salt": "<base64>", "iterations": 4096,
                                 "stored_key": "<base64>", "server_key": "<base64>"},
               "SCRAM-SHA-512": {...}}}

Passwords are never stored: each mechanism keeps SCRAM credentials (RFC 5802 /
RFC 7677) derived from the password with its own random salt.  They serve SCRAM
logins directly (see :mod:`core.scram`) and PLAIN logins too: the offered
password is derived again with the stored salt and iteration count and the
resulting StoredKey compared in constant time.  PBKDF2 is CPU-heavy, so it runs
in a worker thread, at most ``MAX_CONCURRENT_DERIVATIONS`` at a time.

The default ``guest``/``guest`` user is created once per store: the key
``meta/users-initialised`` records that it happened, so deleting ``guest`` sticks.
"""

from __future__ import annotations

import base64
import binascii
import builtins
import contextlib
import enum
import hmac
import json
import logging
import os
from dataclasses import dataclass
from typing import Any

import trio

from core.scram import (
    DEFAULT_ITERATIONS,
    ScramCredentials,
    ScramMechanism,
    derive_credentials,
    fake_credentials,
)
from storage.api import MetadataStore, VersionConflictError

log = logging.getLogger(__name__)

USERS_PREFIX = "users/"
INITIALISED_KEY = "meta/users-initialised"
GUEST = "guest"
MAX_NAME_CHARS = 256
MAX_PASSWORD_CHARS = 1024
SALT_BYTES = 16
MAX_CONCURRENT_DERIVATIONS = 2
_PLAIN_MECHANISM = ScramMechanism.SHA_256


class UserError(Exception):
    """Base class for user-store errors."""


class InvalidUserError(UserError, ValueError):
    """A user name or password that cannot be stored."""


class UserExistsError(UserError):
    """``add`` without ``replace=True`` found the user already there."""


class AuthOutcome(enum.Enum):
    """The result of a login attempt (clients only ever learn ``OK`` or a generic failure)."""

    OK = "ok"
    UNKNOWN_USER = "unknown user"
    BAD_PASSWORD = "bad password"
    NOT_ALLOWED_FROM_ADDRESS = "user may only connect from loopback"


@dataclass(frozen=True, slots=True)
class AuthResult:
    """Who tried to log in and how it went; ``outcome.value`` is meant for log lines."""

    user: str
    outcome: AuthOutcome

    @property
    def ok(self) -> bool:
        return self.outcome is AuthOutcome.OK


@dataclass(frozen=True, slots=True)
class UserInfo:
    """A user as listed (no credentials)."""

    name: str
    loopback_only: bool
    mechanisms: tuple[ScramMechanism, ...]

    def allows_peer(self, peer_is_loopback: bool) -> bool:
        """Whether this user may log in from a peer (loopback or not)."""
        return peer_is_loopback or not self.loopback_only


def validate_user_name(name: str) -> None:
    """Raise :class:`InvalidUserError` unless ``name`` is non-empty, printable and short."""
    if not isinstance(name, str) or not name:
        raise InvalidUserError("user name must be a non-empty string")
    if len(name) > MAX_NAME_CHARS:
        raise InvalidUserError(f"user name longer than {MAX_NAME_CHARS} characters")
    if not name.isprintable() or name != name.strip():
        raise InvalidUserError(
            f"user name {name!r} has unprintable characters or surrounding spaces"
        )
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidUserError(f"user name {name!r} is not valid Unicode") from None


def _valid_name(name: str) -> bool:
    try:
        validate_user_name(name)
    except InvalidUserError:
        return False
    return True


def _validate_password(password: str) -> None:
    if not isinstance(password, str) or not password:
        raise InvalidUserError("password must be a non-empty string")
    if len(password) > MAX_PASSWORD_CHARS:
        raise InvalidUserError(f"password longer than {MAX_PASSWORD_CHARS} characters")
    try:
        password.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidUserError("password is not valid Unicode") from None


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _encode_credentials(creds: ScramCredentials) -> dict[str, Any]:
    return {
        "salt": _b64(creds.salt),
        "iterations": creds.iterations,
        "stored_key": _b64(creds.stored_key),
        "server_key": _b64(creds.server_key),
    }


def _decode_credentials(mechanism: ScramMechanism, data: Any) -> ScramCredentials:
    try:
        creds = ScramCredentials(
            mechanism=mechanism,
            salt=base64.b64decode(data["salt"], validate=True),
            iterations=int(data["iterations"]),
            stored_key=base64.b64decode(data["stored_key"], validate=True),
            server_key=base64.b64decode(data["server_key"], validate=True),
        )
    except (KeyError, TypeError, ValueError, binascii.Error) as exc:
        raise UserError(f"corrupt {mechanism.value} credentials: {exc}") from None
    if creds.iterations < 1 or len(creds.stored_key) != mechanism.digest_size:
        raise UserError(f"corrupt {mechanism.value} credentials")
    return creds


@dataclass(frozen=True, slots=True)
class _Record:
    name: str
    loopback_only: bool
    credentials: dict[ScramMechanism, ScramCredentials]

    def to_json(self) -> bytes:
        return json.dumps(
            {
                "name": self.name,
                "loopback_only": self.loopback_only,
                "scram": {m.value: _encode_credentials(c) for m, c in self.credentials.items()},
            },
            sort_keys=True,
        ).encode("utf-8")

    @classmethod
    def from_json(cls, data: bytes) -> _Record:
        try:
            obj = json.loads(data)
            creds = {}
            for mech_name, entry in obj.get("scram", {}).items():
                try:
                    mechanism = ScramMechanism(mech_name)
                except ValueError:
                    continue  # written by a newer version; ignore
                creds[mechanism] = _decode_credentials(mechanism, entry)
            return cls(str(obj["name"]), bool(obj.get("loopback_only", False)), creds)
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise UserError(f"corrupt user record: {exc}") from None

    def info(self) -> UserInfo:
        mechanisms = tuple(m for m in ScramMechanism if m in self.credentials)
        return UserInfo(self.name, self.loopback_only, mechanisms)


class UserStore:
    """Users, their SCRAM credentials and PLAIN/SCRAM authentication."""

    def __init__(self, metadata: MetadataStore, guest_loopback_only: bool = True) -> None:
        self._metadata = metadata
        self._guest_loopback_only = guest_loopback_only
        self._limiter = trio.CapacityLimiter(MAX_CONCURRENT_DERIVATIONS)

    @staticmethod
    def _key(name: str) -> str:
        return USERS_PREFIX + name

    async def _derive(
        self, mechanism: ScramMechanism, password: str, salt: bytes, iterations: int
    ) -> ScramCredentials:
        return await trio.to_thread.run_sync(
            derive_credentials, mechanism, password, salt, iterations, limiter=self._limiter
        )

    async def _load(self, name: str) -> _Record | None:
        stored = await self._metadata.get(self._key(name))
        return None if stored is None else _Record.from_json(stored.value)

    async def _load_for_login(self, name: str) -> _Record | None:
        """Like :meth:`_load`, but an invalid name or a corrupt record is no user (logged)."""
        if not _valid_name(name):
            return None
        try:
            return await self._load(name)
        except UserError as exc:
            log.error("user %r cannot log in: %s", name, exc)
            return None

    async def ensure_default_guest(self) -> bool:
        """Create ``guest``/``guest`` if this store never had users; return whether it did.

        Runs once per store: afterwards (even if every user is deleted) nothing is created.
        """
        if await self._metadata.get(INITIALISED_KEY) is not None:
            return False
        created = False
        if not await self._metadata.list(USERS_PREFIX):
            try:
                await self.add(GUEST, GUEST, loopback_only=self._guest_loopback_only)
                created = True
            except UserExistsError:
                pass  # another process won the race
        with contextlib.suppress(VersionConflictError):
            await self._metadata.put(INITIALISED_KEY, b"1", expected_version=0)
        return created

    async def add(
        self, name: str, password: str, *, loopback_only: bool = False, replace: bool = False
    ) -> UserInfo:
        """Create a user (or, with ``replace=True``, overwrite it); return it.

        Raises :class:`InvalidUserError` for a bad name/password and
        :class:`UserExistsError` when the user exists and ``replace`` is false.
        """
        validate_user_name(name)
        _validate_password(password)
        creds = {}
        for mechanism in ScramMechanism:
            salt = os.urandom(SALT_BYTES)
            creds[mechanism] = await self._derive(mechanism, password, salt, DEFAULT_ITERATIONS)
        record = _Record(name, loopback_only, creds)
        try:
            await self._metadata.put(
                self._key(name), record.to_json(), expected_version=None if replace else 0
            )
        except VersionConflictError:
            raise UserExistsError(f"user {name!r} already exists") from None
        return record.info()

    async def delete(self, name: str) -> bool:
        """Delete a user; return whether it existed."""
        return await self._metadata.delete(self._key(name))

    async def get(self, name: str) -> UserInfo | None:
        """The user called ``name``, or None."""
        record = await self._load(name)
        return None if record is None else record.info()

    async def authenticate_plain(
        self, name: str, password: str, *, peer_is_loopback: bool
    ) -> AuthResult:
        """Check a PLAIN login.  The address restriction is checked after the password."""
        record = await self._load_for_login(name)
        if len(password) > MAX_PASSWORD_CHARS:
            outcome = AuthOutcome.UNKNOWN_USER if record is None else AuthOutcome.BAD_PASSWORD
            return AuthResult(name, outcome)
        creds = None
        if record is not None:
            creds = record.credentials.get(_PLAIN_MECHANISM) or next(
                iter(record.credentials.values()), None
            )
        if creds is None:
            # same work as a real check, so timing does not tell unknown users apart
            fake = fake_credentials(_PLAIN_MECHANISM, name)
            await self._derive(_PLAIN_MECHANISM, password, fake.salt, fake.iterations)
            return AuthResult(name, AuthOutcome.UNKNOWN_USER)
        offered = await self._derive(creds.mechanism, password, creds.salt, creds.iterations)
        if not hmac.compare_digest(offered.stored_key, creds.stored_key):
            return AuthResult(name, AuthOutcome.BAD_PASSWORD)
        assert record is not None
        if not record.info().allows_peer(peer_is_loopback):
            return AuthResult(name, AuthOutcome.NOT_ALLOWED_FROM_ADDRESS)
        return AuthResult(name, AuthOutcome.OK)

    async def scram_credentials(
        self, name: str, mechanism: ScramMechanism | str
    ) -> ScramCredentials | None:
        """The user's credentials for a SCRAM mechanism, or None (unknown user or mechanism).

        After a successful exchange the session must still check
        :meth:`UserInfo.allows_peer` (see :meth:`get`).
        """
        if isinstance(mechanism, str):
            try:
                mechanism = ScramMechanism.parse(mechanism)
            except ValueError:
                return None
        record = await self._load_for_login(name)
        return None if record is None else record.credentials.get(mechanism)

    async def list(self) -> builtins.list[UserInfo]:
        """Every user, ordered by name."""
        users = []
        for _key, stored in await self._metadata.list(USERS_PREFIX):
            users.append(_Record.from_json(stored.value).info())
        return users
