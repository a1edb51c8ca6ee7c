"""Cross-protocol throughput next to same-protocol throughput, on one Polystream server.

Run from the repository root (takes well under a minute with the defaults)::

    .venv/bin/python bench/interop_bench.py [--count 20000] [--size 1024] [--durability never]

One ``polystream serve`` with Kafka, AMQP and MQTT listeners; five paths, each with the same
message count and size, one producer and one consumer (the consumer in its own process,
attached and warmed up by one message end to end before the clock starts), real clients:

* same protocol: MQTT → MQTT, Kafka → Kafka, AMQP → AMQP;
* cross protocol: MQTT → Kafka, Kafka → AMQP.

Clients: paho-mqtt (MQTT 5, QoS 1, up to ``--window`` publications in flight), confluent-kafka
(acks=all, lingering producer; consumer assigned from the beginning), pika (publisher confirms
off; a queue bound to the exchange, basic.consume with a prefetch of ``--window``).

Reported per path: producer rate (msg/s until the producer has handed everything over and had
it acknowledged), end-to-end rate (count ÷ time from the first publish to the last delivery),
broker CPU seconds, and delivered messages per broker CPU-second.  The ratio table divides
each cross-protocol path by the same-protocol path of its producer and of its consumer.  Figures
depend on this machine and on the client libraries (pure-Python pika and paho are often the
limit); they are for comparison within one run, never asserted on.
"""

from __future__ import annotations

import argparse
import contextlib
import multiprocessing as mp
import os
import queue
import re
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
if str(BENCH) not in sys.path:
    sys.path.insert(0, str(BENCH))

import peers  # noqa: E402

_LISTENING = re.compile(r"listening: (\S+) on (\S+):(\d+) \(handler (\S+)\)")
START_TIMEOUT_S = 30.0
RUN_TIMEOUT_S = 60.0
#: What a consumer reports once it has received the warm-up message.
WARM = "warm"
PATHS = (("mqtt", "mqtt"), ("kafka", "kafka"), ("amqp", "amqp"), ("mqtt", "kafka"),
         ("kafka", "amqp"))


@dataclass(frozen=True)
class Server:
    """A running ``polystream serve`` with one listener per protocol."""

    pid: int
    ports: dict[str, int]
    host: str = "127.0.0.1"


@contextlib.contextmanager
def run_server(durability: str) -> Iterator[Server]:
    """Start ``polystream serve`` (Kafka, AMQP, MQTT on ephemeral ports); stop it on exit."""
    with tempfile.TemporaryDirectory(prefix="bench-interop-") as tmp:
        work = Path(tmp)
        conf = work / "polystream.toml"
        conf.write_text(f'durability = "{durability}"\n[handlers.mqtt]\n'
                        "topic_scan_interval = 0.2\nreceive_maximum = 1000\n")
        log_path = work / "server.log"
        cmd = [sys.executable, "-m", "core.cli", "serve", "--config", str(conf),
               "--data-dir", str(work / "data"), "--log-level", "info"]
        for name in ("kafka", "amqp", "mqtt"):
            cmd += ["--listener", f"{name}=127.0.0.1:0"]
        env = dict(os.environ, PYTHONPATH=str(ROOT))
        with open(log_path, "wb") as log:
            proc = subprocess.Popen(cmd, stdout=log, stderr=log, stdin=subprocess.DEVNULL,
                                    cwd=ROOT, env=env, start_new_session=True)
        try:
            yield Server(proc.pid, _wait_ports(proc, log_path))
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=15)


def _wait_ports(proc: subprocess.Popen[bytes], log_path: Path) -> dict[str, int]:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        text = log_path.read_text(errors="replace")
        if "ready:" in text:
            return {m[1]: int(m[3]) for m in _LISTENING.finditer(text)}
        if proc.poll() is not None:
            raise RuntimeError(f"polystream exited with {proc.returncode}:\n{text[-2000:]}")
        time.sleep(0.05)
    raise RuntimeError("polystream not ready in time")


# --- consumers (each runs in its own process) ------------------------------------------------


@dataclass(frozen=True)
class Plan:
    server: Server
    topic: str
    count: int
    size: int
    window: int


def consume_kafka(plan: Plan, ready: Any) -> float:
    import confluent_kafka as ck

    consumer = ck.Consumer({"bootstrap.servers": f"{plan.server.host}:{plan.server.ports['kafka']}",
                            "group.id": f"bench-{plan.topic}", "enable.auto.commit": False,
                            "fetch.wait.max.ms": 10})
    consumer.assign([ck.TopicPartition(plan.topic, 0, ck.OFFSET_BEGINNING)])
    ready.put("ready")
    got, deadline = 0, time.monotonic() + RUN_TIMEOUT_S
    while got < plan.count + 1 and time.monotonic() < deadline:
        for msg in consumer.consume(1000, 0.2):
            if msg.error() is None:
                got += 1
                if got == 1:
                    ready.put(WARM)
    last = time.monotonic()
    consumer.close()
    return last if got == plan.count + 1 else float("nan")


