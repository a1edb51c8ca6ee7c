"""Kafka throughput benchmark: a real client against ``polystream serve``, on this machine.

Run: ``python bench/kafka_bench.py [--seconds N] [--profile DIR]``  (about 4 x N seconds plus
start-up; N defaults to 6)

1. Starts ``polystream serve`` (Kafka listener only, an ephemeral loopback port, a fresh data
   directory next to the repository -- the same disk as ``/work`` -- and durability
   ``always``) as a subprocess.
2. Measures this disk's synced-write limit in the same run: a plain Python ``write`` +
   ``fdatasync`` loop at the producer's batch size (1 MiB), before and after the produce run
   (the disk is shared and its speed drifts; the mean is the reference).
3. Produces 1 KiB records for N seconds with a confluent-kafka ``Producer`` (``acks=all``,
   ``linger.ms=5``, ``batch.size=1048576``, idempotence as the client's default unless
   ``--idempotence``), waits for every delivery report; MB/s, msg/s, the average batch size the
   client reports, and the broker's CPU seconds per MB (``/proc/<pid>/stat``).
4. Reads everything back with a confluent-kafka ``Consumer`` (assigned to partition 0 from
   offset 0, large fetch budgets): the data was just written, so this is a read from the page
   cache; MB/s, msg/s, broker CPU seconds per MB.
5. Prints the ratios against the targets: produce >= 50% of the synced-write limit, consume
   >= 500 MB/s.

``--profile DIR`` runs ``py-spy record`` on the broker during each phase, leaves
``DIR/produce.txt`` and ``DIR/consume.txt`` (collapsed stacks, the input of any flame-graph
tool) and prints the top functions of each by own and by inclusive samples.  Every process
started is stopped (SIGTERM, then SIGKILL) and the scratch directory is removed on exit.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import peers  # bench/ is the script's directory
from storage_bench import raw_limit

ROOT = Path(__file__).resolve().parent.parent
MB = 1e6
RECORD_BYTES = 1024
BATCH_BYTES = 1 << 20
TOPIC = "bench-kafka"
PRODUCE_TARGET = 0.5  # of the synced-write limit
CONSUME_TARGET_MB = 500.0
_LISTENING = re.compile(r"listening: kafka on 127\.0\.0\.1:(\d+)")
_READY = re.compile(r"\bready: \d+ listener")


def own_cpu_seconds() -> float:
    """User + system CPU seconds of this process (the client library's threads included)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


class Meter:
    """Wall time and CPU seconds (broker, this client, everything else) over slices of a run."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.seconds = self.broker = self.client = self.machine = 0.0
        self._marks = (0.0, 0.0, 0.0, 0.0)

    def _now(self) -> tuple[float, float, float, float]:
        return (time.perf_counter(), peers.process_cpu_seconds(self.pid), own_cpu_seconds(),
                peers.machine_busy_seconds()[0])

    def start(self) -> None:
        self._marks = self._now()

    def stop(self) -> None:
        now = self._now()
        self.seconds += now[0] - self._marks[0]
        self.broker += now[1] - self._marks[1]
        self.client += now[2] - self._marks[2]
        self.machine += now[3] - self._marks[3]

    def fill(self, phase: Phase) -> None:
        phase.seconds = self.seconds
        phase.broker_cpu = self.broker
        phase.client_cpu = self.client
        phase.other_cpu = max(0.0, self.machine - self.broker - self.client)


@dataclass
class Server:
    """A running ``polystream serve`` subprocess."""

    proc: subprocess.Popen[bytes]
    log_path: Path
    port: int = 0

    @property
    def pid(self) -> int:
        return self.proc.pid

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


@contextlib.contextmanager
def run_server(scratch: Path, log_level: str) -> Iterator[Server]:
    """Start the broker with a fresh data directory; yield once it is ready; stop it."""
    config = scratch / "polystream.toml"
    config.write_text('durability = "always"\n')
    log_path = scratch / "server.log"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]), PYTHONUNBUFFERED="1")
    argv = [sys.executable, "-m", "core.cli", "serve", "--config", str(config),
            "--data-dir", str(scratch / "data"), "--listener", "kafka=127.0.0.1:0",
            "--log-level", log_level]
    with open(log_path, "wb") as log_file:
        proc = subprocess.Popen(argv, cwd=scratch, stdin=subprocess.DEVNULL, stdout=log_file,
                                stderr=subprocess.STDOUT, start_new_session=True, env=env)
    server = Server(proc, log_path)
    try:
        deadline = time.monotonic() + 30
        while True:
            text = log_path.read_text(errors="replace")
            if _READY.search(text) and (m := _LISTENING.search(text)):
                server.port = int(m.group(1))
                break
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"polystream serve did not start; log:\n{text[-3000:]}")
            time.sleep(0.05)
        yield server
    finally:
        server.stop()


@contextlib.contextmanager
def profiling(pid: int, out: Path | None) -> Iterator[None]:
    """``py-spy record`` the broker for the duration of the block (when ``out`` is set)."""
    if out is None:
        yield
        return
    spy = Path(sys.executable).with_name("py-spy")
    proc = subprocess.Popen([str(spy), "record", "--pid", str(pid), "--output", str(out),
                             "--format", "raw", "--rate", "250", "--nonblocking"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        time.sleep(0.5)
        yield
    finally:
        proc.send_signal(signal.SIGINT)  # py-spy writes its output on SIGINT
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def profile_summary(path: Path, top: int) -> str:
    """The ``top`` functions by own and by inclusive samples in a py-spy ``raw`` profile."""
    own: dict[str, int] = {}
    inclusive: dict[str, int] = {}
    total = 0
    for line in path.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        total += count
        frames = [re.sub(r":\d+\)$", ")", f) for f in stack.split(";")]
        own[frames[-1]] = own.get(frames[-1], 0) + count
        for frame in set(frames):
            inclusive[frame] = inclusive.get(frame, 0) + count
    lines = [f"  {total} samples; own time:"]
    for name, count in sorted(own.items(), key=lambda kv: -kv[1])[:top]:
        lines.append(f"    {count / total:6.1%}  {name}")
    lines.append("  inclusive:")
    for name, count in sorted(inclusive.items(), key=lambda kv: -kv[1])[:top]:
        lines.append(f"    {count / total:6.1%}  {name}")
    return "\n".join(lines)


@dataclass
class Phase:
    """What one phase moved, how long it took, and what it cost the broker."""

    records: int = 0
    payload_bytes: int = 0
    seconds: float = 0.0
    broker_cpu: float = 0.0
    client_cpu: float = 0.0
    other_cpu: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def mb_s(self) -> float:
        return self.payload_bytes / self.seconds / MB

    @property
    def msg_s(self) -> float:
        return self.records / self.seconds

    @property
    def cpu_per_mb(self) -> float:
        return self.broker_cpu / (self.payload_bytes / MB)

    def costs(self) -> str:
        """Broker CPU per MB, and each side's share of a CPU during the phase."""
        busy, client = self.broker_cpu / self.seconds, self.client_cpu / self.seconds
        other = self.other_cpu / self.seconds
        return (f"broker {self.cpu_per_mb * 1000:.2f} ms CPU/MB; CPUs busy: broker {busy:.2f}, "
                f"client {client:.2f}, other processes {other:.2f} (of {os.cpu_count()})")


def produce(bootstrap: str, pid: int, seconds: float, idempotence: bool, rounds: int,
            scratch: Path) -> tuple[Phase, float]:
    """Produce 1 KiB records to partition 0 for ``seconds`` (acks=all); return the phase and
    the synced-write limit (MB/s) measured in slices interleaved with it.

    The disk is shared and its speed drifts, so -- as ``bench/storage_bench.py`` does -- the
    run is cut into ``rounds``: a slice of the raw write+fdatasync loop, then a slice of
    producing that ends once every record of it is acknowledged.
    """
    from confluent_kafka import KafkaError, Producer

    phase = Phase()
    batch_sizes: list[float] = []
    failures: list[KafkaError] = []

    def on_stats(raw: str) -> None:
        stats = json.loads(raw)
        size = stats.get("topics", {}).get(TOPIC, {}).get("batchsize", {})
        if size.get("cnt"):
            batch_sizes.append(size["avg"])

    def on_delivery(err: KafkaError | None, _msg: Any) -> None:
        if err is not None:
            failures.append(err)

    conf: dict[str, Any] = {
        "bootstrap.servers": bootstrap, "acks": "all", "linger.ms": 5,
        "batch.size": BATCH_BYTES, "compression.type": "none",
        "queue.buffering.max.kbytes": 64 * 1024, "statistics.interval.ms": 1000,
        "stats_cb": on_stats, "on_delivery": on_delivery,
    }
    if idempotence:
        conf["enable.idempotence"] = True
    producer = Producer(conf)
    payload = os.urandom(RECORD_BYTES)
    # connect and create the topic before the clock starts
    producer.produce(TOPIC, payload, partition=0)
    if producer.flush(30) != 0 or failures:
        raise RuntimeError(f"warm-up produce failed: {failures[:1]}")
    sent = 1
    raw_slice = min(1.0, max(0.3, seconds / rounds / 2))
    raw_mb = 0.0
    meter = Meter(pid)
    for _ in range(rounds):
        raw_mb += raw_limit(scratch, raw_slice, BATCH_BYTES)[0] / rounds
        meter.start()
        deadline = time.perf_counter() + seconds / rounds
        while time.perf_counter() < deadline:
            for _ in range(1000):
                try:
                    producer.produce(TOPIC, payload, partition=0)
                except BufferError:
                    producer.poll(0.005)
                    break
                sent += 1
            producer.poll(0)
        left = producer.flush(60)
        meter.stop()
        if left or failures:
            raise RuntimeError(f"{left} records undelivered, {len(failures)} failed: "
                               f"{failures[:1]}")
    meter.fill(phase)
    phase.records = sent - 1
    phase.payload_bytes = phase.records * RECORD_BYTES
    phase.extra["total_records"] = sent
    phase.extra["batch_bytes"] = sum(batch_sizes) / len(batch_sizes) if batch_sizes else 0.0
    return phase, raw_mb


def consume(bootstrap: str, pid: int, total: int) -> Phase:
    """Read ``total`` records of partition 0 from offset 0, with large fetch budgets."""
    from confluent_kafka import Consumer, KafkaException, TopicPartition

    consumer = Consumer({
        "bootstrap.servers": bootstrap, "group.id": "kafka-bench", "enable.auto.commit": False,
        "fetch.max.bytes": 64 << 20, "max.partition.fetch.bytes": 32 << 20,
        "receive.message.max.bytes": (64 << 20) + 4096,
        "queued.max.messages.kbytes": 256 * 1024, "fetch.wait.max.ms": 100,
    })
    phase = Phase()
    try:
        consumer.assign([TopicPartition(TOPIC, 0, 0)])
        meter = Meter(pid)
        meter.start()
        deadline = time.perf_counter() + 120
        while phase.records < total and time.perf_counter() < deadline:
            # never ask for more than is left: consume() waits for num_messages or timeout
            wanted = min(10000, total - phase.records)
            for msg in consumer.consume(num_messages=wanted, timeout=1.0):
                err = msg.error()
                if err is not None:
                    raise KafkaException(err)
                phase.records += 1
                phase.payload_bytes += len(msg)  # the value's length, without copying it
        meter.stop()
        meter.fill(phase)
    finally:
        consumer.close()
    if phase.records < total:
        raise RuntimeError(f"consumed {phase.records} of {total} records")
    return phase


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=6.0, help="length of the produce run")
    parser.add_argument("--rounds", type=int, default=3,
                        help="raw-limit/produce slices the produce run is cut into")
    parser.add_argument("--dir", type=Path, default=ROOT.parent, help="scratch parent directory")
    parser.add_argument("--idempotence", action="store_true",
                        help="enable.idempotence=true (librdkafka's default is false)")
    parser.add_argument("--profile", type=Path, metavar="DIR",
                        help="py-spy profiles of the broker per phase into DIR")
    parser.add_argument("--top", type=int, default=25, help="functions listed per profile")
    parser.add_argument("--log-level", default="warning", help="the broker's log level")
    args = parser.parse_args()
    scratch = Path(tempfile.mkdtemp(prefix="polystream-kafka-bench-", dir=args.dir))
    if args.profile:
        args.profile.mkdir(parents=True, exist_ok=True)
    try:
        with run_server(scratch, "info" if args.log_level == "warning" else args.log_level) as srv:
            bootstrap = f"127.0.0.1:{srv.port}"
            print(f"scratch {scratch}; broker pid {srv.pid} on {bootstrap}; "
                  f"records {RECORD_BYTES} B, batch.size {BATCH_BYTES} B, durability always")
            with profiling(srv.pid, args.profile and args.profile / "produce.txt"):
                prod, raw = produce(bootstrap, srv.pid, args.seconds, args.idempotence,
                                    args.rounds, scratch)
            with profiling(srv.pid, args.profile and args.profile / "consume.txt"):
                cons = consume(bootstrap, srv.pid, prod.extra["total_records"])
            cons.records -= 1  # the warm-up record, not counted in the produce figures
            cons.payload_bytes -= RECORD_BYTES
        print(f"synced-write limit ({BATCH_BYTES >> 10} KiB writes)  {raw:8.1f} MB/s "
              f"(measured in {args.rounds} slices between the produce slices)")
        print(f"produce  {prod.mb_s:8.1f} MB/s {prod.msg_s:9.0f} msg/s  "
              f"{prod.records} records in {prod.seconds:.2f} s, avg batch "
              f"{prod.extra['batch_bytes'] / 1024:.0f} KiB\n         {prod.costs()}")
        print(f"consume  {cons.mb_s:8.1f} MB/s {cons.msg_s:9.0f} msg/s  "
              f"{cons.records} records in {cons.seconds:.2f} s\n         {cons.costs()}")
        ratio = prod.mb_s / raw
        print(f"produce / synced-write limit = {ratio:5.0%}  (target >= {PRODUCE_TARGET:.0%}: "
              f"{'met' if ratio >= PRODUCE_TARGET else 'NOT met'})")
        ratio = cons.mb_s / CONSUME_TARGET_MB
        print(f"consume / {CONSUME_TARGET_MB:.0f} MB/s       = {ratio:5.0%}  (target >= 100%: "
              f"{'met' if ratio >= 1 else 'NOT met'})")
        if args.profile:
            for name in ("produce", "consume"):
                print(f"profile of the broker during {name} ({args.profile / name}.txt):")
                print(profile_summary(args.profile / f"{name}.txt", args.top))
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
