"""Shared fixtures: run the real ``polystream`` command in a subprocess.

``polystream_server`` starts ``polystream serve`` on ephemeral loopback ports and
returns a :class:`ServerProcess` once every listener is bound and accepting::

    def test_something(polystream_server: ServerFactory) -> None:
        server = polystream_server("kafka", "mqtt")          # NAME=127.0.0.1:0 each
        host, port = server.address("kafka")
        ...

    async def test_async(polystream_server: ServerFactory) -> None:
        server = await polystream_server.start_async("amqp")  # waits in a thread

Every process started is stopped at teardown (SIGTERM, then SIGKILL after a
timeout).  The server's stderr goes to ``server.log_path`` (printed on failure to
start); ``server.log_text()`` / ``server.wait_for_log(regex)`` read it.

``polystream_cli`` runs one short ``polystream`` command (e.g. ``users add``)
with a hard timeout.  Both use ``sys.executable -m core.cli``, so they work with
or without ``pip install -e .``; ``plugins=True`` puts the test plugin
distribution (``tests/plugins``: handlers ``echo`` and ``failstart``) on
``PYTHONPATH`` — then name the listeners you want, since with none named every
installed handler runs, ``failstart`` included (it fails to start on purpose).
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import trio

from storage.api import Storage
from storage.local import open_local_storage
from storage.memory import open_memory_storage

ROOT = Path(__file__).resolve().parent.parent
PLUGINS_DIR = ROOT / "tests" / "plugins"
BROKEN_PLUGINS_DIR = PLUGINS_DIR / "broken"

# The packages are importable without ``pip install -e .`` too (CI installs; a checkout may not).
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

#: ``listening: NAME on HOST:PORT (handler H)`` as logged by core.broker (IPv6 in brackets)
LISTENING_RE = re.compile(
    r"listening: (?P<name>\S+) on (?:\[(?P<host6>[^\]]+)\]|(?P<host>[^\s:]+)):(?P<port>\d+)"
    r" \(handler (?P<handler>[^)]+)\)"
)
READY_RE = re.compile(r"\bready: \d+ listener")
STOPPED_RE = re.compile(r": stopped$", re.MULTILINE)

START_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 20.0
CLI_TIMEOUT_S = 60.0


def polystream_env(*, plugins: bool = False, extra_paths: Sequence[Path] = (),
                   env: Mapping[str, str] | None = None) -> dict[str, str]:
    """Environment for a ``polystream`` subprocess: the repository (and plugins) importable."""
    result = dict(os.environ)
    paths = [str(ROOT)]
    if plugins:
        paths.append(str(PLUGINS_DIR))
    paths.extend(str(p) for p in extra_paths)
    if result.get("PYTHONPATH"):
        paths.append(result["PYTHONPATH"])
    result["PYTHONPATH"] = os.pathsep.join(paths)
    result["PYTHONUNBUFFERED"] = "1"
    result.update(env or {})
    return result


def polystream_command(*args: str) -> list[str]:
    """The command line running ``polystream ARGS`` with this interpreter."""
    return [sys.executable, "-m", "core.cli", *args]


@dataclass(frozen=True)
class BoundAddress:
    """One ``listening:`` line: where a listener is bound."""

    name: str
    host: str
    port: int
    handler: str


def parse_listening(log_text: str) -> list[BoundAddress]:
    """Every ``listening:`` line in a log, in order."""
    found = []
    for m in LISTENING_RE.finditer(log_text):
        found.append(BoundAddress(m["name"], m["host6"] or m["host"], int(m["port"]),
                                  m["handler"]))
    return found


@dataclass
class ServerProcess:
    """A running ``polystream serve``."""

    proc: subprocess.Popen[bytes]
    data_dir: Path
    log_path: Path
    bound: list[BoundAddress] = field(default_factory=list)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def log_text(self) -> str:
        """Everything the server has logged so far."""
        return self.log_path.read_text(errors="replace")

    def address(self, listener: str) -> tuple[str, int]:
        """``(host, port)`` of the first socket of ``listener`` (a listener or handler name)."""
        for b in self.bound:
            if b.name == listener:
                return b.host, b.port
        raise KeyError(f"no listener {listener!r}; bound: {self.bound}")

    def port(self, listener: str) -> int:
        return self.address(listener)[1]

    def wait_for_log(self, pattern: str | re.Pattern[str], timeout: float = 10.0
                     ) -> re.Match[str]:
        """Wait until the log matches ``pattern`` (or raise after ``timeout`` seconds)."""
        regex = re.compile(pattern) if isinstance(pattern, str) else pattern
        deadline = time.monotonic() + timeout
        while True:
            m = regex.search(self.log_text())
            if m is not None:
                return m
            if time.monotonic() > deadline:
                raise TimeoutError(f"{regex.pattern!r} not logged within {timeout}s; log:\n"
                                   + self.log_text()[-4000:])
            time.sleep(0.02)

    def signal(self, signum: int) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signum)

    def wait(self, timeout: float = STOP_TIMEOUT_S) -> int:
        """Wait for the process to exit; kill it (and raise) after ``timeout`` seconds."""
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise

    def terminate(self, timeout: float = STOP_TIMEOUT_S) -> int:
        """SIGTERM and wait for the exit code (SIGKILL and raise after ``timeout``)."""
        self.signal(signal.SIGTERM)
        return self.wait(timeout)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=STOP_TIMEOUT_S)


class ServerFactory:
    """Starts ``polystream serve`` processes and stops them all at teardown."""

    def __init__(self, tmp_path: Path) -> None:
        self._tmp = tmp_path
        self._count = 0
        self.processes: list[ServerProcess] = []

    def __call__(
        self,
        *listeners: str,
        config: str | None = None,
        data_dir: Path | None = None,
        args: Sequence[str] = (),
        plugins: bool = False,
        extra_paths: Sequence[Path] = (),
        env: Mapping[str, str] | None = None,
        log_level: str = "debug",
        wait: bool = True,
        timeout: float = START_TIMEOUT_S,
    ) -> ServerProcess:
        """Start a server and (with ``wait``) return once it logged ``ready``.

        ``listeners``: ``NAME`` (bound to ``127.0.0.1:0``) or ``NAME=HOST:PORT``.
        ``config``: TOML text written to a file and passed with ``--config``.
        ``data_dir`` defaults to a fresh directory under ``tmp_path``.
        """
        self._count += 1
        workdir = self._tmp / f"polystream-{self._count}"
        workdir.mkdir(parents=True, exist_ok=True)
        data_dir = data_dir if data_dir is not None else workdir / "data"
        argv = ["serve", "--data-dir", str(data_dir), "--log-level", log_level]
        if config is not None:
            config_path = workdir / "polystream.toml"
            config_path.write_text(config)
            argv += ["--config", str(config_path)]
        for spec in listeners:
            argv += ["--listener", spec if "=" in spec else f"{spec}=127.0.0.1:0"]
        argv += list(args)
        log_path = workdir / "server.log"
        with open(log_path, "wb") as log_file:
            proc = subprocess.Popen(
                polystream_command(*argv), cwd=workdir, stdin=subprocess.DEVNULL,
                stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True,
                env=polystream_env(plugins=plugins, extra_paths=extra_paths, env=env),
            )
        server = ServerProcess(proc, data_dir, log_path)
        self.processes.append(server)
        if wait:
            self.wait_ready(server, timeout)
        return server

    async def start_async(self, *listeners: str, ready_within: float = START_TIMEOUT_S,
                          **kwargs: Any) -> ServerProcess:
        """:meth:`__call__` for async tests: the wait for readiness runs in a thread."""
        server = self(*listeners, wait=False, **kwargs)
        await trio.to_thread.run_sync(self.wait_ready, server, ready_within)
        return server

    @staticmethod
    def wait_ready(server: ServerProcess, timeout: float = START_TIMEOUT_S) -> None:
        """Wait for ``ready``; fill ``server.bound``; kill and fail on exit or timeout."""
        deadline = time.monotonic() + timeout
        while True:
            text = server.log_text()
            if READY_RE.search(text):
                server.bound = parse_listening(text)
                return
            code = server.proc.poll()
            if code is not None:
                pytest.fail(f"polystream serve exited with {code} before it was ready; log:\n"
                            + text[-4000:])
            if time.monotonic() > deadline:
                server.kill()
                pytest.fail(f"polystream serve not ready within {timeout}s; log:\n"
                            + text[-4000:])
            time.sleep(0.02)

    def close(self) -> None:
        """Stop every process started (SIGTERM, then SIGKILL)."""
        for server in self.processes:
            if server.proc.poll() is None:
                with contextlib.suppress(subprocess.TimeoutExpired):  # then it was killed
                    server.terminate()


@pytest.fixture
def polystream_server(tmp_path: Path) -> Iterator[ServerFactory]:
    """Factory starting ``polystream serve`` subprocesses; all stopped at teardown."""
    factory = ServerFactory(tmp_path)
    try:
        yield factory
    finally:
        factory.close()


@dataclass(frozen=True)
class CliRunner:
    """Runs one ``polystream`` command to completion (killed after a hard timeout)."""

    cwd: Path

    def __call__(self, *args: str, input: str | None = None, plugins: bool = False,
                 extra_paths: Sequence[Path] = (), timeout: float = CLI_TIMEOUT_S
                 ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            polystream_command(*args), cwd=self.cwd, input=input, capture_output=True,
            text=True, timeout=timeout,
            env=polystream_env(plugins=plugins, extra_paths=extra_paths),
        )


@pytest.fixture
def polystream_cli(tmp_path: Path) -> CliRunner:
    """Run ``polystream ARGS`` in ``tmp_path``: ``polystream_cli("users", "list", ...)``."""
    return CliRunner(tmp_path)


@pytest.fixture(params=["memory", "file"])
async def storage(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Storage]:
    """Each test that asks for ``storage`` runs on the in-memory backend and on the embedded
    file backend (small segments, so retention and roll-over happen in small tests).  A test
    module may define its own ``storage`` fixture instead."""
    if request.param == "memory":
        async with open_memory_storage() as memory:
            yield memory
    else:
        async with open_local_storage(tmp_path, segment_bytes=4096) as local:
            yield local
