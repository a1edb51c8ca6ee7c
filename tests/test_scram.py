"""The sans-IO SCRAM server against an independent client computation (RFC 5802 / 7677)."""

from __future__ import annotations

import base64
import hashlib
import hmac

import pytest

from core.scram import (
    ScramCredentials,
    ScramError,
    ScramFailure,
    ScramMechanism,
    ScramServer,
    client_first_username,
    derive_credentials,
    fake_credentials,
    parse_client_first,
)

SHA256 = ScramMechanism.SHA_256
SHA512 = ScramMechanism.SHA_512


class RfcClient:
    """The client side, written straight from RFC 5802 section 3 (independent of the server)."""

    def __init__(self, hash_name: str, user: str, password: str, nonce: str) -> None:
        self.hash_name, self.password, self.nonce = hash_name, password, nonce
        escaped = user.replace("=", "=3D").replace(",", "=2C")
        self.first_bare = f"n={escaped},r={nonce}"
        self.server_signature = b""

    def first(self) -> bytes:
        return ("n,," + self.first_bare).encode()

    def final(self, server_first: bytes, *, password: str | None = None,
              nonce: str | None = None, cbind: str = "biws") -> bytes:
        attrs = dict(part.split("=", 1) for part in server_first.decode().split(","))
        salted = hashlib.pbkdf2_hmac(self.hash_name, (password or self.password).encode(),
                                     base64.b64decode(attrs["s"]), int(attrs["i"]))
        without_proof = f"c={cbind},r={nonce or attrs['r']}"
        auth = f"{self.first_bare},{server_first.decode()},{without_proof}".encode()
        client_key = hmac.new(salted, b"Client Key", self.hash_name).digest()
        stored_key = hashlib.new(self.hash_name, client_key).digest()
        signature = hmac.new(stored_key, auth, self.hash_name).digest()
        proof = bytes(a ^ b for a, b in zip(client_key, signature, strict=True))
        server_key = hmac.new(salted, b"Server Key", self.hash_name).digest()
        self.server_signature = hmac.new(server_key, auth, self.hash_name).digest()
        return f"{without_proof},p={base64.b64encode(proof).decode()}".encode()


def creds(mechanism: ScramMechanism, password: str = "pencil") -> ScramCredentials:
    return derive_credentials(mechanism, password, b"0123456789abcdef", 4096)


@pytest.mark.parametrize("mechanism", [SHA256, SHA512])
def test_full_exchange(mechanism: ScramMechanism) -> None:
    client = RfcClient(mechanism.hash_name, "user", "pencil", "fyko+d2lbbFgONRv9qkxdawL")
    server = ScramServer(mechanism, creds(mechanism), server_nonce="3rfcNHYJY1ZVvWVs7j")
    server_first = server.first(client.first())
    assert server_first == (b"r=fyko+d2lbbFgONRv9qkxdawL3rfcNHYJY1ZVvWVs7j,"
                            b"s=MDEyMzQ1Njc4OWFiY2RlZg==,i=4096")
    assert server.username == "user" and not server.authenticated
    server_final = server.final(client.final(server_first))
    assert server_final == b"v=" + base64.b64encode(client.server_signature)
    assert server.authenticated


def test_rfc7677_sha256_vector() -> None:
    """RFC 7677 section 3: user/pencil, the exact messages of the example exchange."""
    salt = base64.b64decode("W22ZaJ0SNY7soEsUEjb6gQ==")
    server = ScramServer(SHA256, derive_credentials(SHA256, "pencil", salt, 4096),
                         server_nonce="%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0")
    first = server.first(b"n,,n=user,r=rOprNGfwEbeRWgbNEkqO")
    assert first == (b"r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,"
                     b"s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096")
    final = server.final(b"c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,"
                         b"p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=")
    assert final == b"v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4="


def test_escaped_names_and_authzid() -> None:
    info = parse_client_first(b"n,a=a=2Cb=3Dc,n=a=2Cb=3Dc,r=abc,ext=1")
    assert (info.username, info.authzid, info.nonce) == ("a,b=c", "a,b=c", "abc")
    assert client_first_username(b"y,,n=bob,r=x") == "bob"


@pytest.mark.parametrize(
    ("message", "reason"),
    [
        (b"", ScramFailure.MALFORMED),
        (b"n,,n=user", ScramFailure.MALFORMED),
        (b"x,,n=user,r=abc", ScramFailure.MALFORMED),
        (b"p=tls-unique,,n=user,r=abc", ScramFailure.CHANNEL_BINDING),
        (b"n,,m=ext,n=user,r=abc", ScramFailure.MANDATORY_EXTENSION),
        (b"n,a=other,n=user,r=abc", ScramFailure.AUTHZID),
        (b"n,,n=,r=abc", ScramFailure.MALFORMED),
        (b"n,,n=us=er,r=abc", ScramFailure.MALFORMED),
        (b"n,,n=user,r=", ScramFailure.MALFORMED),
        (b"n,,n=user,r=a b", ScramFailure.MALFORMED),
        (b"n,,r=abc,n=user", ScramFailure.MALFORMED),
        (b"n,,n=\xff,r=abc", ScramFailure.MALFORMED),
        (b"n,,n=us\x00er,r=abc", ScramFailure.MALFORMED),
        (b"n,,n=user,r=" + b"a" * 5000, ScramFailure.MALFORMED),
    ],
)
def test_bad_client_first(message: bytes, reason: ScramFailure) -> None:
    server = ScramServer(SHA256, creds(SHA256))
    with pytest.raises(ScramError) as info:
        server.first(message)
    assert info.value.reason is reason
    with pytest.raises(ScramError) as again:  # the exchange is over
        server.first(b"n,,n=user,r=abc")
    assert again.value.reason is ScramFailure.OUT_OF_ORDER


