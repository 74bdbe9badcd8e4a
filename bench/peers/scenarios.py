"""The scenarios: each runs every peer once per round, the order rotated from round to
round (A B C, B C A, ...) so that a drift in the machine's load hits all alike, and
Redis flushed before every measurement."""

from __future__ import annotations

import os
import time
from collections import defaultdict

from bench.peers import Spec
from bench.peers.common import COUNTER
from bench.peers.harness import Harness, tree_rss

#: results[row][peer] = one value per round
Results = dict[str, dict[str, list[float]]]
#: scale[peer][(what, processes)] = one value per round
Scale = dict[str, dict[tuple[str, int], list[float]]]
SCALE = (1, 2, 4)
#: A drain (or end-to-end run) still going after this many seconds is cut short and
#: counted as jobs done / time taken; its cell is marked (arq at ``max_jobs=2`` starts
#: two jobs per 0.5 s poll while its queue is backed up: ~4 jobs/s).
CAP = float(os.environ.get("BENCH_CAP_SECONDS", "60"))
#: (row, peer) of the cells where a measurement was cut short at ``CAP``.
CAPPED: set[tuple[str, str]] = set()


def new_results() -> Results:
    return defaultdict(lambda: defaultdict(list))


def rotated(specs: list[Spec], r: int) -> list[Spec]:
    r %= max(1, len(specs))
    return specs[r:] + specs[:r]


def has_worker(h: Harness, spec: Spec) -> bool:
    return bool(h.describe(spec)["workers"][0])  # type: ignore[index]


def publish(h: Harness, specs: list[Spec], rounds: int, jobs: int, res: Results) -> None:
    """Rows 1 and 2: no worker running; jobs/s of one call per job, then of the batch
    API (a single call for all ``jobs``) where the peer has one."""
    for r in range(rounds):
        for spec in rotated(specs, r):
            h.flush()
            res["one"][spec.name].append(h.agent(spec, "one", jobs)["rate"])
            if h.describe(spec)["batch"]:
                h.flush()
                res["batch"][spec.name].append(h.agent(spec, "batch", jobs)["rate"])
    h.flush()


def timed_drain(h: Harness, spec: Spec, jobs: int, workers: int,
                row: str) -> tuple[float, float, int]:
    """Queue ``jobs`` first, then start ``workers`` worker processes: jobs/s from their
    start to the last job counted (or to ``CAP``), and the RSS (MiB) and process count
    of their trees at the end (before they stop)."""
    h.flush()
    h.agent(spec, "fill", jobs)
    client = h.client(spec)
    started = time.monotonic()
    procs = [h.start_worker(spec, i) for i in range(workers)]
    try:
        while (done := int(client.get(COUNTER) or 0)) < jobs:
            if time.monotonic() - started > CAP:
                CAPPED.add((row, spec.name))
                break
            if any(p.poll() is not None for p in procs):
                raise RuntimeError(f"{spec.name}: a worker exited (see its log)")
            time.sleep(0.005)
        elapsed = time.monotonic() - started
        sizes = [tree_rss(p.pid) for p in procs]
    finally:
        for proc in procs:
            h.stop(proc)
    return done / elapsed, sum(s[0] for s in sizes), sum(s[1] for s in sizes)


def drain(h: Harness, specs: list[Spec], rounds: int, jobs: int, res: Results) -> None:
    """Rows 3 and 6: one worker process with two slots drains ``jobs`` queued jobs."""
    workers = [s for s in specs if has_worker(h, s)]
    for r in range(rounds):
        for spec in rotated(workers, r):
            rate, rss, count = timed_drain(h, spec, jobs, 1, "drain")
            res["drain"][spec.name].append(rate)
            res["rss_total"][spec.name].append(rss)
            res["procs"][spec.name].append(count)
            res["rss_per"][spec.name].append(rss / count)
    h.flush()


def with_worker(h: Harness, spec: Spec, mode: str, n: int) -> dict[str, float]:
    h.flush()
    worker = h.start_worker(spec)
    try:
        return h.agent(spec, mode, n)
    finally:
        h.stop(worker)


def latency(h: Harness, specs: list[Spec], rounds: int, n: int, res: Results) -> None:
    """Row 4: ``n`` jobs in turn to an idle, warm worker; each round's p50 and p95."""
    workers = [s for s in specs if has_worker(h, s)]
    for r in range(rounds):
        for spec in rotated(workers, r):
            result = with_worker(h, spec, "latency", n)
            res["p50"][spec.name].append(result["p50"])
            res["p95"][spec.name].append(result["p95"])
    h.flush()


def end_to_end(h: Harness, specs: list[Spec], rounds: int, jobs: int, res: Results) -> None:
    """Row 5: a warm worker running while one producer sends ``jobs`` one at a time."""
    workers = [s for s in specs if has_worker(h, s)]
    for r in range(rounds):
        for spec in rotated(workers, r):
            result = with_worker(h, spec, "e2e", jobs)
            res["e2e"][spec.name].append(result["rate"])
            if result["capped"]:
                CAPPED.add(("e2e", spec.name))
    h.flush()


def scale(h: Harness, specs: list[Spec], rounds: int, jobs: int, res: Results) -> Scale:
    """Publish with 1, 2, 4 producer processes (``jobs`` in all, one call per job,
    released together after their warm-up; jobs/s from the first one's start to the
    last one's end), and drain with 1, 2, 4 worker processes of two slots each. Where
    rows 1 and 3 were measured in this run, their figures are the single process's."""
    out: Scale = defaultdict(lambda: defaultdict(list))
    for name, row in (("publish", "one"), ("drain", "drain")):
        for peer, values in res.get(row, {}).items():
            out[peer][(name, 1)] = list(values)
    for r in range(rounds):
        for k in SCALE:
            for spec in rotated(specs, r):
                if len(out[spec.name][("publish", k)]) <= r:
                    h.flush()
                    ends = h.agents_together(spec, "one", max(1, jobs // k), k)
                    total = sum(max(1, jobs // k) for _ in ends)
                    wall = max(e["end"] for e in ends) - min(e["start"] for e in ends)
                    out[spec.name][("publish", k)].append(total / wall)
                if has_worker(h, spec) and len(out[spec.name][("drain", k)]) <= r:
                    rate = timed_drain(h, spec, jobs, k, f"scale drain x{k}")[0]
                    out[spec.name][("drain", k)].append(rate)
    h.flush()
    return out
