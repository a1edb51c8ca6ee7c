"""The broker lifecycle and ``polystream serve``: in process, then as a real subprocess."""

from __future__ import annotations

import contextlib
import json
import signal
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from importlib.metadata import EntryPoint, distributions
from pathlib import Path
from typing import Any

import pytest
import trio
from conftest import BROKEN_PLUGINS_DIR, PLUGINS_DIR, CliRunner, ServerFactory

from core.broker import Broker, StartupError
from core.config import Config, CoreSettings, ListenerConfig
from core.handler import ListenerAddress
from core.registry import ENTRY_POINT_GROUP, HandlerRegistry, UnknownHandlerError
from storage.api import DurabilityPolicy, Storage
from storage.memory import open_memory_storage

# ---------------------------------------------------------------- helpers


def test_registry() -> HandlerRegistry:
    return HandlerRegistry([
        EntryPoint("echo", "polystream_testplugin:EchoHandler", ENTRY_POINT_GROUP),
        EntryPoint("failstart", "polystream_testplugin:FailingStartHandler", ENTRY_POINT_GROUP),
    ])


test_registry.__test__ = False  # type: ignore[attr-defined]


@pytest.fixture(autouse=True)
def _plugins_importable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(PLUGINS_DIR))


def echo_config(*listeners: ListenerConfig, grace: float = 10.0) -> Config:
    chosen = listeners or (ListenerConfig("echo", "echo", "127.0.0.1", 0),)
    return Config(storage="memory://", listeners=tuple(chosen), shutdown_grace_s=grace,
                  handlers={"echo": {"greeting": "hi"}})


@dataclass
class Recorder:
    """Stand-in storage/core openers that record the lifecycle order."""

    events: list[str]

    @asynccontextmanager
    async def storage(self, url: str, policy: DurabilityPolicy) -> AsyncIterator[Storage]:
        self.events.append(f"storage open {url}")
        try:
            async with open_memory_storage(policy) as storage:
                yield storage
        finally:
            self.events.append("storage closed")

    @asynccontextmanager
    async def core(self, storage: Storage, settings: CoreSettings) -> AsyncIterator[Any]:
        self.events.append("core open")
        try:
            yield {"stand-in core": storage}
        finally:
            self.events.append("core closed")


async def line(stream: trio.abc.Stream, text: str) -> str:
    """Send one line, read one line back."""
    await stream.send_all(text.encode() + b"\n")
    data = b""
    with trio.fail_after(10):
        while not data.endswith(b"\n"):
            chunk = await stream.receive_some(65536)
            if not chunk:
                raise EOFError(f"closed after {data!r}")
            data += chunk
    return data.decode().rstrip("\n")


async def expect_closed(stream: trio.abc.Stream) -> None:
    with trio.fail_after(10):
        with contextlib.suppress(trio.BrokenResourceError):  # a reset is a close too
            assert await stream.receive_some(1024) == b""


# ---------------------------------------------------------------- in process


async def test_lifecycle_order_and_handler_context() -> None:
    rec = Recorder([])
    broker = Broker(echo_config(), test_registry(), storage_opener=rec.storage,
                    core_opener=rec.core)
    async with trio.open_nursery() as nursery:
        addresses: list[ListenerAddress] = await nursery.start(broker.run)
        [addr] = addresses
        assert addr.name == "echo" and addr.port > 0
        handler: Any = broker.handlers["echo"]
        assert handler.context.listeners == [addr]  # port 0 resolved before start()
        assert handler.context.settings == {"greeting": "hi"}
        assert handler.context.core == {"stand-in core": handler.context.core["stand-in core"]}
        rec.events.append("serving")
        async with await trio.open_tcp_stream("127.0.0.1", addr.port) as client:
            assert await line(client, "ping") == "ping"
        broker.stop()
    assert handler.closed
    assert rec.events == ["storage open memory://", "core open", "serving", "core closed",
                          "storage closed"]


async def test_real_core_on_memory_storage_reaches_the_handler() -> None:
    broker = Broker(echo_config(), test_registry())
    async with trio.open_nursery() as nursery:
        await nursery.start(broker.run)
        core = broker.handlers["echo"].context.core  # type: ignore[attr-defined]
        assert [u.name for u in await core.users.list()] == ["guest"]
        broker.stop()


async def test_graceful_stop_lets_open_connections_finish() -> None:
    broker = Broker(echo_config(grace=60), test_registry())
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            [addr] = await nursery.start(broker.run)
            client = await trio.open_tcp_stream("127.0.0.1", addr.port)
            assert await line(client, "before") == "before"
            broker.stop()
            await trio.testing.wait_all_tasks_blocked()
            # no longer accepting, but the open connection is still served
            with pytest.raises(OSError):
                await trio.open_tcp_stream("127.0.0.1", addr.port)
            assert await line(client, "during") == "during"
            await client.aclose()  # the last connection ends: shutdown completes


