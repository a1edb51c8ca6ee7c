"""The user store: records, PLAIN checks, SCRAM credentials, the default guest."""

from __future__ import annotations

import base64
import json
import pathlib

import pytest

from core.scram import ScramError, ScramFailure, ScramMechanism, ScramServer
from core.users import (
    GUEST,
    AuthOutcome,
    InvalidUserError,
    UserExistsError,
    UserInfo,
    UserStore,
    validate_user_name,
)
from storage.memory import MemoryMetadataStore
from storage.sqlite import open_sqlite_metadata

BOTH = (ScramMechanism.SHA_256, ScramMechanism.SHA_512)


@pytest.fixture
def metadata() -> MemoryMetadataStore:
    return MemoryMetadataStore()


@pytest.fixture
def users(metadata: MemoryMetadataStore) -> UserStore:
    return UserStore(metadata)


async def test_add_list_delete(users: UserStore) -> None:
    assert await users.add("bob", "pw") == UserInfo("bob", False, BOTH)
    await users.add("alice", "pw", loopback_only=True)
    assert await users.list() == [UserInfo("alice", True, BOTH), UserInfo("bob", False, BOTH)]
    assert await users.get("alice") == UserInfo("alice", True, BOTH)
    assert await users.delete("alice") is True
    assert await users.delete("alice") is False
    assert await users.get("alice") is None
    assert [u.name for u in await users.list()] == ["bob"]


async def test_add_existing_needs_replace(users: UserStore) -> None:
    await users.add("bob", "old")
    with pytest.raises(UserExistsError):
        await users.add("bob", "new")
    assert (await users.authenticate_plain("bob", "old", peer_is_loopback=True)).ok
    await users.add("bob", "new", replace=True)
    assert not (await users.authenticate_plain("bob", "old", peer_is_loopback=True)).ok
    assert (await users.authenticate_plain("bob", "new", peer_is_loopback=True)).ok


async def test_password_is_never_stored(users: UserStore, metadata: MemoryMetadataStore) -> None:
    await users.add("bob", "correct horse battery")
    stored = await metadata.get("users/bob")
    assert stored is not None
    assert b"correct horse" not in stored.value
    record = json.loads(stored.value)
    assert record["name"] == "bob"
    salts = set()
    for mechanism in BOTH:
        entry = record["scram"][mechanism.value]
        assert entry["iterations"] == 4096
        assert len(base64.b64decode(entry["stored_key"])) == mechanism.digest_size
        assert len(base64.b64decode(entry["server_key"])) == mechanism.digest_size
        salts.add(entry["salt"])
    assert len(salts) == 2  # a random salt per mechanism


@pytest.mark.parametrize(
    "name", ["", " bob", "bob ", "a\nb", "tab\there", "\x00", "x" * 257, "\ud800"]
)
async def test_invalid_user_names(users: UserStore, name: str) -> None:
    with pytest.raises(InvalidUserError):
        validate_user_name(name)
    with pytest.raises(InvalidUserError):
        await users.add(name, "pw")


async def test_valid_unusual_names(users: UserStore) -> None:
    for name in ["émile", "a,b=c", "with space", "x" * 256, "ns/user"]:
        await users.add(name, "pw")
        assert (await users.authenticate_plain(name, "pw", peer_is_loopback=False)).ok
    assert len(await users.list()) == 5


async def test_invalid_passwords(users: UserStore) -> None:
    for password in ["", "x" * 1025]:
        with pytest.raises(InvalidUserError):
            await users.add("bob", password)
    assert await users.list() == []


async def test_authenticate_plain_outcomes(users: UserStore) -> None:
    await users.add("bob", "pw")
    await users.add("local", "pw", loopback_only=True)

    async def outcome(name: str, password: str, loopback: bool) -> AuthOutcome:
        result = await users.authenticate_plain(name, password, peer_is_loopback=loopback)
        assert result.user == name
        assert result.ok is (result.outcome is AuthOutcome.OK)
        return result.outcome

    assert await outcome("bob", "pw", False) is AuthOutcome.OK
    assert await outcome("bob", "pw", True) is AuthOutcome.OK
    assert await outcome("bob", "PW", True) is AuthOutcome.BAD_PASSWORD
    assert await outcome("bob", "", True) is AuthOutcome.BAD_PASSWORD
    assert await outcome("nobody", "pw", True) is AuthOutcome.UNKNOWN_USER
    assert await outcome("", "pw", True) is AuthOutcome.UNKNOWN_USER
    assert await outcome("bad\nname" * 100, "pw", True) is AuthOutcome.UNKNOWN_USER
    assert await outcome("bob", "x" * 5000, True) is AuthOutcome.BAD_PASSWORD
    assert await outcome("nobody", "x" * 5000, True) is AuthOutcome.UNKNOWN_USER
    assert await outcome("local", "pw", True) is AuthOutcome.OK
    assert await outcome("local", "pw", False) is AuthOutcome.NOT_ALLOWED_FROM_ADDRESS
    # the address is only judged once the password is right
    assert await outcome("local", "bad", False) is AuthOutcome.BAD_PASSWORD


