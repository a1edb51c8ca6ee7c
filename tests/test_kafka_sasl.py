"""Kafka SASL: the sans-IO state machine, the session's gate (in process), and real clients
(confluent-kafka, kafka-python, aiokafka, kcat) against ``polystream serve`` with SASL on.
"""

from __future__ import annotations

import asyncio
import logging
import subprocess
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import confluent_kafka as ck
import pytest
import trio
import trio.testing
from conftest import CliRunner, ServerFactory, ServerProcess
from kafka.net.sasl.scram import ScramClient
from test_kafka_service import WireClient, decode_response, make_request, metadata_body
from tools import require_tool

from core.api import Core, open_core
from core.config import CoreSettings
from core.scram import ScramMechanism
from core.users import AuthOutcome, AuthResult
from handlers.kafka import KafkaSettings, registry
from handlers.kafka.apis import ApiKey
from handlers.kafka.errors import ErrorCode
from handlers.kafka.framing import frame
from handlers.kafka.sasl import (
    MECHANISMS,
    Authenticated,
    KafkaSaslServer,
    NeedPlainCheck,
    NeedScramCredentials,
    RawTokenReader,
    SaslFailure,
    SaslState,
    parse_mechanisms,
)
from handlers.kafka.service import ServiceContext
from handlers.kafka.session import KafkaSession
from storage.memory import open_memory_storage

# -- the state machine -------------------------------------------------------------------------


def test_parse_mechanisms() -> None:
    assert parse_mechanisms(["plain", "SCRAM-SHA-512", "PLAIN"]) == ("PLAIN", "SCRAM-SHA-512")
    assert parse_mechanisms([]) == ()
    with pytest.raises(ValueError, match="GSSAPI"):
        parse_mechanisms(["GSSAPI"])
    with pytest.raises(ValueError, match="list"):
        parse_mechanisms("PLAIN")


def test_settings_per_listener() -> None:
    settings = KafkaSettings.parse({"sasl_mechanisms": ["PLAIN"], "listeners": {
        "internal": {"sasl_mechanisms": []}, "scram": {"sasl_mechanisms": ["SCRAM-SHA-256"]}}})
    assert settings.sasl_for("kafka") == ("PLAIN",)
    assert settings.sasl_for("internal") == ()
    assert settings.sasl_for("scram") == ("SCRAM-SHA-256",)
    assert KafkaSettings.parse({}).sasl_for("kafka") == ()
    with pytest.raises(ValueError, match="only sasl_mechanisms"):
        KafkaSettings.parse({"listeners": {"x": {"port": 1}}})
    with pytest.raises(ValueError, match="unsupported SASL"):
        KafkaSettings.parse({"sasl_mechanisms": ["OAUTHBEARER"]})


def test_only_open_apis_before_authentication() -> None:
    sasl = KafkaSaslServer(MECHANISMS, peer_is_loopback=True)
    assert sasl.allows(ApiKey.ApiVersions) and sasl.allows(ApiKey.SaslHandshake)
    assert sasl.allows(ApiKey.SaslAuthenticate)
    assert not sasl.allows(ApiKey.Metadata) and not sasl.allows(ApiKey.Produce)


def test_plain_exchange() -> None:
    sasl = KafkaSaslServer(["PLAIN"], peer_is_loopback=True)
    sasl.handshake("PLAIN", 1)
    assert not sasl.raw_tokens
    step = sasl.receive_token(b"\0alice\0secret")
    assert step == NeedPlainCheck("alice", "secret")
    done = sasl.plain_checked(AuthResult("alice", AuthOutcome.OK))
    assert done == Authenticated("alice", b"")
    assert sasl.authenticated and sasl.allows(ApiKey.Metadata) and sasl.user == "alice"
    with pytest.raises(SaslFailure) as again:
        sasl.handshake("PLAIN", 1)  # no re-authentication
    assert again.value.code == ErrorCode.ILLEGAL_SASL_STATE