async def test_forced_stop_closes_connections_at_once() -> None:
    broker = Broker(echo_config(grace=600), test_registry())
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            [addr] = await nursery.start(broker.run)
            client = await trio.open_tcp_stream("127.0.0.1", addr.port)
            assert await line(client, "x") == "x"
            broker.stop()
            await trio.testing.wait_all_tasks_blocked()
            broker.stop(force=True)
            await expect_closed(client)


async def test_handler_start_failure_is_a_startup_error_and_cleans_up() -> None:
    rec = Recorder([])
    cfg = echo_config(ListenerConfig("e", "echo", "127.0.0.1", 0),
                      ListenerConfig("f", "failstart", "127.0.0.1", 0))
    broker = Broker(cfg, test_registry(), storage_opener=rec.storage, core_opener=rec.core)
    with pytest.RaisesGroup(pytest.RaisesExc(StartupError, match="handler 'failstart' failed "
                                             "to start: RuntimeError: failstart cannot start"),
                            flatten_subgroups=True):
        await broker.run()
    assert broker.handlers["echo"].closed  # type: ignore[attr-defined]  # started, so closed
    assert rec.events[-2:] == ["core closed", "storage closed"]


async def test_port_in_use_is_a_startup_error() -> None:
    taken = (await trio.open_tcp_listeners(0, host="127.0.0.1"))[0]
    port = taken.socket.getsockname()[1]
    async with taken:
        rec = Recorder([])
        broker = Broker(echo_config(ListenerConfig("echo", "echo", "127.0.0.1", port)),
                        test_registry(), storage_opener=rec.storage, core_opener=rec.core)
        with pytest.RaisesGroup(pytest.RaisesExc(StartupError, match=f"127.0.0.1:{port}"),
                                flatten_subgroups=True):
            await broker.run()
    assert broker.handlers["echo"].context is None  # type: ignore[attr-defined]  # never started
    assert rec.events[-1] == "storage closed"


def test_unknown_handler_fails_before_any_io() -> None:
    cfg = Config(listeners=(ListenerConfig("x", "nope"),))
    with pytest.raises(UnknownHandlerError,
                       match=r"unknown handler 'nope' .*known handlers: echo, failstart"):
        Broker(cfg, test_registry())


# ---------------------------------------------------------------- subprocess


@pytest.mark.slow
async def test_serve_loads_plugin_from_entry_point_and_echoes(
    polystream_server: ServerFactory,
) -> None:
    server = await polystream_server.start_async("echo", plugins=True)
    host, port = server.address("echo")
    assert host == "127.0.0.1" and port > 0
    assert [b.handler for b in server.bound] == ["echo"]
    async with await trio.open_tcp_stream(host, port) as client:
        assert await line(client, "hello over tcp") == "hello over tcp"
        info = json.loads(await line(client, "!info"))
    assert info["listeners"] == [["echo", "127.0.0.1", port]]
    assert info["conn"]["peer_is_loopback"] is True
    assert (server.data_dir / "metadata.db").exists()


@pytest.mark.slow
async def test_sigterm_with_open_connection_stops_cleanly(
    polystream_server: ServerFactory, polystream_cli: CliRunner,
) -> None:
    server = await polystream_server.start_async(
        "echo", plugins=True, config="shutdown_grace_s = 0.2\n")
    client = await trio.open_tcp_stream(*server.address("echo"))
    assert await line(client, "hold") == "hold"
    server.signal(signal.SIGTERM)
    code = await trio.to_thread.run_sync(server.wait)
    assert code == 0, server.log_text()
    log = server.log_text()
    assert "received SIGTERM" in log
    assert "grace period (0.2s) over: closing 1 connection(s)" in log
    assert log.index("echo handler closed") < log.index("storage closed") < log.index(
        ": stopped")
    assert "Traceback" not in log
    await expect_closed(client)
    await client.aclose()
    # the data directory is intact and reusable
    result = polystream_cli("users", "list", "--data-dir", str(server.data_dir))
    assert result.returncode == 0 and result.stdout.split() == ["guest", "(loopback", "only)"]


@pytest.mark.slow
async def test_second_signal_skips_the_grace_period(polystream_server: ServerFactory) -> None:
    server = await polystream_server.start_async(
        "echo", plugins=True, config="shutdown_grace_s = 600\n")
    client = await trio.open_tcp_stream(*server.address("echo"))
    assert await line(client, "hold") == "hold"
    server.signal(signal.SIGTERM)
    await trio.to_thread.run_sync(server.wait_for_log, "stopping: no longer accepting; "
                                  "1 connection\\(s\\) open, grace 600s")
    assert await line(client, "still served") == "still served"
    server.signal(signal.SIGTERM)
    assert await trio.to_thread.run_sync(server.wait) == 0
    assert "received SIGTERM again: closing connections now" in server.log_text()
    await expect_closed(client)
    await client.aclose()


@pytest.mark.slow
def test_sigint_stops_cleanly(polystream_server: ServerFactory) -> None:
    server = polystream_server("echo", plugins=True)
    server.signal(signal.SIGINT)
    assert server.wait() == 0
    assert "received SIGINT" in server.log_text()
    assert server.log_text().rstrip().endswith("stopped")


