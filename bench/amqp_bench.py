"""AMQP 0-9-1 benchmark: the same load generator against rabbitmq-server and Polystream.

Run from the repository root (see ``bench/README.md``)::

    .venv/bin/python bench/amqp_bench.py [--quick] [--json out.json] [--brokers B1,B2]

One publisher with pipelined publisher confirms (``--window`` unconfirmed) and one consumer
with ``basic.qos`` prefetch (``--prefetch``, acks with ``multiple`` every prefetch/4, or each
delivery alone with ``--single-acks``, as pika/aio-pika/kombu do), through
the default exchange to one queue.  Matrix: 100 B and 1 KiB payloads; *transient*
(non-durable queue, delivery mode 1) and *persistent* (durable queue, delivery mode 2).  Each
cell is a **max** run (as fast as the confirm window and the end-to-end window, at most
``--e2e-window`` messages ahead of the consumer, allow; ``--duration`` seconds) and a
**rate** run (paced at ``--rate`` msg/s) for p50/p99 publish → delivery latency.

The ratio table divides Polystream's figures by rabbitmq's; targets: ≥ 1.0 transient with
confirms and ≥ 1.5 persistent-durable, judged on delivered messages per broker CPU-second
(the msg/s ratio is printed beside it).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
if str(BENCH.parent) not in sys.path:
    sys.path.insert(0, str(BENCH.parent))

import loadgen_amqp as gen  # noqa: E402
import peers  # noqa: E402

TARGETS = {"transient": 1.0, "persistent": 1.5}


def run_cell(
    broker: peers.RunningBroker, *, size: int, persistent: bool, duration: float,
    rate: float | None, window: int, prefetch: int, e2e_window: int,
    single_acks: bool = False,
) -> dict[str, Any]:
    """One run: a consumer process, then a publisher process, against ``broker``."""
    target = gen.Target(broker.host, broker.port)
    kind = "persistent" if persistent else "transient"
    plan = gen.QueuePlan(f"bench-{kind}-{size}-{uuid.uuid4().hex[:8]}", size, persistent,
                         duration, rate, window, prefetch, e2e_window, single_acks)
    cell: dict[str, Any] = {
        "broker": broker.name, "mode": "rate" if rate else "max", "kind": kind, "size": size,
        "duration_s": duration, "target_rate": rate, "error": "",
    }
    consumer = peers.Worker(gen.run_consumer, (0, target, plan), {"keep_latency": bool(rate)})
    publisher = peers.Worker(gen.run_publisher, (target, plan), {})
    cell.update(peers.run_load(broker, [consumer], publisher, duration))
    return cell


def _key(c: dict[str, Any]) -> tuple[str, str, int]:
    return c["broker"], c["kind"], c["size"]


def _pct(share: Any) -> float | None:
    return None if share is None else 100.0 * share


def results_table(cells: list[dict[str, Any]]) -> str:
    """One row per broker and cell: the max run's figures beside the rate run's latency."""
    rate_runs = {_key(c): c for c in cells if c["mode"] == "rate"}
    rows = []
    for c in cells:
        if c["mode"] != "max":
            continue
        r = rate_runs.get(_key(c), {})
        f = peers.fmt
        rows.append([
            c["broker"], c["kind"], str(c["size"]), f(c.get("in_rate")), f(c.get("out_rate")),
            f(c.get("missing")), f(c.get("msgs_per_cpu_s")), f(_pct(c.get("broker_cpu_share"))),
            f(_pct(c.get("gen_cpu_share"))), f(_pct(c.get("machine_busy"))),
            f(r.get("target_rate")), f(r.get("in_rate")),
            f(r.get("p50_ms"), 2), f(r.get("p99_ms"), 2), f(r.get("missing")),
            (c.get("error") or r.get("error") or "")[:60],
        ])
    return peers.format_table(
        ["broker", "kind", "bytes", "in msg/s", "out msg/s", "missing", "msg/CPU-s", "brk%",
         "gen%", "mach%", "rate", "achieved", "p50 ms", "p99 ms", "missing", "error"], rows)


def ratio_rows(cells: list[dict[str, Any]], peer: str) -> list[dict[str, Any]]:
    """Polystream ÷ ``peer`` per cell (max runs without errors)."""
    ok = {_key(c): c for c in cells if c["mode"] == "max" and not c.get("error")}
    rows = []
    for (broker, kind, size), ps in ok.items():
        pe = ok.get((peer, kind, size))
        if broker != "polystream" or pe is None:
            continue
        rows.append({
            "kind": kind, "size": size,
            "cpu_ratio": ps["msgs_per_cpu_s"] / pe["msgs_per_cpu_s"],
            "throughput_ratio": ps["out_rate"] / pe["out_rate"],
            "target": TARGETS[kind],
        })
    return rows


def ratio_table(rows: list[dict[str, Any]], peer: str) -> str:
    """The ratio rows with their targets."""
    f = peers.fmt
    lines = [[r["kind"], str(r["size"]), f(r["cpu_ratio"], 2), f(r["throughput_ratio"], 2),
              f(r["target"], 1), "ok" if r["cpu_ratio"] >= r["target"] else "MISS"]
             for r in rows]
    return peers.format_table(
        ["kind", "bytes", f"msg/CPU-s ÷ {peer}", "msg/s ratio", "target", ""], lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the matrix; print the tables; write JSON when asked."""
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    ap.add_argument("--brokers", default="rabbitmq,polystream",
                    help="comma-separated: rabbitmq, polystream")
    ap.add_argument("--quick", action="store_true",
                    help="smoke run: 100 B, transient and persistent, 0.5 s runs")
    ap.add_argument("--duration", type=float, default=2.0, help="seconds per run (default 2)")
    ap.add_argument("--rate", type=float, default=10_000, help="paced rate for latency")
    ap.add_argument("--window", type=int, default=1000, help="unconfirmed publications")
    ap.add_argument("--prefetch", type=int, default=1000, help="consumer prefetch count")
    ap.add_argument("--e2e-window", type=int, default=5000,
                    help="messages the publisher may be ahead of the consumer")
    ap.add_argument("--single-acks", action="store_true",
                    help="the consumer acks each delivery alone (multiple=false), as pika, "
                         "aio-pika and kombu do; the acks of one read share one write")
    ap.add_argument("--sizes", default="100,1024")
    ap.add_argument("--kinds", default="transient,persistent")
    ap.add_argument("--durability", default=None,
                    help="Polystream durability policy (default: its own, fsync always)")
    ap.add_argument("--json", type=Path, help="write all results here")
    args = ap.parse_args(argv)
    duration = 0.5 if args.quick else args.duration
    sizes = [int(s) for s in args.sizes.split(",") if s]
    if args.quick:
        sizes = sizes[:1]
    kinds = [k for k in args.kinds.split(",") if k]
    if unknown := set(kinds) - set(TARGETS):
        ap.error(f"unknown kinds {sorted(unknown)}")
    factories: dict[str, peers.BrokerFactory] = {
        "rabbitmq": peers.rabbitmq,
        "polystream": lambda: peers.polystream("amqp", durability=args.durability),
    }
    started = time.monotonic()
    names = args.brokers.split(",")
    if missing := [n for n in names if n not in factories]:
        ap.error(f"unknown broker {missing[0]!r}")

    def cells(broker: peers.RunningBroker) -> Iterator[dict[str, Any]]:
        for kind in kinds:
            for size in sizes:
                for rate in (None, args.rate):
                    yield run_cell(broker, size=size, persistent=kind == "persistent",
                                   duration=duration, rate=rate, window=args.window,
                                   prefetch=args.prefetch, e2e_window=args.e2e_window,
                                   single_acks=args.single_acks)

    run = peers.run_brokers(names, factories, "amqp", cells, _progress)
    results, versions, notes = run.results, run.versions, run.notes
    print()
    print(results_table(results))
    ratios = ratio_rows(results, "rabbitmq")
    if ratios:
        print()
        print(ratio_table(ratios, "rabbitmq"))
    for note in notes:
        print(f"note: {note}")
    print(f"\nversions: {versions}; {time.monotonic() - started:.0f} s in all")
    if args.json:
        args.json.write_text(json.dumps(
            {"benchmark": "amqp", "versions": versions, "notes": notes,
             "settings": {k: (str(v) if isinstance(v, Path) else v)
                          for k, v in vars(args).items()},
             "results": results, "ratios": ratios, "targets": TARGETS}, indent=2))
    return 1 if notes or any(c.get("error") for c in results) else 0


def _progress(cell: dict[str, Any]) -> None:
    extra = (f"p99 {cell.get('p99_ms', float('nan')):.2f} ms" if cell["mode"] == "rate"
             else f"{cell.get('out_rate', float('nan')):,.0f} out msg/s")
    print(f"  {cell['broker']:<10} {cell['kind']:<10} {cell['size']:>5} B {cell['mode']:<4} "
          f"{extra} {cell.get('error', '')[:80]}", file=sys.stderr, flush=True)


if __name__ == "__main__":
    sys.exit(main())