def _started(password: str = "pencil") -> tuple[ScramServer, RfcClient, bytes]:
    client = RfcClient("sha256", "user", password, "cnonce")
    server = ScramServer(SHA256, creds(SHA256), server_nonce="snonce")
    return server, client, server.first(client.first())


def test_wrong_password_is_bad_proof() -> None:
    server, client, server_first = _started()
    with pytest.raises(ScramError) as info:
        server.final(client.final(server_first, password="wrong"))
    assert info.value.reason is ScramFailure.BAD_PROOF
    assert info.value.server_error == b"e=invalid-proof"
    assert not server.authenticated


def test_nonce_mismatch() -> None:
    server, client, server_first = _started()
    with pytest.raises(ScramError) as info:
        server.final(client.final(server_first, nonce="cnonceOTHER"))
    assert info.value.reason is ScramFailure.NONCE_MISMATCH


def test_channel_binding_data_must_match_header() -> None:
    server, client, server_first = _started()
    other = base64.b64encode(b"y,,").decode()
    with pytest.raises(ScramError) as info:
        server.final(client.final(server_first, cbind=other))
    assert info.value.reason is ScramFailure.CHANNEL_BINDING


@pytest.mark.parametrize(
    "final",
    [b"", b"c=biws", b"c=biws,r=cnoncesnonce", b"c=biws,r=cnoncesnonce,p=!!!",
     b"c=biws,r=cnoncesnonce,p=" + base64.b64encode(b"short"), b"r=x,c=biws,p=AAAA",
     b"c=biws,r=cnoncesnonce,x=1"],
)
def test_bad_client_final(final: bytes) -> None:
    server, _client, _first = _started()
    with pytest.raises(ScramError) as info:
        server.final(final)
    assert info.value.reason in (ScramFailure.MALFORMED, ScramFailure.NONCE_MISMATCH)
    assert not server.authenticated


def test_final_before_first_and_after_done() -> None:
    server = ScramServer(SHA256, creds(SHA256))
    with pytest.raises(ScramError) as info:
        server.final(b"c=biws,r=x,p=AAAA")
    assert info.value.reason is ScramFailure.OUT_OF_ORDER
    server, client, server_first = _started()
    server.final(client.final(server_first))
    with pytest.raises(ScramError):
        server.final(client.final(server_first))


def test_unknown_user_gets_a_fake_but_stable_exchange() -> None:
    client = RfcClient("sha256", "ghost", "pencil", "cnonce")
    first_a = ScramServer(SHA256, None, server_nonce="s").first(client.first())
    server = ScramServer(SHA256, None, server_nonce="s")
    first_b = server.first(client.first())
    assert first_a == first_b  # same salt each time: nothing tells the user does not exist
    attrs = dict(p.split("=", 1) for p in first_b.decode().split(","))
    assert attrs["i"] == "4096" and len(base64.b64decode(attrs["s"])) == 16
    other = ScramServer(SHA256, None, server_nonce="s").first(b"n,,n=ghost2,r=cnonce")
    assert other != first_b
    with pytest.raises(ScramError) as info:
        server.final(client.final(first_b))
    assert info.value.reason is ScramFailure.UNKNOWN_USER
    assert info.value.server_error == b"e=invalid-proof"


def test_fake_credentials_never_match_a_password() -> None:
    fake = fake_credentials(SHA256, "ghost")
    assert derive_credentials(SHA256, "", fake.salt).stored_key != fake.stored_key


def test_credentials_must_fit_the_mechanism() -> None:
    with pytest.raises(ValueError):
        ScramServer(SHA512, creds(SHA256))
    assert ScramMechanism.parse("scram-sha-512") is SHA512
    with pytest.raises(ValueError):
        ScramMechanism.parse("SCRAM-SHA-1")


@pytest.mark.parametrize("mechanism", [SHA256, SHA512])
def test_kafka_python_client(mechanism: ScramMechanism) -> None:
    scram = pytest.importorskip("kafka.net.sasl.scram")
    client = scram.ScramClient("alice", "s3cret", mechanism.value)
    server = ScramServer(mechanism, derive_credentials(mechanism, "s3cret", b"salty-salt"))
    client_first = client.first_message()
    assert client_first_username(client_first) == "alice"
    client.process_server_first_message(server.first(client_first))
    client.process_server_final_message(server.final(client.final_message()))
    assert server.authenticated


def test_kafka_python_client_wrong_password() -> None:
    scram = pytest.importorskip("kafka.net.sasl.scram")
    client = scram.ScramClient("alice", "guess", "SCRAM-SHA-256")
    server = ScramServer(SHA256, derive_credentials(SHA256, "s3cret", b"salty-salt"))
    client.process_server_first_message(server.first(client.first_message()))
    with pytest.raises(ScramError) as info:
        server.final(client.final_message())
    assert info.value.reason is ScramFailure.BAD_PROOF
