"""The live dashboard: ``GET /dashboard`` (a static page) and ``GET /dashboard/data``.

The page is plain HTML, CSS and JavaScript shipped with the package (no build step, no
third-party code); it polls ``/dashboard/data`` every second or two and draws its own
SVG charts. The snapshot is computed here from the shared job records in Redis, so
any API process answers for jobs of both routes and of every process:

- throughput and failures per route, in time buckets over the last few minutes;
- duration percentiles (p50/p95/p99) per task;
- Celery queue depths, the outage spool and this process's inline executor;
- running jobs with their progress (and those that just finished, for a moment);
- recent failures with their (redacted) tracebacks;
- the dead-letter list (re-dispatched with ``POST /tasks/{id}/retry``);
- the effective routing table.

Include it with ``app.include_router(dispatcher.dashboard.router)``. The data endpoint
shows tracebacks and arguments, so it needs the bearer token when
``DISPATCH_API_TOKEN`` is set; the page itself holds no data and asks for the token.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Iterable, Sequence
from functools import cache
from importlib import resources
from typing import Any

import anyio
from fastapi import APIRouter, Depends
from fastapi.responses import HTMLResponse, Response

from . import runtime
from .fastapi import require_api_token
from .settings import get_settings

router = APIRouter(tags=["dashboard"])

#: How far back the charts look, and how wide one bar of the throughput chart is.
WINDOW_SECONDS = 300
BUCKET_SECONDS = 10
#: At most this many job records are read for one snapshot (newest first).
MAX_RECORDS = 3000
#: Finished jobs stay in the "running" panel this long, with their final progress.
RECENTLY_FINISHED_SECONDS = 20.0
#: Concurrent viewers share a snapshot this young instead of each reading Redis.
SNAPSHOT_MAX_AGE = 0.75

PERCENTILES = (50, 95, 99)
ACTIVE_STATES = frozenset({"PENDING", "STARTED", "RETRY"})
ROUTES = ("inline", "celery")

_ASSETS = {
    "dashboard.js": "text/javascript; charset=utf-8",
    "dashboard.css": "text/css; charset=utf-8",
}


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
        elif state in ("SUCCESS", "FAILURE") and record.get("progress"):
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


# --------------------------------------------------------------------------- data sources


def _job_records(since: float, cap: int) -> tuple[list[dict[str, Any]], bool]:
    """Job records dispatched since ``since`` (newest first, at most ``cap``) and whether
    there were more."""
    from .jobs import list_jobs

    items: list[dict[str, Any]] = []
    cursor: str | None = None
    while len(items) < cap:
        page = list_jobs(since=since, cursor=cursor, limit=min(500, cap - len(items)))
        items.extend(page.items)
        cursor = page.next_cursor
        if cursor is None:
            return items, False
    return items, True


#: Running jobs dispatched before the window are looked for this often (and the ones
#: found re-read at every snapshot), so a long job stays on the page cheaply.
OLDER_SCAN_EVERY = 10.0
OLDER_SCAN_LIMIT = 1000
_older_lock = threading.Lock()
_older: tuple[float, list[str]] = (-math.inf, [])


def _older_active(window_start: float) -> list[dict[str, Any]]:
    """Jobs still running that were dispatched before ``window_start``."""
    from .jobs import encode_cursor, job_view, list_jobs

    global _older
    with _older_lock:
        scanned_at, ids = _older
        if time.monotonic() - scanned_at >= OLDER_SCAN_EVERY:
            page = list_jobs(cursor=encode_cursor((window_start, "")), limit=OLDER_SCAN_LIMIT,
                             scan_limit=OLDER_SCAN_LIMIT)
            views = [v for v in page.items if v.get("state") in ("STARTED", "RETRY")]
            _older = (time.monotonic(), [v["task_id"] for v in views])
            return views
        if not ids:
            return []
        records = runtime.status_store().load_many(ids)
        views = [job_view(r) for r in records if r is not None]
        active = [v for v in views if v.get("state") in ("STARTED", "RETRY")]
        _older = (scanned_at, [v["task_id"] for v in active])
        return active


def _dead_letters(limit: int = 50) -> list[dict[str, Any]]:
    from .deadletter import redacted
    from .registry import secret_names

    return [redacted(entry, secret_names(str(entry.get("task_name"))))
            for entry in runtime.dead_letters().list(limit)]


@cache
def _broker_client(url: str, timeout: float) -> Any:
    from .wire import redis_client

    return redis_client(url, timeout)


def _queues() -> dict[str, Any]:
    """Celery queue depths (from the broker), the outage spool and this process's
    inline executor."""
    settings = get_settings()
    executor = runtime.current_inline_executor()
    inline = {
        "running": executor.running() if executor else 0,
        "outstanding": executor.outstanding() if executor else 0,
        "concurrency": settings.inline_concurrency,
    }
    out: dict[str, Any] = {"inline": inline, "celery": None, "spool_depth": None,
                           "broker_configured": settings.broker_url is not None,
                           "error": None}
    if settings.broker_url is None:
        return out
    from .celery_worker import worker_queues
    from .wire import queue_depths

    try:
        out["spool_depth"] = runtime.celery_route().status().get("spool_depth")
        client = (runtime.redis_client() if settings.results_url == settings.broker_url
                  else _broker_client(settings.broker_url, settings.publish_timeout))
        if client is not None:
            out["celery"] = queue_depths(client, worker_queues(settings))
    except Exception as exc:  # the broker is down: the rest of the page still helps
        out["error"] = f"{type(exc).__name__}: {exc}"
    return out


def _routing_table() -> list[dict[str, Any]]:
    from .cli import route_table

    return route_table()


def _safely(errors: dict[str, str], name: str, fn: Any, default: Any) -> Any:
    try:
        return fn()
    except Exception as exc:  # one failing source must not blank the whole page
        errors[name] = f"{type(exc).__name__}: {exc}"
        return default


def collect(now: float | None = None) -> dict[str, Any]:
    """One snapshot of everything the page shows (blocking: run it in a thread)."""
    now = time.time() if now is None else now
    errors: dict[str, str] = {}
    records, truncated = _safely(
        errors, "jobs", lambda: _job_records(now - WINDOW_SECONDS, MAX_RECORDS), ([], False)
    )
    window_records = [r for r in records if isinstance(r, dict)]
    older = _safely(errors, "running", lambda: _older_active(now - WINDOW_SECONDS), [])
    active = [r for r in [*window_records, *older] if r.get("state") in ("STARTED", "RETRY")]
    return {
        "generated_at": now,
        "window": {"seconds": WINDOW_SECONDS, "records": len(window_records),
                   "truncated": truncated, "max_records": MAX_RECORDS},
        "totals": {**totals(window_records, now), "running": len(active)},
        "throughput": throughput(window_records, now),
        "durations": duration_percentiles(window_records),
        "queues": _safely(errors, "queues", _queues, None),
        "running": running_jobs([*older, *window_records], now),
        "failures": recent_failures(window_records),
        "dead_letters": _safely(errors, "dead_letters", _dead_letters, []),
        "routes": _safely(errors, "routes", _routing_table, []),
        "errors": errors,
    }


_cache_lock = threading.Lock()
_cached: tuple[float, dict[str, Any]] | None = None


def snapshot() -> dict[str, Any]:
    """``collect()``, shared by viewers polling within ``SNAPSHOT_MAX_AGE`` seconds."""
    global _cached
    with _cache_lock:
        if _cached is not None and time.monotonic() - _cached[0] < SNAPSHOT_MAX_AGE:
            return _cached[1]
        data = collect()
        _cached = (time.monotonic(), data)
        return data


# --------------------------------------------------------------------------- endpoints


@cache
def _asset(name: str) -> str:
    return resources.files("dispatcher").joinpath("static", name).read_text("utf-8")


@router.get("/dashboard", response_class=HTMLResponse, include_in_schema=False)
async def dashboard_page() -> HTMLResponse:
    """The dashboard page (it fetches its data from ``dashboard/data``)."""
    return HTMLResponse(_asset("dashboard.html"), headers={"Cache-Control": "no-cache"})


@router.get("/dashboard/data", dependencies=[Depends(require_api_token)])
async def dashboard_data() -> dict[str, Any]:
    """One snapshot of jobs, queues, failures, dead letters and routes (see module doc)."""
    return await anyio.to_thread.run_sync(snapshot)


@router.get("/dashboard/{asset}", include_in_schema=False)
async def dashboard_asset(asset: str) -> Response:
    media_type = _ASSETS.get(asset)
    if media_type is None:
        return Response(status_code=404)
    return Response(_asset(asset), media_type=media_type,
                    headers={"Cache-Control": "no-cache"})
