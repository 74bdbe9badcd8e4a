"""The peers table, the scale curves and the targets, as text."""

from __future__ import annotations

import statistics
from collections.abc import Callable

from bench.peers.scenarios import CAP, CAPPED, SCALE, Results, Scale

#: (key in the results, label); ``{jobs}`` is filled in.
ROWS = (
    ("one", "1. enqueue one call per job, jobs/s"),
    ("batch", "2. batch enqueue, jobs/s"),
    ("batch_api", "   batch API"),
    ("drain", "3. drain {jobs} queued, 1 worker x 2 slots, jobs/s"),
    ("p50", "4. dispatch-to-start p50, ms"),
    ("p95", "4. dispatch-to-start p95, ms"),
    ("e2e", "5. end to end {jobs}, producer + warm worker, jobs/s"),
    ("rss_per", "6. worker RSS per process, MiB"),
    ("rss_total", "6. worker RSS, all its processes, MiB"),
    ("procs", "6. worker processes"),
)
#: Peers that are not a task queue: left out of "the fastest peer" and "the best peer".
NOT_PEERS = {"ours", "ours-celery", "redis"}
#: What a cell shows when the peer has no such thing, or it was not measured.
DASH = "\u2013"


def spread(values: list[float]) -> str:
    """``median (min-max)``; a lone or constant whole number as itself."""
    if len(set(values)) == 1 and float(values[0]).is_integer():
        return f"{int(values[0]):,}"
    top = max(abs(v) for v in values)
    digits = 2 if top < 10 else 1 if top < 100 else 0
    median = f"{statistics.median(values):,.{digits}f}"
    if len(values) == 1:
        return median
    return f"{median} ({min(values):,.{digits}f}-{max(values):,.{digits}f})"


def columns(rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()
                     for r in rows)


def cell(values: list[float] | None, row: str, peer: str) -> str:
    if not values:
        return DASH
    return spread(values) + (" *" if (row, peer) in CAPPED else "")


def table(res: Results, peers: list[str], batch_apis: dict[str, str | None],
          jobs: int) -> str:
    rows = [["scenario", *peers]]
    for key, label in ROWS:
        if key == "batch_api" and "one" in res:
            rows.append([label, *[batch_apis.get(p) or DASH for p in peers]])
        elif key in res:
            rows.append([label.format(jobs=f"{jobs:,}"),
                         *[cell(res[key].get(p), key, p) for p in peers]])
    return columns(rows) + footnote()


def footnote() -> str:
    if not CAPPED:
        return ""
    return (f"\n* cut short at {CAP:.0f} s (BENCH_CAP_SECONDS) in at least one round: "
            "jobs done / time taken")


def scale_tables(scale: Scale) -> str:
    parts = []
    for peer, values in scale.items():
        rows = [[peer, "publish, jobs/s", "drain, jobs/s"]]
        for k in SCALE:
            cells = [cell(values.get(("publish", k)), "", peer),
                     cell(values.get(("drain", k)), f"scale drain x{k}", peer)]
            rows.append([f"{k} process{'es' if k > 1 else ''}", *cells])
        parts.append(columns(rows))
    return "\n\n".join(parts) + footnote()


def ratio(ours: list[float], other: list[float]) -> tuple[float, float, float]:
    """Ratio of the medians, and the min-max of the per-round ratios (the rounds ran
    the two side by side)."""
    per_round = [a / b for a, b in zip(ours, other, strict=False)]
    return (statistics.median(ours) / statistics.median(other), min(per_round),
            max(per_round))


def target_lines(res: Results) -> list[str]:
    lines: list[str] = []

    def check(what: str, row: str, other: str | None, bound: float,
              higher: bool = True, mine: str = "ours") -> None:
        ours = res.get(row, {}).get(mine)
        theirs = res.get(row, {}).get(other) if other else None
        if not ours or not theirs:
            lines.append(f"  {what}: not measured in this run")
            return
        mid, low, high = ratio(ours, theirs)
        met = mid >= bound if higher else mid <= bound
        sign = ">=" if higher else "<="
        lines.append(f"  {what}: {mid:.2f} ({low:.2f}-{high:.2f}) vs {other}, target "
                     f"{sign} {bound:.2f} -- {'met' if met else 'NOT MET'}")

    def best(row: str, pick: Callable[[dict[str, float]], str | None]) -> str | None:
        medians = {p: statistics.median(v) for p, v in res.get(row, {}).items()
                   if v and p not in NOT_PEERS}
        return pick(medians) if medians else None

    def fastest(m: dict[str, float]) -> str:
        return max(m, key=lambda p: m[p])

    def quickest(m: dict[str, float]) -> str:
        return min(m, key=lambda p: m[p])

    check(".dispatch() one by one >= 1.2x the fastest peer's one-by-one enqueue", "one",
          best("one", fastest), 1.2)
    check(".dispatch() one by one >= 2.0x broker-only apply_async", "one", "celery", 2.0)
    check("dispatch_many >= 0.5x pipelined LPUSH", "batch", "redis", 0.5)
    check("drain >= 1.2x Celery prefork at the same at-least-once settings", "drain",
          "celery", 1.2)
    check("drain >= 1.0x Celery prefork at its defaults", "drain", "celery-defaults", 1.0)
    check("(goal) drain >= the fastest peer's drain", "drain", best("drain", fastest), 1.0)
    check("dispatch-to-start p50 <= the best peer's", "p50", best("p50", quickest), 1.0,
          higher=False)
    if "ours-celery" in res.get("drain", {}):
        lines.append("  tuned row ours-celery (DISPATCH_WORKER_CONSUMER=celery), not a headline:")
        check("drain >= 1.2x Celery prefork at the same settings", "drain", "celery", 1.2,
              mine="ours-celery")
    return lines