def consume_amqp(plan: Plan, ready: Any) -> float:
    import pika

    conn = pika.BlockingConnection(pika.ConnectionParameters(plan.server.host,
                                                             plan.server.ports["amqp"]))
    ch = conn.channel()
    ch.exchange_declare(plan.topic, "fanout", durable=True)
    q = f"bench-q-{plan.topic}"
    ch.queue_declare(q, exclusive=True)
    ch.queue_bind(q, plan.topic)
    ch.basic_qos(prefetch_count=plan.window)
    ready.put("ready")
    got, deadline = 0, time.monotonic() + RUN_TIMEOUT_S
    for method, _props, _body in ch.consume(q, inactivity_timeout=0.5):
        if method is not None:
            got += 1
            if got == 1:
                ready.put(WARM)
            if got % 100 == 0 or got == plan.count + 1:
                ch.basic_ack(method.delivery_tag, multiple=True)
        if got > plan.count or time.monotonic() > deadline:
            break
    last = time.monotonic()
    ch.cancel()
    conn.close()
    return last if got == plan.count + 1 else float("nan")


def consume_mqtt(plan: Plan, ready: Any) -> float:

    done: queue.Queue[float] = queue.Queue(maxsize=1)
    state = {"got": 0}

    def on_message(client: Any, userdata: Any, msg: Any) -> None:
        state["got"] += 1
        if state["got"] == 1:
            ready.put(WARM)
        if state["got"] == plan.count + 1:
            done.put(time.monotonic())

    client = _mqtt_client(plan, "sub", on_message)
    subscribed: queue.Queue[Any] = queue.Queue(maxsize=1)
    client.on_subscribe = lambda c, u, mid, codes, p: subscribed.put(codes)
    client.subscribe(f"{plan.topic}/#", 1)
    subscribed.get(timeout=START_TIMEOUT_S)
    ready.put("ready")
    try:
        return done.get(timeout=RUN_TIMEOUT_S)
    except queue.Empty:
        return float("nan")
    finally:
        client.disconnect()
        client.loop_stop()


def _mqtt_client(plan: Plan, role: str, on_message: Callable[..., None] | None = None) -> Any:
    import paho.mqtt.client as paho

    connected: queue.Queue[Any] = queue.Queue(maxsize=1)
    client = paho.Client(paho.CallbackAPIVersion.VERSION2,
                         client_id=f"bench-{role}-{plan.topic}", protocol=paho.MQTTv5)
    client.username_pw_set("guest", "guest")
    client.max_inflight_messages_set(plan.window)
    client.max_queued_messages_set(plan.window * 2)
    if on_message is not None:
        client.on_message = on_message
    client.on_connect = lambda c, u, f, rc, p: connected.put(rc)
    client.connect(plan.server.host, plan.server.ports["mqtt"])
    client.loop_start()
    rc = connected.get(timeout=START_TIMEOUT_S)
    if rc.is_failure:
        raise RuntimeError(f"MQTT connect refused: {rc}")
    return client


CONSUMERS: dict[str, Callable[[Plan, Any], float]] = {
    "kafka": consume_kafka, "amqp": consume_amqp, "mqtt": consume_mqtt,
}


def _consumer_main(kind: str, plan: Plan, ready: Any, result: Any) -> None:
    try:
        result.put(CONSUMERS[kind](plan, ready))
    except Exception as exc:  # reported by the parent
        ready.put(f"error: {exc!r}")
        result.put(float("nan"))


# --- producers (in the parent process) --------------------------------------------------------


def produce_kafka(plan: Plan, payload: bytes) -> None:
    import confluent_kafka as ck

    producer = ck.Producer({"bootstrap.servers": f"{plan.server.host}:{plan.server.ports['kafka']}",
                            "acks": "all", "linger.ms": 5, "enable.idempotence": False})
    for i in range(plan.count):
        while True:
            try:
                producer.produce(plan.topic, payload, f"k{i % 8}".encode(), partition=0)
                break
            except BufferError:
                producer.poll(0.01)
        producer.poll(0)
    if producer.flush(RUN_TIMEOUT_S):
        raise RuntimeError("kafka producer: messages left unacknowledged")


def produce_amqp(plan: Plan, payload: bytes) -> None:
    import pika

    conn = pika.BlockingConnection(pika.ConnectionParameters(plan.server.host,
                                                             plan.server.ports["amqp"]))
    ch = conn.channel()
    ch.exchange_declare(plan.topic, "fanout", durable=True)
    for i in range(plan.count):
        ch.basic_publish(plan.topic, f"k{i % 8}", payload)
    conn.close()