@pytest.mark.parametrize(("outcome", "reason"), [
    (AuthOutcome.UNKNOWN_USER, "unknown user"), (AuthOutcome.BAD_PASSWORD, "bad password"),
    (AuthOutcome.NOT_ALLOWED_FROM_ADDRESS, "loopback")])
def test_plain_failures_say_why_in_the_log_only(outcome: AuthOutcome, reason: str) -> None:
    sasl = KafkaSaslServer(["PLAIN"], peer_is_loopback=False)
    sasl.handshake("PLAIN", 1)
    sasl.receive_token(b"\0bob\0pw")
    with pytest.raises(SaslFailure) as failed:
        sasl.plain_checked(AuthResult("bob", outcome))
    assert failed.value.code == ErrorCode.SASL_AUTHENTICATION_FAILED
    assert reason in failed.value.reason
    assert failed.value.client_message == "Authentication failed: Invalid username or password"
    assert sasl.state is SaslState.FAILED


@pytest.mark.parametrize("token", [b"alice\0pw", b"\0\0pw", b"\0alice\0", b"eve\0alice\0pw",
                                   b"\0\xff\0pw"])
def test_malformed_plain_tokens(token: bytes) -> None:
    sasl = KafkaSaslServer(["PLAIN"], peer_is_loopback=True)
    sasl.handshake("PLAIN", 1)
    with pytest.raises(SaslFailure) as failed:
        sasl.receive_token(token)
    assert failed.value.code == ErrorCode.SASL_AUTHENTICATION_FAILED


def test_handshake_errors() -> None:
    sasl = KafkaSaslServer(["PLAIN"], peer_is_loopback=True)
    with pytest.raises(SaslFailure) as unsupported:
        sasl.handshake("SCRAM-SHA-256", 1)
    assert unsupported.value.code == ErrorCode.UNSUPPORTED_SASL_MECHANISM
    early = KafkaSaslServer(["PLAIN"], peer_is_loopback=True)
    with pytest.raises(SaslFailure) as illegal:
        early.check_authenticate_request()
    assert illegal.value.code == ErrorCode.ILLEGAL_SASL_STATE
    raw = KafkaSaslServer(["PLAIN"], peer_is_loopback=True)
    raw.handshake("PLAIN", 0)
    assert raw.raw_tokens
    with pytest.raises(SaslFailure):
        raw.check_authenticate_request()  # v0 tokens are raw, not SaslAuthenticate


@pytest.mark.parametrize("mechanism", [ScramMechanism.SHA_256, ScramMechanism.SHA_512])
@pytest.mark.parametrize(("password", "allowed", "ok"), [
    ("s3cret", True, True), ("wrong", True, False), ("s3cret", False, False)])
def test_scram_exchange(mechanism: ScramMechanism, password: str, allowed: bool,
                        ok: bool) -> None:
    from core.scram import derive_credentials

    creds = derive_credentials(mechanism, "s3cret", b"0123456789abcdef", 4096)
    client = ScramClient("alice", password, mechanism.value)
    sasl = KafkaSaslServer(MECHANISMS, peer_is_loopback=allowed)
    sasl.handshake(mechanism.value, 1)
    step = sasl.receive_token(client.first_message())
    assert step == NeedScramCredentials("alice", mechanism)
    challenge = sasl.scram_credentials(creds, allowed)
    client.process_server_first_message(challenge.token)
    if ok:
        done = sasl.receive_token(client.final_message())
        assert isinstance(done, Authenticated) and done.user == "alice"
        client.process_server_final_message(done.token)  # verifies the server signature
        assert sasl.authenticated
    else:
        with pytest.raises(SaslFailure) as failed:
            sasl.receive_token(client.final_message())
        expected = "bad password" if password == "wrong" else "loopback"
        assert expected in failed.value.reason
        assert mechanism.value in failed.value.client_message


def test_scram_unknown_user_fails_after_the_proof() -> None:
    client = ScramClient("nobody", "pw", "SCRAM-SHA-256")
    sasl = KafkaSaslServer(MECHANISMS, peer_is_loopback=True)
    sasl.handshake("SCRAM-SHA-256", 1)
    sasl.receive_token(client.first_message())
    client.process_server_first_message(sasl.scram_credentials(None, False).token)
    with pytest.raises(SaslFailure) as failed:
        sasl.receive_token(client.final_message())
    assert "unknown user" in failed.value.reason


