"""Benchmark plumbing: private broker processes, the load-run harness, report helpers.

Each broker is a context manager that starts one process (tree) on ephemeral loopback ports in
its own temporary directory, waits until the broker accepts its protocol, yields a
:class:`RunningBroker`, and stops it (and everything it started) on exit, also on error::

    with mosquitto() as broker:
        before = broker.cpu_seconds()
        ...                       # drive load at broker.host:broker.port
        used = broker.cpu_seconds() - before

CPU time is read from ``/proc/<pid>/stat`` (utime + stime of every thread) summed over the
broker's process tree: for rabbitmq that is the ``beam.smp`` VM and its helpers, for
Polystream the one Python process, for mosquitto the one C process.

Nothing here touches the system-wide brokers: mosquitto gets a temp config without
persistence (unless asked), rabbitmq a private node name, Mnesia/log directories, Erlang
cookie (``HOME``), AMQP port, distribution port and its own ``epmd`` on a private port
(``ERL_EPMD_PORT``) that this module starts and stops, and Polystream a temp data directory.

:func:`run_load` runs one measurement: consumer processes first (each reports ready), then
the publisher process; broker CPU is read around the run.  Load-generator workers follow one
small protocol (see :class:`Worker`), so the MQTT and AMQP generators share the harness.
"""

from __future__ import annotations

import contextlib
import math
import multiprocessing
import os
import queue
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from array import array
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
MOSQUITTO = "/usr/sbin/mosquitto"
#: The real start script; ``/usr/sbin/rabbitmq-server`` would ``su`` to the rabbitmq user.
RABBITMQ_SERVER = "/usr/lib/rabbitmq/bin/rabbitmq-server"
EPMD = shutil.which("epmd") or "/usr/bin/epmd"
LOOPBACK = "127.0.0.1"
_CLK_TCK = os.sysconf("SC_CLK_TCK")
_STOP_TIMEOUT_S = 20.0


class BrokerError(RuntimeError):
    """A broker could not be started (its log tail is in the message)."""


@dataclass
class RunningBroker:
    """A started broker: where it listens and how to read its CPU time."""

    name: str
    host: str
    port: int
    pid: int
    workdir: Path
    log_file: Path
    version: str = ""
    extra_ports: dict[str, int] = field(default_factory=dict)

    def cpu_seconds(self) -> float:
        """User + system CPU seconds used so far by the broker's process tree."""
        return tree_cpu_seconds(self.pid)

    def log_tail(self, lines: int = 30) -> str:
        """The last lines of the broker's log (for error reports)."""
        return _tail(self.log_file, lines)


def free_port() -> int:
    """A TCP port on loopback that was free a moment ago (the kernel picked it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((LOOPBACK, 0))
        port: int = s.getsockname()[1]
        return port


def _proc_stat(pid: int) -> tuple[int, float] | None:
    """(parent pid, CPU seconds) of ``pid``, or ``None`` if it is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            raw = f.read()
    except OSError:
        return None
    # the command name (field 2) may contain spaces and parentheses: split after the last ")"
    rest = raw[raw.rindex(b")") + 2 :].split()
    ppid = int(rest[1])
    utime, stime = int(rest[11]), int(rest[12])
    return ppid, (utime + stime) / _CLK_TCK


def tree_cpu_seconds(root: int) -> float:
    """CPU seconds of ``root`` and all its live descendants (threads included)."""
    children: dict[int, list[int]] = {}
    cpu: dict[int, float] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        stat = _proc_stat(int(entry))
        if stat is None:
            continue
        children.setdefault(stat[0], []).append(int(entry))
        cpu[int(entry)] = stat[1]
    total, stack = 0.0, [root]
    while stack:
        pid = stack.pop()
        total += cpu.get(pid, 0.0)
        stack.extend(children.get(pid, ()))
    return total


def machine_busy_seconds() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine since boot, all cores (``/proc/stat``)."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    total = sum(fields[:8])  # guest time is already counted in user
    return (total - idle) / _CLK_TCK, total / _CLK_TCK


def process_cpu_seconds(pid: int) -> float:
    """CPU seconds of one process (all its threads)."""
    stat = _proc_stat(pid)
    return 0.0 if stat is None else stat[1]


def _tail(path: Path, lines: int) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return "(no log)"
    return "\n".join(text.splitlines()[-lines:])


