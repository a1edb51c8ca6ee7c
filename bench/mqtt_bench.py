"""MQTT benchmark: the same load generator against mosquitto and Polystream, side by side.

Run from the repository root (see ``bench/README.md``)::

    .venv/bin/python bench/mqtt_bench.py [--quick] [--json out.json] [--brokers B1,B2]

Matrix: fan-out 1 → 1 and 1 → 10; QoS 0, 1, 2; payloads of 100 B and 1 KiB.  Each cell is two
short runs on one broker process started for the whole matrix:

* **max**: one publisher as fast as it can (QoS 1/2 with a window of ``--window`` unacknowledged
  publications, and never more than ``--e2e-window`` messages ahead of the slowest
  subscriber) for ``--duration`` seconds; subscribers drain what was sent.  Reported: publish
  rate (in msg/s), delivery rate summed over subscribers (out msg/s), missing messages, broker CPU
  seconds over the run and delivered messages per broker CPU-second.
* **rate**: the publisher paced at ``--rate`` msg/s; p50/p99 publish → delivery latency over all
  subscribers, and the rate actually achieved.

The ratio table divides Polystream's figure by mosquitto's.  Targets printed beside it: ratio
≥ 1.0 in delivered messages per broker CPU-second at QoS 1, and p99 ≤ 5 ms at 10k msg/s.
``gen%`` is the busiest generator process's CPU share: near 100 % the generator, not the
broker, may be the limit.
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

import loadgen_mqtt as gen  # noqa: E402
import peers  # noqa: E402

TARGET_RATIO_QOS1 = 1.0
TARGET_P99_MS = 5.0


def run_cell(
    broker: peers.RunningBroker, *, fanout: int, qos: int, size: int, duration: float,
    rate: float | None, window: int, e2e_window: int, verify: bool = False,
) -> dict[str, Any]:
    """One run: ``fanout`` subscriber processes and one publisher process against ``broker``."""
    target = gen.Target(broker.host, broker.port)
    topic = f"bench{uuid.uuid4().hex[:8]}/q{qos}/s{size}"
    cell: dict[str, Any] = {
        "broker": broker.name, "mode": "rate" if rate else "max", "fanout": fanout, "qos": qos,
        "size": size, "duration_s": duration, "target_rate": rate, "error": "",
    }
    subscribers = [
        peers.Worker(gen.run_subscriber, (i, target, topic, qos),
                     {"keep_latency": rate is not None, "verify": verify})
        for i in range(fanout)
    ]
    plan = gen.PublishPlan(topic, qos, size, duration, rate, window, e2e_window)
    publisher = peers.Worker(gen.run_publisher, (target, plan), {})
    cell.update(peers.run_load(broker, subscribers, publisher, duration))
    return cell


def median_run(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The run with the median figure (``msgs_per_cpu_s`` for max runs, ``p99_ms`` for rate
    runs; an even count takes the lower middle of the figure's order), with every run's figure
    under ``repeats``.  A failed run is reported as it is."""
    if len(runs) == 1:
        return runs[0]
    failed = [r for r in runs if r.get("error")]
    if failed:
        return failed[0]
    key = "p99_ms" if runs[0]["mode"] == "rate" else "msgs_per_cpu_s"
    ranked = sorted(runs, key=lambda r: float(r.get(key) or 0.0))
    chosen = dict(ranked[(len(ranked) - 1) // 2])
    chosen["repeats"] = [r.get(key) for r in runs]
    return chosen


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
            c["broker"], f"1→{c['fanout']}", str(c["qos"]), str(c["size"]),
            f(c.get("in_rate")), f(c.get("out_rate")), f(c.get("missing")),
            f(c.get("msgs_per_cpu_s")), f(_pct(c.get("broker_cpu_share"))),
            f(_pct(c.get("gen_cpu_share"))), f(_pct(c.get("machine_busy"))),
            f(r.get("target_rate")), f(r.get("in_rate")),
            f(r.get("p50_ms"), 2), f(r.get("p99_ms"), 2), f(r.get("missing")),
            (c.get("error") or r.get("error") or "")[:60],
        ])
    return peers.format_table(
        ["broker", "fan", "qos", "bytes", "in msg/s", "out msg/s", "missing", "msg/CPU-s",
         "brk%", "gen%", "mach%", "rate", "achieved", "p50 ms", "p99 ms", "missing", "error"], rows)


def _pct(share: Any) -> float | None:
    return None if share is None else 100.0 * share


def _key(c: dict[str, Any]) -> tuple[str, int, int, int]:
    return c["broker"], c["fanout"], c["qos"], c["size"]


def ratio_rows(cells: list[dict[str, Any]], peer: str) -> list[dict[str, Any]]:
    """Polystream ÷ ``peer`` per cell: msg per broker CPU-second and out msg/s (max runs)."""
    by_key = {_key(c): c for c in cells if c["mode"] == "max" and not c.get("error")}
    rates = {_key(c): c for c in cells if c["mode"] == "rate" and not c.get("error")}
    out = []
    for (broker, fanout, qos, size), ps in by_key.items():
        if broker != "polystream" or (peer, fanout, qos, size) not in by_key:
            continue
        pe = by_key[(peer, fanout, qos, size)]
        row: dict[str, Any] = {"fanout": fanout, "qos": qos, "size": size}
        row["cpu_ratio"] = ps["msgs_per_cpu_s"] / pe["msgs_per_cpu_s"]
        row["throughput_ratio"] = ps["out_rate"] / pe["out_rate"]
        rate = rates.get(("polystream", fanout, qos, size))
        row["ps_p99_ms"] = rate["p99_ms"] if rate else None
        row["cpu_target"] = TARGET_RATIO_QOS1 if qos == 1 else None
        out.append(row)
    return out


