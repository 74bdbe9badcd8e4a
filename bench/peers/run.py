"""``python -m bench.peers.run [publish] [drain] [latency] [e2e] [scale]``: ours next to
every peer in one run, on this machine; prints one table (rows: scenarios, columns:
peers, each cell the median (min-max) over ``BENCH_ROUNDS`` rounds), the scale curves,
then the targets with their ratios. Nothing here asserts a speed.

Environment: ``BENCH_ROUNDS`` (default 3), ``BENCH_JOBS`` (jobs per scenario, default
10000), ``BENCH_LATENCY_JOBS`` (default 200), ``BENCH_PEERS`` (comma-separated column
names to run, default all).
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable

from bench.peers import PEERS, Spec
from bench.peers import scenarios as sc
from bench.peers.harness import Harness
from bench.peers.report import scale_tables, table, target_lines

ROUNDS = int(os.environ.get("BENCH_ROUNDS", "3"))
JOBS = int(os.environ.get("BENCH_JOBS", "10000"))
LATENCY_JOBS = int(os.environ.get("BENCH_LATENCY_JOBS", "200"))
SCENARIOS = ("publish", "drain", "latency", "e2e", "scale")


def chosen(h: Harness) -> list[Spec]:
    names = [n for n in os.environ.get("BENCH_PEERS", "").split(",") if n]
    unknown = set(names) - {s.name for s in PEERS}
    if unknown:
        raise SystemExit(f"unknown peers: {sorted(unknown)}; known: {[s.name for s in PEERS]}")
    specs = [s for s in PEERS if s.name in names or (not names and not s.probe)]
    for spec in [s for s in specs if not h.available(s)]:
        print(f"skipped {spec.name}: no {h.python(spec)} (make .venv-bench-arq/.installed-"
              "bench-arq, or `make bench`, installs it)", file=sys.stderr)
    return [s for s in specs if h.available(s)]


def main(argv: list[str]) -> int:
    which = argv or list(SCENARIOS)
    if unknown := set(which) - set(SCENARIOS):
        raise SystemExit(f"unknown scenarios: {sorted(unknown)}; known: {SCENARIOS}")
    h = Harness()
    failed = True
    res = sc.new_results()
    scale: sc.Scale = {}
    began = time.monotonic()
    try:
        specs = chosen(h)
        for spec in specs:
            h.describe(spec)
        steps: list[tuple[str, Callable[[], None]]] = [
            ("publish", lambda: sc.publish(h, specs, ROUNDS, JOBS, res)),
            ("drain", lambda: sc.drain(h, specs, ROUNDS, JOBS, res)),
            ("latency", lambda: sc.latency(h, specs, ROUNDS, LATENCY_JOBS, res)),
            ("e2e", lambda: sc.end_to_end(h, specs, ROUNDS, JOBS, res)),
        ]
        for name, step in steps:
            if name in which:
                print(f"{name} ...", file=sys.stderr, flush=True)
                step()
        if "scale" in which:
            print("scale ...", file=sys.stderr, flush=True)
            scale = sc.scale(h, specs, ROUNDS, JOBS, res)
        failed = False
    finally:
        h.close(keep_logs=failed)
    names = [s.name for s in specs]
    apis = {s.name: h.describe(s)["batch"] for s in specs}
    print(f"\nPeers: {ROUNDS} round(s), {JOBS:,} jobs per scenario, {LATENCY_JOBS} latency "
          f"jobs, {time.monotonic() - began:,.0f} s; median (min-max) over rounds\n")
    print(table(res, names, apis, JOBS))  # type: ignore[arg-type]
    if scale:
        print("\nScale (2 slots per worker process):\n")
        print(scale_tables(scale))
    print("\nTargets (ratio of medians, and the min-max of the per-round ratios):")
    print("\n".join(target_lines(res)))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