def test_raw_token_reader() -> None:
    reader = RawTokenReader(max_token_bytes=100)
    data = frame(b"first") + frame(b"") + b"\x00\x00\x00\x05ne"
    for i in range(len(data)):  # byte by byte
        reader.receive_data(data[i:i + 1])
    assert reader.next_token() == b"first"
    assert reader.next_token() == b""
    assert reader.next_token() is None
    assert reader.leftover() == b"\x00\x00\x00\x05ne"
    big = RawTokenReader(max_token_bytes=100)
    with pytest.raises(SaslFailure):
        big.receive_data(b"\x00\x01\x00\x00")
        big.next_token()


# -- the session's gate, in process ------------------------------------------------------------


@pytest.fixture
async def core() -> AsyncIterator[Core]:
    async with open_memory_storage() as storage, open_core(
            storage, CoreSettings(retention_check_interval_ms=0)) as c:
        await c.users.add("alice", "wonderland", loopback_only=False)
        yield c


@pytest.fixture
def ctx(core: Core) -> ServiceContext:
    return ServiceContext(core=core, namespace="public/default", cluster_id="test-cluster",
                          advertised_host="127.0.0.1", advertised_port=9092,
                          stopping=trio.Event())


async def start(nursery: trio.Nursery, ctx: ServiceContext, *, loopback: bool = True,
                mechanisms: tuple[str, ...] = MECHANISMS) -> WireClient:
    client_stream, server_stream = trio.testing.memory_stream_pair()
    sasl = KafkaSaslServer(mechanisms, peer_is_loopback=loopback) if mechanisms else None
    session = KafkaSession(server_stream, ctx, peer="test", sasl=sasl)

    async def run() -> None:
        await session.run()
        await server_stream.aclose()

    nursery.start_soon(run)
    return WireClient(client_stream)


def body(api: ApiKey, version: int, **fields: Any) -> Any:
    return registry.request_class(api, version)(**fields)


async def handshake(client: WireClient, mechanism: str, version: int = 1) -> Any:
    return await client.call(ApiKey.SaslHandshake, version,
                             body(ApiKey.SaslHandshake, version, mechanism=mechanism))


async def authenticate(client: WireClient, token: bytes, version: int = 2) -> Any:
    return await client.call(ApiKey.SaslAuthenticate, version,
                             body(ApiKey.SaslAuthenticate, version, auth_bytes=token))


async def metadata_works(client: WireClient) -> bool:
    await client.send(make_request(ApiKey.Metadata, 8, metadata_body(["t"]), 9))
    payload = await client.read_frame()
    if payload is None:
        return False
    assert decode_response(ApiKey.Metadata, 8, payload)[0] == 9
    return True


async def closed(client: WireClient) -> bool:
    return await client.read_frame() is None


async def test_session_plain_v1(ctx: ServiceContext, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, "handlers.kafka.session")
    async with trio.open_nursery() as nursery:
        client = await start(nursery, ctx)
        # ApiVersions is served before authentication
        versions = await client.call(ApiKey.ApiVersions, 3, body(
            ApiKey.ApiVersions, 3, client_software_name="t", client_software_version="1"))
        assert versions.error_code == 0
        shake = await handshake(client, "PLAIN")
        assert shake.error_code == 0 and list(shake.mechanisms) == list(MECHANISMS)
        auth = await authenticate(client, b"\0guest\0guest")
        assert (auth.error_code, auth.error_message, auth.session_lifetime_ms) == (0, None, 0)
        assert await metadata_works(client)
        again = await handshake(client, "PLAIN")  # no re-authentication
        assert again.error_code == ErrorCode.ILLEGAL_SASL_STATE
        assert await closed(client)
    assert "authenticated as 'guest' (PLAIN)" in caplog.text