@pytest.mark.slow
async def test_connection_limit_and_crashing_connection(
    polystream_server: ServerFactory,
) -> None:
    config = ('[[listeners]]\nname = "small"\nhandler = "echo"\nhost = "127.0.0.1"\n'
              "port = 0\nmax_connections = 2\n")
    server = await polystream_server.start_async(plugins=True, config=config)
    addr = server.address("small")
    a = await trio.open_tcp_stream(*addr)
    b = await trio.open_tcp_stream(*addr)
    assert await line(a, "a") == "a" and await line(b, "b") == "b"
    c = await trio.open_tcp_stream(*addr)
    await expect_closed(c)
    await trio.to_thread.run_sync(server.wait_for_log, "listener small: connection limit \\(2\\)")
    # a crashing serve() closes only its own connection
    await b.send_all(b"!crash\n")
    await expect_closed(b)
    assert await line(a, "still here") == "still here"
    await trio.to_thread.run_sync(server.wait_for_log, "RuntimeError: echo handler asked to crash")
    d = await trio.open_tcp_stream(*addr)  # b's slot is free again
    assert await line(d, "d") == "d"
    for s in (a, b, c, d):
        await s.aclose()
    assert server.proc.poll() is None


@pytest.mark.slow
def test_unknown_handler_exits_2_listing_known(polystream_cli: CliRunner) -> None:
    result = polystream_cli("serve", "--listener", "nope=127.0.0.1:0", plugins=True)
    assert result.returncode == 2
    [message] = [ln for ln in result.stderr.splitlines() if "unknown handler" in ln]
    assert message.startswith("polystream: error: unknown handler 'nope'; known handlers: ")
    assert {"echo", "failstart"} <= set(message.split(": ")[-1].split(", "))
    assert "Traceback" not in result.stderr


@pytest.mark.slow
def test_handler_import_failure_is_reported(polystream_cli: CliRunner) -> None:
    result = polystream_cli("serve", "--listener", "broken=127.0.0.1:0",
                            extra_paths=[BROKEN_PLUGINS_DIR])
    assert result.returncode == 1
    assert ("handler broken = polystream_brokenplugin:BrokenHandler from polystream-brokenplugin"
            " 0.0 failed to import: ImportError: polystream_brokenplugin needs a library"
            in result.stderr)


@pytest.mark.slow
def test_handler_start_failure_exits_1(polystream_cli: CliRunner, tmp_path: Path) -> None:
    result = polystream_cli("serve", "--listener", "failstart=127.0.0.1:0", "--data-dir",
                            str(tmp_path / "d"), plugins=True)
    assert result.returncode == 1
    assert "start-up failed: handler 'failstart' failed to start" in result.stderr
    assert "storage closed" in result.stderr  # closed in order all the same
    assert "Traceback" in result.stderr  # the handler's own error is logged in full


@pytest.mark.slow
def test_no_handler_installed_is_said_clearly(polystream_server: ServerFactory) -> None:
    paths = [p for p in sys.path if not p.startswith(str(PLUGINS_DIR))]
    if any(ep.group == ENTRY_POINT_GROUP for d in distributions(path=paths)
           for ep in d.entry_points):
        pytest.skip("protocol handlers are installed in this environment")
    server = polystream_server()
    assert server.bound == []
    assert "no protocol handler is installed" in server.log_text()
    assert server.terminate() == 0


@pytest.mark.slow
def test_users_commands(polystream_server: ServerFactory, polystream_cli: CliRunner,
                        tmp_path: Path) -> None:
    data = ["--data-dir", str(tmp_path / "users-data")]
    server = polystream_server("echo", plugins=True, data_dir=tmp_path / "users-data")
    # the server has the SQLite file open: the CLI works alongside it
    added = polystream_cli("users", "add", "alice", "--password", "s3cret", *data)
    assert added.returncode == 0, added.stderr
    piped = polystream_cli("users", "add", "bob", "--loopback-only", *data, input="pw\n")
    assert piped.returncode == 0, piped.stderr
    again = polystream_cli("users", "add", "alice", "--password", "x", *data)
    assert again.returncode == 1 and "alice" in again.stderr
    listed = polystream_cli("users", "list", *data)
    assert listed.stdout.splitlines() == ["alice", "bob  (loopback only)",
                                          "guest  (loopback only)"]
    assert polystream_cli("users", "delete", "guest", *data).returncode == 0
    gone = polystream_cli("users", "delete", "guest", *data)
    assert gone.returncode == 1 and "no such user: guest" in gone.stderr
    assert polystream_cli("users", "list", *data).stdout.splitlines() == [
        "alice", "bob  (loopback only)"]
    assert server.terminate() == 0


@pytest.mark.slow
def test_version(polystream_cli: CliRunner) -> None:
    result = polystream_cli("--version")
    assert result.returncode == 0 and result.stdout.startswith("polystream 0.1.0")