def _stop_process_group(proc: subprocess.Popen[bytes], timeout: float = _STOP_TIMEOUT_S) -> None:
    """SIGTERM the process group ``proc`` leads, then SIGKILL what is left after ``timeout``."""
    pgid = proc.pid  # started with start_new_session=True: its own group, led by it
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGTERM)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, signal.SIGKILL)
        proc.wait(timeout=5)
    # helpers that outlived the leader but stayed in the group
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGKILL)


def _wait_accepting(
    proc: subprocess.Popen[bytes], host: str, port: int, timeout: float, log_file: Path,
    probe: bytes | None = None,
) -> None:
    """Poll until ``host:port`` accepts a connection (and answers ``probe`` with something)."""
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            raise BrokerError(f"exited with {proc.returncode} while starting:\n"
                              f"{_tail(log_file, 30)}")
        try:
            with socket.create_connection((host, port), timeout=1.0) as s:
                if probe is None:
                    return
                s.sendall(probe)
                if s.recv(16):
                    return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise BrokerError(f"not accepting on {host}:{port} after {timeout:g}s:\n"
                              f"{_tail(log_file, 30)}")
        time.sleep(0.1)


def _package_version(name: str) -> str:
    try:
        out = subprocess.run(["dpkg-query", "-W", "-f=${Version}", name],
                             capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return out.stdout.strip()


@contextlib.contextmanager
def mosquitto(
    *, persistence: bool = False, max_inflight: int = 100, max_queued: int = 100_000,
) -> Iterator[RunningBroker]:
    """A private mosquitto on an ephemeral loopback port (anonymous access, no persistence,
    ``TCP_NODELAY``).

    ``max_inflight`` (outgoing QoS 1/2 window per client) and ``max_queued`` (queued QoS 1/2
    messages per client beyond the window) are raised from mosquitto's defaults (20/1000) so
    a subscriber that lags a moment behind a publisher at full speed does not lose messages.
    """
    with tempfile.TemporaryDirectory(prefix="bench-mosquitto-") as tmp:
        work = Path(tmp)
        port = free_port()
        log_file = work / "mosquitto.log"
        lines = [
            f"listener {port} {LOOPBACK}",
            "allow_anonymous true",
            f"persistence {'true' if persistence else 'false'}",
            f"persistence_location {work}/",
            f"max_inflight_messages {max_inflight}",
            f"max_queued_messages {max_queued}",
            # like Polystream (trio sets TCP_NODELAY) and rabbitmq (nodelay by default): without
            # it Nagle + delayed ACK put ~40 ms on QoS 0 deliveries, which have no reply
            "set_tcp_nodelay true",
            "log_dest stderr",
            "log_type error",
            "log_type warning",
        ]
        conf = work / "mosquitto.conf"
        conf.write_text("\n".join(lines) + "\n")
        with open(log_file, "wb") as log:
            proc = subprocess.Popen([MOSQUITTO, "-c", str(conf)], stdout=log, stderr=log,
                                    stdin=subprocess.DEVNULL, cwd=work, start_new_session=True)
        try:
            _wait_accepting(proc, LOOPBACK, port, 10.0, log_file)
            yield RunningBroker("mosquitto", LOOPBACK, port, proc.pid, work, log_file,
                                version=_package_version("mosquitto"))
        finally:
            _stop_process_group(proc)


_AMQP_HEADER = b"AMQP\x00\x00\x09\x01"


@contextlib.contextmanager
def rabbitmq(*, start_timeout: float = 90.0) -> Iterator[RunningBroker]:
    """A private rabbitmq-server node on ephemeral loopback ports, with no plugins enabled.

    The node gets its own name, directories, cookie and ``epmd`` (started here on a private
    port and stopped at the end), so it never meets a system node.  Ready means the AMQP port
    answers the protocol header with ``Connection.Start``.
    """
    with tempfile.TemporaryDirectory(prefix="bench-rabbitmq-") as tmp:
        work = Path(tmp)
        amqp_port, dist_port, epmd_port = free_port(), free_port(), free_port()
        log_file = work / "startup.log"
        for sub in ("mnesia", "log", "home"):
            (work / sub).mkdir()
        (work / "rabbitmq.conf").write_text(
            f"listeners.tcp.default = {LOOPBACK}:{amqp_port}\n"
            "log.console = false\n"
            "log.file.level = warning\n"
        )
        (work / "enabled_plugins").write_text("[].\n")
        (work / "rabbitmq-env.conf").write_text("")
        node = f"bench{amqp_port}@localhost"
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "LANG": "C.UTF-8",
            "HOME": str(work / "home"),
            "RABBITMQ_NODENAME": node,
            "RABBITMQ_NODE_IP_ADDRESS": LOOPBACK,
            "RABBITMQ_NODE_PORT": str(amqp_port),
            "RABBITMQ_DIST_PORT": str(dist_port),
            "ERL_EPMD_PORT": str(epmd_port),
            "ERL_EPMD_ADDRESS": LOOPBACK,
            "RABBITMQ_MNESIA_BASE": str(work / "mnesia"),
            "RABBITMQ_LOG_BASE": str(work / "log"),
            "RABBITMQ_CONFIG_FILE": str(work / "rabbitmq.conf"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(work / "enabled_plugins"),
            "RABBITMQ_CONF_ENV_FILE": str(work / "rabbitmq-env.conf"),
            "RABBITMQ_PID_FILE": str(work / "rabbitmq.pid"),
            "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS": "-kernel inet_dist_use_interface {127,0,0,1}",
        }
        with open(log_file, "wb") as log:
            epmd = subprocess.Popen([EPMD, "-port", str(epmd_port), "-address", LOOPBACK],
                                    stdout=log, stderr=log, stdin=subprocess.DEVNULL, env=env,
                                    start_new_session=True)
            proc: subprocess.Popen[bytes] | None = None
            try:
                _wait_accepting(epmd, LOOPBACK, epmd_port, 10.0, log_file)
                proc = subprocess.Popen([RABBITMQ_SERVER], stdout=log, stderr=log,
                                        stdin=subprocess.DEVNULL, env=env, cwd=work,
                                        start_new_session=True)
                _wait_accepting(proc, LOOPBACK, amqp_port, start_timeout, log_file,
                                probe=_AMQP_HEADER)
                yield RunningBroker("rabbitmq", LOOPBACK, amqp_port, proc.pid, work, log_file,
                                    version=_package_version("rabbitmq-server"),
                                    extra_ports={"dist": dist_port, "epmd": epmd_port})
            finally:
                if proc is not None:
                    _stop_process_group(proc)
                _stop_process_group(epmd, timeout=5)


_LISTENING = re.compile(r"listening: (\S+) on (\S+):(\d+) \(handler (\S+)\)")


@contextlib.contextmanager
def polystream(
    handler: str, *, durability: str | None = None, handler_settings: dict[str, str] | None = None,
    start_timeout: float = 30.0,
) -> Iterator[RunningBroker]:
    """``polystream serve`` with one ``handler`` listener on an ephemeral loopback port.

    ``durability`` (``always``, ``interval:<ms>``, ``never``) overrides the default policy;
    ``handler_settings`` are written (already TOML-quoted values) under ``[handlers.<name>]``.
    """
    with tempfile.TemporaryDirectory(prefix=f"bench-polystream-{handler}-") as tmp:
        work = Path(tmp)
        log_file = work / "polystream.log"
        conf_lines = []
        if durability is not None:
            conf_lines.append(f'durability = "{durability}"')
        if handler_settings:
            conf_lines.append(f"[handlers.{handler}]")
            conf_lines.extend(f"{k} = {v}" for k, v in handler_settings.items())
        conf = work / "polystream.toml"
        conf.write_text("\n".join(conf_lines) + "\n")
        cmd = [sys.executable, "-m", "core.cli", "serve", "--config", str(conf),
               "--data-dir", str(work / "data"), "--log-level", "info",
               "--listener", f"{handler}={LOOPBACK}:0"]
        with open(log_file, "wb") as log:
            proc = subprocess.Popen(cmd, stdout=log, stderr=log, stdin=subprocess.DEVNULL,
                                    cwd=ROOT, start_new_session=True)
        try:
            port = _wait_listening(proc, handler, log_file, start_timeout)
            _wait_accepting(proc, LOOPBACK, port, start_timeout, log_file)
            yield RunningBroker("polystream", LOOPBACK, port, proc.pid, work, log_file,
                                version=_git_version())
        finally:
            _stop_process_group(proc)


def _wait_listening(
    proc: subprocess.Popen[bytes], handler: str, log_file: Path, timeout: float,
) -> int:
    deadline = time.monotonic() + timeout
    while True:
        for match in _LISTENING.finditer(log_file.read_text(errors="replace")):
            if match.group(4) == handler:
                return int(match.group(3))
        if proc.poll() is not None:
            raise BrokerError(f"polystream exited with {proc.returncode}:\n{_tail(log_file, 30)}")
        if time.monotonic() > deadline:
            raise BrokerError(f"polystream did not report its {handler} listener:\n"
                              f"{_tail(log_file, 30)}")
        time.sleep(0.05)


def _git_version() -> str:
    try:
        out = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
                             capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return ""
    head = out.stdout.strip()
    return f"git {head} (+ working tree)" if head else ""


def handler_registered(name: str) -> bool:
    """Whether a ``polystream.handlers`` entry point called ``name`` is installed."""
    from importlib.metadata import entry_points

    return any(ep.name == name for ep in entry_points(group="polystream.handlers"))


BrokerFactory = Callable[[], contextlib.AbstractContextManager[RunningBroker]]


@dataclass(slots=True)
class MatrixRun:
    """Every cell run on every broker, the brokers' versions, and notes on what was skipped."""

    results: list[dict[str, Any]] = field(default_factory=list)
    versions: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def run_brokers(
    names: Sequence[str], factories: dict[str, BrokerFactory], handler: str,
    run_cells: Callable[[RunningBroker], Iterator[dict[str, Any]]],
    on_cell: Callable[[dict[str, Any]], None],
) -> MatrixRun:
    """Start each named broker in turn (names must be keys of ``factories``) and collect the
    cells ``run_cells`` yields on it.  Polystream is skipped, with a note, when its ``handler``
    is not registered; a broker that fails to start is a note too."""
    run = MatrixRun()
    for name in names:
        if name == "polystream" and not handler_registered(handler):
            run.notes.append(f"polystream: no {handler!r} handler registered; skipped")
            continue
        try:
            with factories[name]() as broker:
                run.versions[name] = broker.version
                for cell in run_cells(broker):
                    run.results.append(cell)
                    on_cell(cell)
        except BrokerError as exc:
            run.notes.append(f"{name}: failed to start: {exc}")
    return run


# --- one load run ---------------------------------------------------------------------------

_READY_TIMEOUT_S = 20.0
_RESULT_GRACE_S = 40.0
_JOIN_TIMEOUT_S = 10.0


@dataclass(frozen=True, slots=True)
class Worker:
    """A load-generator entry point run in its own (forked) process.

    It is called as ``fn(*args, expected, progress, results, **kwargs)``: ``expected`` is a
    shared integer (-1 until the publisher stores how many messages it sent), ``progress`` a
    shared integer array where consumer ``i`` keeps its received count in ``progress[i]`` (the
    publisher stays at most an end-to-end window ahead of the slowest consumer) and
    ``results`` a queue.
    A consumer puts ``("ready", index, error)`` once subscribed and ``("sub", result)`` at the
    end; the publisher puts ``("pub", result)``.  Results carry ``sent``/``received``,
    ``t_first_ns``/``t_last_ns`` (``time.monotonic_ns()``), ``latencies_us``, ``cpu_s``,
    ``wall_s`` and ``error``.
    """

    fn: Callable[..., None]
    args: tuple[Any, ...]
    kwargs: dict[str, Any]


def run_load(
    broker: RunningBroker, consumers: Sequence[Worker], publisher: Worker, duration: float,
) -> dict[str, Any]:
    """Run ``consumers`` then ``publisher`` against ``broker``; return the summary figures.

    Every process is joined (or killed) before this returns, also on error; a failure is
    reported in the ``error`` field rather than raised.
    """
    ctx = multiprocessing.get_context("fork")
    results = ctx.Queue()
    expected = ctx.Value("q", -1, lock=False)
    progress = ctx.Array("q", max(1, len(consumers)), lock=False)
    procs: list[multiprocessing.process.BaseProcess] = []

    def start(worker: Worker, name: str) -> None:
        proc = ctx.Process(target=worker.fn, name=name, kwargs=worker.kwargs,
                           args=(*worker.args, expected, progress, results))
        proc.start()
        procs.append(proc)

    subs: list[Any] = []
    pub: Any = None

    def collect(phase: str, timeout: float) -> str:
        """Read results until every consumer is ``ready`` or, in phase ``done``, until every
        worker reported; return an error text if a worker died or time ran out."""
        nonlocal pub
        deadline = time.monotonic() + timeout
        ready = 0
        n = len(consumers)
        while ready < n if phase == "ready" else (pub is None or len(subs) < n):
            try:
                kind, *rest = results.get(timeout=0.5)
            except queue.Empty:
                dead = [p.name for p in procs if p.exitcode not in (None, 0)]
                if dead:
                    return f"load generator process(es) {', '.join(dead)} failed"
                if time.monotonic() > deadline:
                    return "timed out waiting for the load generator"
                continue
            if kind == "ready":
                ready += 1
                if rest[1]:
                    return f"consumer {rest[0]}: {rest[1]}"
            elif kind == "sub":
                subs.append(rest[0])
            elif kind == "pub":
                pub = rest[0]
        return ""

    try:
        for i, worker in enumerate(consumers):
            start(worker, f"consumer-{i}")
        if error := collect("ready", _READY_TIMEOUT_S):
            return {"error": error[:500]}
        cpu0, machine0 = broker.cpu_seconds(), machine_busy_seconds()
        start(publisher, "publisher")
        if error := collect("done", duration + _RESULT_GRACE_S):
            return {"error": error[:500]}
        cpu_used, machine1 = broker.cpu_seconds() - cpu0, machine_busy_seconds()
    finally:
        expected.value = max(expected.value, 0)  # lets consumers stop if the publisher died
        for proc in procs:
            proc.join(timeout=_JOIN_TIMEOUT_S)
            if proc.is_alive():
                proc.kill()
                proc.join(timeout=5)
        results.close()
    machine = (machine1[0] - machine0[0]) / max(1e-9, machine1[1] - machine0[1])
    return summarise(pub, subs, cpu_used, machine)


def summarise(
    pub: Any, subs: Sequence[Any], cpu_used: float, machine_busy: float,
) -> dict[str, Any]:
    """Rates, loss, latency percentiles and CPU figures of one run (see :class:`Worker`).

    ``broker_cpu_share`` is broker CPU over the publish → last delivery span (1.0 = one core);
    ``machine_busy`` is the whole machine's busy share (all cores, other users included).
    """
    errors = [e for e in [pub.error, *(s.error for s in subs)] if e]
    delivered = sum(s.received for s in subs)
    send_s = max(1e-9, (pub.t_last_ns - pub.t_first_ns) / 1e9)
    last_rx = max((s.t_last_ns for s in subs), default=0)
    span_s = max(1e-9, (last_rx - pub.t_first_ns) / 1e9) if last_rx else float("nan")
    latencies = sorted(array("q", b"".join(s.latencies_us.tobytes() for s in subs)))
    gen_share = [r.cpu_s / r.wall_s for r in (pub, *subs) if r.wall_s > 0]
    return {
        "sent": pub.sent,
        "delivered": delivered,
        "missing": pub.sent * len(subs) - delivered,
        "in_rate": pub.sent / send_s,
        "out_rate": delivered / span_s,
        "broker_cpu_s": cpu_used,
        "broker_cpu_share": cpu_used / span_s,
        "machine_busy": machine_busy,
        "msgs_per_cpu_s": delivered / cpu_used if cpu_used > 0 else float("nan"),
        "p50_ms": percentile(latencies, 0.50) / 1000,
        "p99_ms": percentile(latencies, 0.99) / 1000,
        "samples": len(latencies),
        "gen_cpu_share": max(gen_share, default=float("nan")),
        "error": "; ".join(errors)[:500],
    }


# --- reporting helpers shared by the benchmarks ---------------------------------------------


def percentile(sorted_values: Sequence[int], q: float) -> float:
    """The ``q``-quantile (0..1, nearest rank) of already sorted values; NaN when empty."""
    if not sorted_values:
        return float("nan")
    rank = min(len(sorted_values) - 1, max(0, math.ceil(q * len(sorted_values)) - 1))
    return float(sorted_values[rank])


def fmt(value: Any, digits: int = 0) -> str:
    """A table cell: ``-`` for missing, thousands separators, NaN as ``nan``."""
    if value is None:
        return "-"
    if isinstance(value, float):
        return "nan" if value != value else f"{value:,.{digits}f}"
    return str(value)


def format_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Right-aligned plain-text table."""
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h)
              for i, h in enumerate(headers)]
    lines = ["  ".join(h.rjust(w) for h, w in zip(headers, widths, strict=True))]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(c.rjust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
    return "\n".join(lines)