async def test_session_refuses_requests_before_authentication(
        ctx: ServiceContext, caplog: pytest.LogCaptureFixture) -> None:
    async with trio.open_nursery() as nursery:
        client = await start(nursery, ctx)
        assert not await metadata_works(client)
    assert "Metadata v8 (correlation id 9) before SASL authentication" in caplog.text


@pytest.mark.parametrize(("token", "loopback", "reason"), [
    (b"\0guest\0wrong", True, "bad password"),
    (b"\0mallory\0guest", True, "unknown user"),
    (b"\0guest\0guest", False, "user may only connect from loopback")])
async def test_session_plain_failures(ctx: ServiceContext, caplog: pytest.LogCaptureFixture,
                                      token: bytes, loopback: bool, reason: str) -> None:
    async with trio.open_nursery() as nursery:
        client = await start(nursery, ctx, loopback=loopback)
        await handshake(client, "PLAIN")
        auth = await authenticate(client, token)
        assert auth.error_code == ErrorCode.SASL_AUTHENTICATION_FAILED
        assert auth.error_message == "Authentication failed: Invalid username or password"
        assert await closed(client)
    user = token.split(b"\0")[1].decode()
    assert f"SASL authentication failed: PLAIN login of {user!r} failed: {reason}" in caplog.text


async def test_session_unsupported_mechanism_and_illegal_state(ctx: ServiceContext) -> None:
    async with trio.open_nursery() as nursery:
        client = await start(nursery, ctx, mechanisms=("PLAIN",))
        shake = await handshake(client, "SCRAM-SHA-256")
        assert shake.error_code == ErrorCode.UNSUPPORTED_SASL_MECHANISM
        assert list(shake.mechanisms) == ["PLAIN"]
        assert await closed(client)
        early = await start(nursery, ctx)
        auth = await authenticate(early, b"\0guest\0guest")
        assert auth.error_code == ErrorCode.ILLEGAL_SASL_STATE
        assert await closed(early)


async def test_session_without_sasl_answers_illegal_state(ctx: ServiceContext) -> None:
    async with trio.open_nursery() as nursery:
        client = await start(nursery, ctx, mechanisms=())
        assert (await handshake(client, "PLAIN")).error_code == ErrorCode.ILLEGAL_SASL_STATE
        assert (await authenticate(client, b"x")).error_code == ErrorCode.ILLEGAL_SASL_STATE
        assert await metadata_works(client)  # the connection stays usable, as in Kafka
        nursery.cancel_scope.cancel()


@pytest.mark.parametrize("mechanism", ["SCRAM-SHA-256", "SCRAM-SHA-512"])
async def test_session_scram_v1(ctx: ServiceContext, mechanism: str) -> None:
    async with trio.open_nursery() as nursery:
        client = await start(nursery, ctx)
        await handshake(client, mechanism)
        scram = ScramClient("alice", "wonderland", mechanism)
        first = await authenticate(client, scram.first_message())
        assert first.error_code == 0
        scram.process_server_first_message(first.auth_bytes)
        final = await authenticate(client, scram.final_message())
        assert final.error_code == 0
        scram.process_server_final_message(final.auth_bytes)
        assert await metadata_works(client)
        nursery.cancel_scope.cancel()


async def test_session_scram_wrong_password(ctx: ServiceContext) -> None:
    async with trio.open_nursery() as nursery:
        client = await start(nursery, ctx)
        await handshake(client, "SCRAM-SHA-256")
        scram = ScramClient("alice", "guess", "SCRAM-SHA-256")
        first = await authenticate(client, scram.first_message())
        scram.process_server_first_message(first.auth_bytes)
        final = await authenticate(client, scram.final_message())
        assert final.error_code == ErrorCode.SASL_AUTHENTICATION_FAILED
        assert "SCRAM-SHA-256" in final.error_message
        assert await closed(client)


