"""The effective routing table: every registered task, where it goes and why
(``dispatcher routes``, ``GET /routes``, the dashboard)."""

from __future__ import annotations

import time
from typing import Any

from ..core.registry import all_tasks
from ..core.settings import DispatcherSettings
from ..policy.adaptive import AdaptiveState
from ..policy.routing import decide_route
from ..store.adaptive import AdaptiveRouter


def route_table(settings: DispatcherSettings, adaptive: AdaptiveRouter | None
                ) -> list[dict[str, Any]]:
    """One row per registered task: effective route, queue, priority, retry policy;
    ``weight="auto"`` tasks also get ``adaptive``, their shared adaptive state (route,
    reason, since, p95 over the window, samples), read from Redis now."""
    tasks = all_tasks()
    auto = [t.spec.name for t in tasks if t.spec.adaptive]
    states = adaptive.read(auto) if adaptive is not None and settings.broker_url and auto else {}
    rows = []
    for task in tasks:
        spec = task.spec
        state = states.get(spec.name)
        moved = None if state is None or state.since is None else (state.route, state.reason)
        decision = decide_route(spec, task.call_options, settings, moved)
        row: dict[str, Any] = {
            "task": spec.name,
            "route": decision.route,
            "reason": decision.reason,
            "queue": decision.queue,
            "priority": decision.priority,
            "weight": "auto" if spec.adaptive else spec.weight,
            "timeout": spec.timeout,
            "async": spec.is_async,
            "retry": spec.retry.describe(),
            "schedule": None if spec.schedule is None else spec.schedule.describe(),
            "rate_limit": None if spec.rate_limit is None else str(spec.rate_limit),
            "concurrency": spec.concurrency,
            "concurrency_key": spec.concurrency_key,
        }
        if spec.adaptive:
            row["adaptive"] = (state or AdaptiveState()).describe(settings)
        rows.append(row)
    return rows


def _retry_summary(retry: dict[str, Any]) -> str:
    if retry["max_attempts"] == 1:
        return "no retry"
    jitter = ", jitter" if retry["jitter"] else ""
    return (
        f"{retry['max_attempts']} attempts, {retry['base_delay']:g}s x{retry['multiplier']:g} "
        f"<= {retry['max_delay']:g}s{jitter}, on {'/'.join(retry['retry_on'])}"
    )


def _adaptive_summary(state: dict[str, Any] | None) -> str:
    """``p95 0.31s of 20/20 runs, max 0.25s: celery since 12:00:03`` for an auto task."""
    if state is None:
        return "-"
    p95 = "-" if state["p95_seconds"] is None else f"{state['p95_seconds']:.3g}s"
    since = (
        "" if state["since"] is None
        else " since " + time.strftime("%H:%M:%S", time.localtime(state["since"]))
    )
    return (
        f"p95 {p95} of {state['samples']}/{state['window']} runs, max "
        f"{state['max_seconds']:g}s: {state['route']}{since}"
    )


def _limits_summary(row: dict[str, Any]) -> str:
    """``20/s, 2 at once per customer`` (``-`` for a task without limits)."""
    parts = [row["rate_limit"]] if row.get("rate_limit") else []
    if row.get("concurrency"):
        key = row.get("concurrency_key")
        parts.append(f"{row['concurrency']} at once" + (f" per {key}" if key else ""))
    return ", ".join(parts) or "-"


def format_table(rows: list[dict[str, Any]]) -> str:
    header = ["TASK", "ROUTE", "QUEUE", "PRIORITY", "WEIGHT", "TIMEOUT", "RETRY", "WHY"]
    auto = any("adaptive" in row for row in rows)
    if auto:
        header.append("ADAPTIVE")
    scheduled = any(row.get("schedule") for row in rows)
    if scheduled:
        header.append("SCHEDULE")
    limited = any(row.get("rate_limit") or row.get("concurrency") for row in rows)
    if limited:
        header.append("LIMITS")
    lines = [
        [
            row["task"],
            row["route"],
            row["queue"] or "-",
            str(row["priority"]),
            str(row["weight"]),
            "-" if row["timeout"] is None else f"{row['timeout']:g}s",
            _retry_summary(row["retry"]),
            row["reason"],
            *([_adaptive_summary(row.get("adaptive"))] if auto else []),
            *([row.get("schedule") or "-"] if scheduled else []),
            *([_limits_summary(row)] if limited else []),
        ]
        for row in rows
    ]
    return aligned(header, lines)


def aligned(header: list[str], lines: list[list[str]]) -> str:
    """``header`` and ``lines`` as text columns, two spaces apart."""
    widths = [max(len(r[i]) for r in [header, *lines]) for i in range(len(header))]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(r, widths, strict=True)).rstrip()
        for r in [header, *lines]
    )