async def test_default_guest(metadata: MemoryMetadataStore) -> None:
    users = UserStore(metadata)  # guest_loopback_only defaults to True
    assert await users.ensure_default_guest() is True
    assert await users.list() == [UserInfo(GUEST, True, BOTH)]
    ok = await users.authenticate_plain("guest", "guest", peer_is_loopback=True)
    remote = await users.authenticate_plain("guest", "guest", peer_is_loopback=False)
    assert ok.ok and remote.outcome is AuthOutcome.NOT_ALLOWED_FROM_ADDRESS
    assert await users.ensure_default_guest() is False
    assert await users.delete(GUEST) is True
    # deleting guest sticks, even with no user left at all
    assert await users.ensure_default_guest() is False
    assert await users.list() == []


async def test_default_guest_anywhere_when_configured(metadata: MemoryMetadataStore) -> None:
    users = UserStore(metadata, guest_loopback_only=False)
    await users.ensure_default_guest()
    assert (await users.authenticate_plain("guest", "guest", peer_is_loopback=False)).ok


async def test_no_guest_when_users_exist(users: UserStore) -> None:
    await users.add("admin", "pw")
    assert await users.ensure_default_guest() is False
    assert [u.name for u in await users.list()] == ["admin"]


@pytest.mark.parametrize("mechanism", BOTH)
async def test_scram_login_with_stored_credentials(
    users: UserStore, mechanism: ScramMechanism
) -> None:
    scram = pytest.importorskip("kafka.net.sasl.scram")
    await users.add("alice", "s3cret")
    client = scram.ScramClient("alice", "s3cret", mechanism.value)
    creds = await users.scram_credentials("alice", mechanism.value)
    assert creds is not None and creds.mechanism is mechanism
    server = ScramServer(mechanism, creds)
    client.process_server_first_message(server.first(client.first_message()))
    client.process_server_final_message(server.final(client.final_message()))
    assert server.authenticated


async def test_scram_credentials_lookup(users: UserStore) -> None:
    await users.add("alice", "pw")
    assert await users.scram_credentials("nobody", ScramMechanism.SHA_256) is None
    assert await users.scram_credentials("alice", "SCRAM-SHA-1") is None
    assert await users.scram_credentials("", ScramMechanism.SHA_256) is None
    creds = await users.scram_credentials("alice", ScramMechanism.SHA_512)
    assert creds is not None and creds.iterations == 4096


async def test_scram_unknown_user_fails_like_bad_proof(users: UserStore) -> None:
    scram = pytest.importorskip("kafka.net.sasl.scram")
    client = scram.ScramClient("ghost", "pw", "SCRAM-SHA-256")
    server = ScramServer(ScramMechanism.SHA_256,
                         await users.scram_credentials("ghost", "SCRAM-SHA-256"))
    client.process_server_first_message(server.first(client.first_message()))
    with pytest.raises(ScramError) as info:
        server.final(client.final_message())
    assert info.value.reason is ScramFailure.UNKNOWN_USER
    assert info.value.server_error == b"e=invalid-proof"


async def test_users_on_sqlite_survive_reopen(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "metadata.sqlite"
    async with open_sqlite_metadata(path) as metadata:
        users = UserStore(metadata)
        assert await users.ensure_default_guest() is True
        await users.add("carol", "pw")
    async with open_sqlite_metadata(path) as metadata:
        users = UserStore(metadata)
        assert await users.ensure_default_guest() is False
        assert [u.name for u in await users.list()] == ["carol", "guest"]
        assert (await users.authenticate_plain("carol", "pw", peer_is_loopback=False)).ok


async def test_corrupt_record_cannot_log_in(
    users: UserStore, metadata: MemoryMetadataStore
) -> None:
    await metadata.put("users/broken", b"{not json")
    result = await users.authenticate_plain("broken", "pw", peer_is_loopback=True)
    assert result.outcome is AuthOutcome.UNKNOWN_USER
    assert await users.scram_credentials("broken", ScramMechanism.SHA_256) is None