async def test_session_v0_raw_tokens(ctx: ServiceContext) -> None:
    async with trio.open_nursery() as nursery:
        client = await start(nursery, ctx)
        assert (await handshake(client, "SCRAM-SHA-512", version=0)).error_code == 0
        scram = ScramClient("alice", "wonderland", "SCRAM-SHA-512")
        await client.send(scram.first_message())  # raw: size + token, no Kafka header
        server_first = await client.read_frame()
        assert server_first is not None
        scram.process_server_first_message(server_first)
        # the final token and the first Kafka request in one write
        await client.stream.send_all(frame(scram.final_message()) + frame(
            make_request(ApiKey.Metadata, 8, metadata_body(["t"]), 9)))
        server_final = await client.read_frame()
        assert server_final is not None
        scram.process_server_final_message(server_final)
        payload = await client.read_frame()
        assert payload is not None and decode_response(ApiKey.Metadata, 8, payload)[0] == 9
        nursery.cancel_scope.cancel()


async def test_session_v0_plain_failure_closes(ctx: ServiceContext) -> None:
    async with trio.open_nursery() as nursery:
        client = await start(nursery, ctx)
        await handshake(client, "PLAIN", version=0)
        await client.send(b"\0guest\0nope")
        assert await closed(client)


# -- real clients ------------------------------------------------------------------------------

CLIENT_TIMEOUT_S = 20.0
SASL_CONFIG = """
[[listeners]]
name = "kafka"
handler = "kafka"

[[listeners]]
name = "kafka-sasl"
handler = "kafka"

[handlers.kafka.listeners.kafka-sasl]
sasl_mechanisms = ["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"]
"""


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    tmp = tmp_path_factory.mktemp("kafka-sasl")
    factory = ServerFactory(tmp)
    try:
        server = factory("kafka", "kafka-sasl", config=SASL_CONFIG, log_level="info")
        done = CliRunner(Path(tmp))("users", "add", "carol", "--password", "c-pass",
                                    "--data-dir", str(server.data_dir))
        assert done.returncode == 0, done.stderr
        yield server
    finally:
        factory.close()


def bootstrap(server: ServerProcess) -> str:
    host, port = server.address("kafka-sasl")
    return f"{host}:{port}"


def sasl_config(server: ServerProcess, mechanism: str, user: str, password: str
                ) -> dict[str, Any]:
    return {"bootstrap.servers": bootstrap(server), "security.protocol": "SASL_PLAINTEXT",
            "sasl.mechanisms": mechanism, "sasl.username": user, "sasl.password": password}


@pytest.mark.slow
@pytest.mark.parametrize("mechanism", list(MECHANISMS))
@pytest.mark.parametrize(("user", "password"), [("guest", "guest"), ("carol", "c-pass")])
def test_confluent_sasl_round_trip(server: ServerProcess, mechanism: str, user: str,
                                   password: str) -> None:
    topic = f"sasl-{mechanism.lower()}-{user}"
    config = sasl_config(server, mechanism, user, password)
    producer = ck.Producer({**config, "acks": "all", "enable.idempotence": False})
    reports: list[Any] = []
    for i in range(3):
        producer.produce(topic, f"v{i}".encode(), partition=0,
                         on_delivery=lambda err, msg: reports.append(err))
    assert producer.flush(CLIENT_TIMEOUT_S) == 0
    assert reports == [None] * 3
    consumer = ck.Consumer({**config, "group.id": "sasl", "enable.auto.commit": False})
    try:
        consumer.assign([ck.TopicPartition(topic, 0, ck.OFFSET_BEGINNING)])
        got: list[bytes | None] = []
        for _ in range(int(CLIENT_TIMEOUT_S)):
            msg = consumer.poll(1.0)
            if msg is not None:
                assert msg.error() is None, msg.error()
                got.append(msg.value())
            if len(got) == 3:
                break
        assert got == [b"v0", b"v1", b"v2"]
    finally:
        consumer.close()


@pytest.mark.slow
@pytest.mark.parametrize("mechanism", ["PLAIN", "SCRAM-SHA-256"])
def test_confluent_wrong_password(server: ServerProcess, mechanism: str) -> None:
    errors: list[ck.KafkaError] = []
    producer = ck.Producer({**sasl_config(server, mechanism, "carol", "wrong"),
                            "error_cb": errors.append, "reconnect.backoff.ms": 1000})
    with pytest.raises(ck.KafkaException):
        producer.list_topics("never-created", timeout=2)
    for _ in range(int(CLIENT_TIMEOUT_S * 10)):
        if errors:
            break
        producer.poll(0.1)
    assert any(e.code() == ck.KafkaError._AUTHENTICATION for e in errors), errors
    assert "Invalid username or password" in str(errors[0]) or mechanism in str(errors[0])
    server.wait_for_log(r"SASL authentication failed: \S+ login of 'carol' failed: bad password")