def ratio_table(rows: list[dict[str, Any]], peer: str, rate: float) -> str:
    """The ratio rows with the targets beside them."""
    lines = []
    for r in rows:
        cpu_ok = "" if r["cpu_target"] is None else (
            "ok" if r["cpu_ratio"] >= r["cpu_target"] else "MISS")
        p99 = r["ps_p99_ms"]
        p99_ok = "" if p99 is None or rate != 10_000 or r["qos"] == 2 else (
            "ok" if p99 <= TARGET_P99_MS else "MISS")
        f = peers.fmt
        lines.append([f"1→{r['fanout']}", str(r["qos"]), str(r["size"]), f(r["cpu_ratio"], 2),
                      f(r["cpu_target"], 1), cpu_ok, f(r["throughput_ratio"], 2), f(p99, 2),
                      p99_ok])
    return peers.format_table(
        ["fan", "qos", "bytes", f"msg/CPU-s ÷ {peer}", "target", "", "out msg/s ratio",
         f"ps p99 ms @{rate:g}/s", f"≤{TARGET_P99_MS:g}"], lines)


def matrix(quick: bool, fanouts: Sequence[int], qoss: Sequence[int],
           sizes: Sequence[int]) -> Iterator[tuple[int, int, int]]:
    """The cells to run (``--quick``: 1 → 1 and 100 B only)."""
    for fanout in fanouts if not quick else [1]:
        for qos in qoss:
            for size in sizes if not quick else [sizes[0]]:
                yield fanout, qos, size


def main(argv: Sequence[str] | None = None) -> int:
    """Run the matrix; print the tables; write JSON when asked."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--brokers", default="mosquitto,polystream",
                    help="comma-separated: mosquitto, polystream")
    ap.add_argument("--quick", action="store_true", help="smoke run: 1→1, 100 B, 0.5 s runs")
    ap.add_argument("--duration", type=float, default=2.0, help="seconds per run (default 2)")
    ap.add_argument("--rate", type=float, default=10_000, help="paced rate for latency")
    ap.add_argument("--window", type=int, default=100,
                    help="QoS 1/2 publications in flight (Polystream's receive maximum is 100)")
    ap.add_argument("--e2e-window", type=int, default=5000,
                    help="messages the publisher may be ahead of the slowest subscriber")
    ap.add_argument("--fanout", default="1,10")
    ap.add_argument("--qos", default="0,1,2")
    ap.add_argument("--sizes", default="100,1024")
    ap.add_argument("--durability", default=None,
                    help="Polystream durability policy (default: its own, fsync always)")
    ap.add_argument("--verify", action="store_true",
                    help="also decode every received packet with the codec's PacketReader")
    ap.add_argument("--repeat", type=int, default=1,
                    help="runs per cell; the run with the median figure is reported (msg/CPU-s "
                         "for max runs, p99 for rate runs) and every run's figure is kept in "
                         "the JSON (this machine's figures vary 10-20%% from run to run)")
    ap.add_argument("--json", type=Path, help="write all results here")
    args = ap.parse_args(argv)
    duration = 0.5 if args.quick else args.duration
    cells_to_run = list(matrix(args.quick, _ints(args.fanout), _ints(args.qos),
                               _ints(args.sizes)))
    factories: dict[str, peers.BrokerFactory] = {
        "mosquitto": lambda: peers.mosquitto(max_inflight=args.window),
        "polystream": lambda: peers.polystream("mqtt", durability=args.durability),
    }
    started = time.monotonic()
    names = args.brokers.split(",")
    if missing := [n for n in names if n not in factories]:
        ap.error(f"unknown broker {missing[0]!r}")

    def cells(broker: peers.RunningBroker) -> Iterator[dict[str, Any]]:
        for fanout, qos, size in cells_to_run:
            for rate in (None, args.rate):
                yield median_run([
                    run_cell(broker, fanout=fanout, qos=qos, size=size,
                             duration=duration, rate=rate, window=args.window,
                             e2e_window=args.e2e_window, verify=args.verify)
                    for _ in range(args.repeat)])

    run = peers.run_brokers(names, factories, "mqtt", cells, _progress)
    results, versions, notes = run.results, run.versions, run.notes
    print()
    print(results_table(results))
    ratios = ratio_rows(results, "mosquitto")
    if ratios:
        print()
        print(ratio_table(ratios, "mosquitto", args.rate))
    for note in notes:
        print(f"note: {note}")
    print(f"\nversions: {versions}; {time.monotonic() - started:.0f} s in all")
    if args.json:
        args.json.write_text(json.dumps(
            {"benchmark": "mqtt", "versions": versions, "notes": notes,
             "settings": {k: (str(v) if isinstance(v, Path) else v)
                          for k, v in vars(args).items()},
             "results": results, "ratios": ratios,
             "targets": {"cpu_ratio_qos1": TARGET_RATIO_QOS1, "p99_ms_at_10k": TARGET_P99_MS}},
            indent=2, allow_nan=True))
    return 1 if any(c.get("error") for c in results) else 0


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x]


def _progress(cell: dict[str, Any]) -> None:
    extra = (f"p99 {cell.get('p99_ms', float('nan')):.2f} ms" if cell["mode"] == "rate"
             else f"{cell.get('out_rate', float('nan')):,.0f} out msg/s")
    print(f"  {cell['broker']:<10} 1→{cell['fanout']:<2} qos {cell['qos']} "
          f"{cell['size']:>5} B {cell['mode']:<4} {extra} {cell.get('error', '')[:80]}",
          file=sys.stderr, flush=True)


if __name__ == "__main__":
    sys.exit(main())
