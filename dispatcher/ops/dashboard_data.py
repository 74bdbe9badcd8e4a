"""One snapshot of everything the live dashboard shows, gathered from the job records
(shared in Redis, so any API process answers for jobs of both routes and of every
process), the dead letters, the queues and the route table."""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..core.ports import DeadLetterStore, RecordStore
from ..core.record import job_view
from ..core.redaction import redact_arguments
from ..core.registry import secret_names
from ..core.settings import DispatcherSettings
from .dashboard import (
    WINDOW_SECONDS,
    duration_percentiles,
    recent_failures,
    running_jobs,
    throughput,
    totals,
)
from .jobs import encode_cursor, list_jobs

#: At most this many job records are read for one snapshot (newest first).
MAX_RECORDS = 3000
#: Concurrent viewers share a snapshot this young instead of each reading Redis.
SNAPSHOT_MAX_AGE = 0.75
#: Running jobs dispatched before the window are looked for this often (and the ones
#: found re-read at every snapshot), so a long job stays on the page cheaply.
OLDER_SCAN_EVERY = 10.0
OLDER_SCAN_LIMIT = 1000
ACTIVE = ("STARTED", "RETRY")


@dataclass(frozen=True)
class Sources:
    """Where a snapshot reads from (``dispatcher.runtime`` provides them)."""

    settings: DispatcherSettings
    records: RecordStore
    dead_letters: DeadLetterStore
    #: (running, outstanding) inline jobs of this process.
    inline_load: Callable[[], tuple[int, int]]
    spool_depth: Callable[[], int | None]
    #: Per queue; raises when the broker cannot be read.
    queue_depths: Callable[[], dict[str, int]]
    route_table: Callable[[], list[dict[str, Any]]]
    #: Every API process's inline executor, per process and summed (None: not known).
    inline_fleet: Callable[[], dict[str, Any] | None] = lambda: None


def redacted_dead_letters(store: DeadLetterStore, limit: int) -> list[dict[str, Any]]:
    """Dead letters, newest first, with secret arguments hidden."""
    return [{**entry, "arguments": redact_arguments(entry.get("arguments") or {},
                                                   secret_names(str(entry.get("task_name"))))}
            for entry in store.list(limit)]


def _safely(errors: dict[str, str], name: str, fn: Callable[[], Any], default: Any) -> Any:
    try:
        return fn()
    except Exception as exc:  # one failing source must not blank the whole page
        errors[name] = f"{type(exc).__name__}: {exc}"
        return default


class Dashboard:
    """The snapshot and its caches (one per process, owned by the runtime)."""

    def __init__(self) -> None:
        self._older_lock = threading.Lock()
        self._older: tuple[float, list[str]] = (-math.inf, [])
        self._cache_lock = threading.Lock()
        self._cached: tuple[float, dict[str, Any]] | None = None

    def snapshot(self, sources: Sources) -> dict[str, Any]:
        """``collect()``, shared by viewers polling within ``SNAPSHOT_MAX_AGE`` seconds."""
        with self._cache_lock:
            if self._cached is not None and time.monotonic() - self._cached[0] < SNAPSHOT_MAX_AGE:
                return self._cached[1]
            data = self.collect(sources)
            self._cached = (time.monotonic(), data)
            return data

    def collect(self, sources: Sources, now: float | None = None) -> dict[str, Any]:
        """One snapshot of everything the page shows (blocking: run it in a thread)."""
        now = time.time() if now is None else now
        errors: dict[str, str] = {}
        records, truncated = _safely(
            errors, "jobs", lambda: _job_records(sources.records, now - WINDOW_SECONDS,
                                                 MAX_RECORDS), ([], False))
        window_records = [r for r in records if isinstance(r, dict)]
        older = _safely(errors, "running",
                        lambda: self._older_active(sources.records, now - WINDOW_SECONDS), [])
        active = [r for r in [*window_records, *older] if r.get("state") in ACTIVE]
        return {
            "generated_at": now,
            "window": {"seconds": WINDOW_SECONDS, "records": len(window_records),
                       "truncated": truncated, "max_records": MAX_RECORDS},
            "totals": {**totals(window_records, now), "running": len(active)},
            "throughput": throughput(window_records, now),
            "durations": duration_percentiles(window_records),
            "queues": _safely(errors, "queues", lambda: _queues(sources), None),
            "running": running_jobs([*older, *window_records], now),
            "failures": recent_failures(window_records),
            "dead_letters": _safely(
                errors, "dead_letters",
                lambda: redacted_dead_letters(sources.dead_letters, 50), []),
            "routes": _safely(errors, "routes", sources.route_table, []),
            "errors": errors,
        }

    def _older_active(self, store: RecordStore, window_start: float) -> list[dict[str, Any]]:
        """Jobs still running that were dispatched before ``window_start``."""
        with self._older_lock:
            scanned_at, ids = self._older
            if time.monotonic() - scanned_at >= OLDER_SCAN_EVERY:
                page = list_jobs(store, cursor=encode_cursor((window_start, "")),
                                 limit=OLDER_SCAN_LIMIT, scan_limit=OLDER_SCAN_LIMIT)
                views = [v for v in page.items if v.get("state") in ACTIVE]
                self._older = (time.monotonic(), [v["task_id"] for v in views])
                return views
            if not ids:
                return []
            views = [job_view(r) for r in store.load_many(ids) if r is not None]
            active = [v for v in views if v.get("state") in ACTIVE]
            self._older = (scanned_at, [v["task_id"] for v in active])
            return active


def _job_records(store: RecordStore, since: float, cap: int
                 ) -> tuple[list[dict[str, Any]], bool]:
    """Job views dispatched since ``since`` (newest first, at most ``cap``) and whether
    there were more."""
    items: list[dict[str, Any]] = []
    cursor: str | None = None
    while len(items) < cap:
        page = list_jobs(store, since=since, cursor=cursor, limit=min(500, cap - len(items)))
        items.extend(page.items)
        cursor = page.next_cursor
        if cursor is None:
            return items, False
    return items, True


def _queues(sources: Sources) -> dict[str, Any]:
    """Celery queue depths (from the broker), the outage spool and this process's
    inline executor."""
    settings = sources.settings
    running, outstanding = sources.inline_load()
    inline = {"running": running, "outstanding": outstanding,
              "concurrency": settings.inline_concurrency}
    out: dict[str, Any] = {"inline": inline, "inline_fleet": sources.inline_fleet(),
                           "celery": None, "spool_depth": None,
                           "broker_configured": settings.broker_url is not None,
                           "error": None}
    if settings.broker_url is None:
        return out
    try:
        out["spool_depth"] = sources.spool_depth()
        out["celery"] = sources.queue_depths()
    except Exception as exc:  # the broker is down: the rest of the page still helps
        out["error"] = f"{type(exc).__name__}: {exc}"
    return out
