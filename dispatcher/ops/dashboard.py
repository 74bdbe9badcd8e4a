"""The live dashboard's aggregations: pure functions over job views (the public shape
of ``dispatcher.ops.jobs.list_jobs``). ``dashboard_data`` gathers the views; the page
and its endpoints are ``dispatcher.fastapi.dashboard``. The snapshot covers:

- throughput and failures per route, in time buckets over the last few minutes;
- duration percentiles (p50/p95/p99) per task;
- Celery queue depths, the outage spool and this process's inline executor;
- running jobs with their progress (and those that just finished, for a moment);
- recent failures with their (redacted) tracebacks;
- the dead-letter list (re-dispatched with ``POST /tasks/{id}/retry``);
- the effective routing table.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any

#: How far back the charts look, and how wide one bar of the throughput chart is.
WINDOW_SECONDS = 300
BUCKET_SECONDS = 10
#: Finished jobs stay in the "running" panel this long, with their final progress.
RECENTLY_FINISHED_SECONDS = 20.0

PERCENTILES = (50, 95, 99)
ROUTES = ("inline", "celery")



# --------------------------------------------------------------------------- aggregation
# Pure functions over job records in the public shape of ``dispatcher.jobs.list_jobs``.


def percentile(values: Sequence[float], q: float) -> float | None:
    """The ``q``-th percentile (0-100) of ``values``, interpolating linearly between the
    two nearest ranks (numpy's default); None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    if len(ordered) == 1:
        return float(ordered[0])
    rank = (len(ordered) - 1) * min(max(q, 0.0), 100.0) / 100.0
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    fraction = rank - low
    return float(ordered[low] + (ordered[high] - ordered[low]) * fraction)


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None


def duration_percentiles(records: Iterable[dict[str, Any]], limit: int = 15
                         ) -> list[dict[str, Any]]:
    """Per task: how many finished jobs had a duration, and their p50/p95/p99/max in ms;
    slowest (by p95) first, at most ``limit`` tasks."""
    durations: dict[str, list[float]] = {}
    for record in records:
        if record.get("state") not in ("SUCCESS", "FAILURE"):
            continue
        duration = _number(record.get("duration_ms"))
        if duration is None:
            continue
        durations.setdefault(str(record.get("task_name")), []).append(duration)
    rows = []
    for name, values in durations.items():
        row: dict[str, Any] = {"task": name, "count": len(values), "max": max(values)}
        for q in PERCENTILES:
            row[f"p{q}"] = percentile(values, q)
        rows.append(row)
    rows.sort(key=lambda row: (-row["p95"], row["task"]))
    return rows[:limit]


def throughput(records: Iterable[dict[str, Any]], now: float,
               window: int = WINDOW_SECONDS, bucket: int = BUCKET_SECONDS) -> dict[str, Any]:
    """Finished jobs per route and outcome in ``bucket``-second buckets covering the last
    ``window`` seconds (aligned to multiples of ``bucket``, the current one last, so the
    newest bucket is still filling), plus dispatches per route."""
    count = max(1, math.ceil(window / bucket))
    last_start = math.floor(now / bucket) * bucket
    first_start = last_start - (count - 1) * bucket
    starts = [first_start + i * bucket for i in range(count)]
    series: dict[str, dict[str, list[int]]] = {
        route: {"succeeded": [0] * count, "failed": [0] * count, "dispatched": [0] * count}
        for route in ROUTES
    }

    def index(at: Any) -> int | None:
        value = _number(at)
        if value is None or value < first_start or value >= last_start + bucket:
            return None
        return int((value - first_start) // bucket)

    for record in records:
        route = record.get("route")
        if not isinstance(route, str):
            continue
        lines = series.setdefault(
            route, {"succeeded": [0] * count, "failed": [0] * count, "dispatched": [0] * count}
        )
        at = index(record.get("dispatched_at"))
        if at is not None:
            lines["dispatched"][at] += 1
        state = record.get("state")
        if state in ("SUCCESS", "FAILURE"):
            at = index(record.get("finished_at"))
            if at is not None:
                lines["succeeded" if state == "SUCCESS" else "failed"][at] += 1
    return {"bucket_seconds": bucket, "starts": starts, "routes": series}


def running_jobs(records: Iterable[dict[str, Any]], now: float,
                 keep_finished: float = RECENTLY_FINISHED_SECONDS, limit: int = 50
                 ) -> list[dict[str, Any]]:
    """Jobs started and not finished (oldest first), then those finished in the last
    ``keep_finished`` seconds that reported progress, so a bar is seen to complete."""
    active: list[dict[str, Any]] = []
    finished: list[dict[str, Any]] = []
    seen: set[str] = set()
    for record in records:
        task_id = record.get("task_id")
        if not isinstance(task_id, str) or task_id in seen:
            continue
        seen.add(task_id)
        state = record.get("state")
        if state in ("STARTED", "RETRY"):
            active.append(_job_row(record))
        elif state in ("SUCCESS", "FAILURE", "REVOKED") and record.get("progress"):
            done = _number(record.get("finished_at"))
            if done is not None and now - done <= keep_finished:
                finished.append(_job_row(record))
    active.sort(key=lambda row: row["started_at"] or row["dispatched_at"] or 0.0)
    finished.sort(key=lambda row: -(row["finished_at"] or 0.0))
    return (active + finished)[:limit]


def _job_row(record: dict[str, Any]) -> dict[str, Any]:
    progress = record.get("progress") if isinstance(record.get("progress"), dict) else None
    return {
        "task_id": record.get("task_id"),
        "task_name": record.get("task_name"),
        "state": record.get("state"),
        "route": record.get("route"),
        "queue": record.get("queue"),
        "attempt": record.get("attempt"),
        "max_attempts": record.get("max_attempts"),
        "dispatched_at": _number(record.get("dispatched_at")),
        "started_at": _number(record.get("started_at")),
        "finished_at": _number(record.get("finished_at")),
        "progress": progress,
    }


def recent_failures(records: Iterable[dict[str, Any]], limit: int = 20
                    ) -> list[dict[str, Any]]:
    """The newest FAILURE records (by finish time) with error, reason and traceback."""
    rows = []
    seen: set[str] = set()
    for record in records:
        task_id = record.get("task_id")
        if record.get("state") != "FAILURE" or not isinstance(task_id, str) or task_id in seen:
            continue
        seen.add(task_id)
        rows.append({
            **_job_row(record),
            "error": record.get("error"),
            "reason": record.get("reason"),
            "traceback": record.get("traceback"),
            "request_id": record.get("request_id"),
        })
    rows.sort(key=lambda row: -(row["finished_at"] or row["dispatched_at"] or 0.0))
    return rows[:limit]


def totals(records: Sequence[dict[str, Any]], now: float, window: int = WINDOW_SECONDS
           ) -> dict[str, Any]:
    """Headline numbers over the window: finished per minute, failure rate, and counts."""
    succeeded = failed = dispatched = 0
    for record in records:
        dispatched_at = _number(record.get("dispatched_at"))
        if dispatched_at is not None and dispatched_at >= now - window:
            dispatched += 1
        finished_at = _number(record.get("finished_at"))
        if finished_at is None or finished_at < now - window:
            continue
        if record.get("state") == "SUCCESS":
            succeeded += 1
        elif record.get("state") == "FAILURE":
            failed += 1
    finished = succeeded + failed
    return {
        "dispatched": dispatched,
        "succeeded": succeeded,
        "failed": failed,
        "per_minute": round(finished * 60.0 / window, 2),
        "failure_rate": round(failed / finished, 4) if finished else None,
    }