@pytest.mark.slow
def test_plain_listener_has_no_sasl(server: ServerProcess) -> None:
    host, port = server.address("kafka")
    producer = ck.Producer({"bootstrap.servers": f"{host}:{port}"})
    assert producer.list_topics("plain-listener", timeout=CLIENT_TIMEOUT_S) is not None


@pytest.mark.slow
def test_kafka_python_sasl_plain(server: ServerProcess) -> None:
    import kafka

    common = {"bootstrap_servers": bootstrap(server), "security_protocol": "SASL_PLAINTEXT",
              "sasl_mechanism": "PLAIN", "sasl_plain_username": "carol",
              "sasl_plain_password": "c-pass"}
    producer = kafka.KafkaProducer(acks="all", enable_idempotence=False, **common)
    try:
        assert producer.send("kp-sasl", b"hello", partition=0).get(
            timeout=CLIENT_TIMEOUT_S).offset == 0
    finally:
        producer.close(timeout=CLIENT_TIMEOUT_S)
    consumer = kafka.KafkaConsumer(group_id=None, enable_auto_commit=False, **common)
    try:
        tp = kafka.TopicPartition("kp-sasl", 0)
        consumer.assign([tp])
        consumer.seek_to_beginning(tp)
        got: list[bytes] = []
        for _ in range(int(CLIENT_TIMEOUT_S)):
            for records in consumer.poll(timeout_ms=1000).values():
                got += [r.value for r in records]
            if got:
                break
        assert got == [b"hello"]
    finally:
        consumer.close()


@pytest.mark.slow
def test_aiokafka_sasl_plain(server: ServerProcess) -> None:
    import aiokafka

    common: dict[str, Any] = {
        "bootstrap_servers": bootstrap(server), "security_protocol": "SASL_PLAINTEXT",
        "sasl_mechanism": "PLAIN", "sasl_plain_username": "guest",
        "sasl_plain_password": "guest"}

    async def main() -> list[bytes]:
        producer = aiokafka.AIOKafkaProducer(acks="all", enable_idempotence=False, **common)
        await producer.start()
        try:
            await producer.send_and_wait("aio-sasl", b"hi", partition=0)
        finally:
            await producer.stop()
        consumer = aiokafka.AIOKafkaConsumer(group_id=None, enable_auto_commit=False, **common)
        await consumer.start()
        try:
            tp = aiokafka.TopicPartition("aio-sasl", 0)
            consumer.assign([tp])
            await consumer.seek_to_beginning(tp)
            msg = await consumer.getone()
            return [msg.value]
        finally:
            await consumer.stop()

    assert asyncio.run(asyncio.wait_for(main(), 3 * CLIENT_TIMEOUT_S)) == [b"hi"]


@pytest.mark.slow
def test_kcat_sasl_plain(server: ServerProcess) -> None:
    kcat = require_tool("kcat")
    sasl = ["-b", bootstrap(server), "-X", "security.protocol=SASL_PLAINTEXT",
            "-X", "sasl.mechanisms=PLAIN", "-X", "sasl.username=guest",
            "-X", "sasl.password=guest"]

    def run(*args: str, stdin: str | None = None) -> str:
        done = subprocess.run([kcat, *sasl, *args], input=stdin, capture_output=True,
                              text=True, timeout=CLIENT_TIMEOUT_S, check=False)
        assert done.returncode == 0, done.stderr
        return done.stdout

    run("-P", "-t", "kcat-sasl", stdin="one\ntwo\n")
    assert run("-C", "-t", "kcat-sasl", "-e", "-o", "beginning").splitlines() == ["one", "two"]