def produce_mqtt(plan: Plan, payload: bytes) -> None:
    import paho.mqtt.client as paho

    client = _mqtt_client(plan, "pub")
    infos = []
    for i in range(plan.count):
        while True:  # paho's queue is bounded (2 x window): wait for room
            info = client.publish(f"{plan.topic}/k{i % 8}", payload, 1)
            if info.rc != paho.MQTT_ERR_QUEUE_SIZE:
                break
            time.sleep(0.001)
        infos.append(info)
    for info in infos:
        info.wait_for_publish(RUN_TIMEOUT_S)
    client.disconnect()
    client.loop_stop()


PRODUCERS: dict[str, Callable[[Plan, bytes], None]] = {
    "kafka": produce_kafka, "amqp": produce_amqp, "mqtt": produce_mqtt,
}


def prepare_topic(server: Server, topic: str) -> None:
    """Create the core topic through Kafka (one partition) so every protocol sees it."""
    from confluent_kafka.admin import AdminClient, NewTopic

    admin = AdminClient({"bootstrap.servers": f"{server.host}:{server.ports['kafka']}"})
    for future in admin.create_topics([NewTopic(topic, 1)]).values():
        future.result(START_TIMEOUT_S)


def run_path(server: Server, producer: str, consumer: str, count: int, size: int,
             window: int) -> dict[str, Any]:
    """One path: start the consumer process, produce, wait for the last delivery."""
    topic = f"bench-{producer}-{consumer}-{os.getpid()}"
    prepare_topic(server, topic)
    plan = Plan(server, topic, count, size, window)
    ctx = mp.get_context("spawn")
    ready, result = ctx.Queue(maxsize=2), ctx.Queue(maxsize=2)
    proc = ctx.Process(target=_consumer_main, args=(consumer, plan, ready, result))
    proc.start()
    try:
        payload = bytes(i % 251 for i in range(size))
        # attached, then one warm-up message end to end: connections and fetch loops are up
        for expected, produce in (("ready", False), (WARM, True)):
            if produce:
                PRODUCERS[producer](Plan(server, topic, 1, size, window), payload)
            status = ready.get(timeout=START_TIMEOUT_S)
            if status != expected:
                raise RuntimeError(f"{consumer} consumer: {status}")
        cpu0 = peers.tree_cpu_seconds(server.pid)
        start = time.monotonic()
        PRODUCERS[producer](plan, payload)
        produced = time.monotonic()
        last = result.get(timeout=RUN_TIMEOUT_S)
        cpu = peers.tree_cpu_seconds(server.pid) - cpu0
    finally:
        proc.join(timeout=10)
        if proc.is_alive():
            proc.kill()
            proc.join(timeout=10)
    e2e = count / (last - start) if last == last else float("nan")
    return {"path": f"{producer} -> {consumer}", "producer": producer, "consumer": consumer,
            "produce_rate": count / (produced - start), "e2e_rate": e2e, "broker_cpu_s": cpu,
            "per_cpu_s": count / cpu if cpu > 0 else float("nan")}


def results_table(rows: list[dict[str, Any]]) -> str:
    f = peers.fmt
    return peers.format_table(
        ["path", "produce msg/s", "e2e msg/s", "broker CPU s", "msg/broker CPU-s"],
        [[r["path"], f(r["produce_rate"]), f(r["e2e_rate"]), f(r["broker_cpu_s"], 2),
          f(r["per_cpu_s"])] for r in rows],
    )


def ratio_table(rows: list[dict[str, Any]]) -> str:
    """Each cross-protocol path ÷ the same-protocol paths of its producer and consumer."""
    same = {r["producer"]: r for r in rows if r["producer"] == r["consumer"]}
    out = []
    for r in rows:
        if r["producer"] == r["consumer"]:
            continue
        for side in ("producer", "consumer"):
            base = same.get(r[side])
            if base is None:
                continue
            out.append([r["path"], base["path"],
                        peers.fmt(r["e2e_rate"] / base["e2e_rate"], 2),
                        peers.fmt(r["per_cpu_s"] / base["per_cpu_s"], 2)])
    return peers.format_table(["cross path", "vs same-protocol", "e2e ratio", "per-CPU ratio"],
                              out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=20000, help="messages per path")
    parser.add_argument("--size", type=int, default=1024, help="payload bytes")
    parser.add_argument("--window", type=int, default=500,
                        help="MQTT in-flight publications and AMQP prefetch")
    parser.add_argument("--durability", default="never", help="always | interval:<ms> | never")
    args = parser.parse_args(argv)
    rows = []
    began = time.monotonic()
    with run_server(args.durability) as server:
        for producer, consumer in PATHS:
            row = run_path(server, producer, consumer, args.count, args.size, args.window)
            rows.append(row)
            print(f"  {row['path']}: e2e {peers.fmt(row['e2e_rate'])} msg/s", file=sys.stderr)
    print(f"\n{args.count} messages of {args.size} B per path, durability {args.durability}, "
          f"{time.monotonic() - began:.0f} s in all\n")
    print(results_table(rows))
    print()
    print(ratio_table(rows))
    return 0 if all(r["e2e_rate"] == r["e2e_rate"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
