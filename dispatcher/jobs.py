"""Reading job records back: one job's public view and filtered, paginated listings.

Both routes write the same records (``status``), so these answers cover every job,
whichever process dispatched or ran it. Listings walk the dispatch-time index newest
first and filter as they go; a page stops after examining ``scan_limit`` entries, so
a rare filter costs a bounded amount of work per request and the cursor continues
where it stopped.
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass
from fnmatch import fnmatchcase
from typing import Any

from . import runtime
from .status import STATES, Position

#: Results longer than this (as JSON) are shortened in ``result_summary``.
SUMMARY_CHARS = 200


class InvalidCursor(ValueError):
    """A ``cursor`` that no listing produced."""


@dataclass(frozen=True, slots=True)
class JobPage:
    """One page of a listing, newest first; ``next_cursor`` is None at the end."""

    items: list[dict[str, Any]]
    next_cursor: str | None


def summarize(result: Any) -> str | None:
    """A short, one-line rendering of a result for listings."""
    if result is None:
        return None
    text = json.dumps(result, default=str)
    return text if len(text) <= SUMMARY_CHARS else text[: SUMMARY_CHARS - 1] + "…"


def job_view(record: dict[str, Any], history: list[dict[str, Any]] | None = None
             ) -> dict[str, Any]:
    """The public shape of a job record (``GET /tasks``, ``GET /tasks/{id}``)."""
    state = record["status"]
    result = record.get("result") if state == "SUCCESS" else None
    view: dict[str, Any] = {
        "task_id": record["task_id"],
        "task_name": record.get("task_name"),
        "state": state,
        "route": record.get("route"),
        "queue": record.get("queue"),
        "priority": record.get("priority"),
        "request_id": record.get("request_id"),
        "attempt": record.get("attempt"),
        "max_attempts": record.get("max_attempts"),
        "dispatched_at": record.get("dispatched_at"),
        "started_at": record.get("started_at"),
        "finished_at": record.get("finished_at"),
        "date_done": record.get("date_done"),
        "duration_ms": record.get("duration_ms"),
        "queue_wait_ms": record.get("queue_wait_ms"),
        "result": result,
        "result_summary": summarize(result),
        "error": record.get("error"),
        "traceback": record.get("traceback"),
        "reason": record.get("reason"),
        "retry_in": record.get("retry_in") if state == "RETRY" else None,
        "progress": record.get("progress"),
    }
    if history is not None:
        dispatched = {"state": "PENDING", "at": record.get("dispatched_at"), "attempt": 1}
        view["history"] = [dispatched, *history]
    return view


def get_job(task_id: str, *, with_history: bool = True) -> dict[str, Any] | None:
    """One job's view with its state history, or None if unknown or expired."""
    store = runtime.status_store()
    record = store.load(task_id)
    if record is None:
        return None
    return job_view(record, store.history(task_id) if with_history else None)


def encode_cursor(position: Position) -> str:
    raw = json.dumps([position[0], position[1]]).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> Position:
    """The index position a cursor stands for; ``InvalidCursor`` for anything else."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        score, task_id = json.loads(raw)
        if isinstance(score, bool) or not isinstance(score, int | float):
            raise TypeError(score)
        if not isinstance(task_id, str):
            raise TypeError(task_id)
    except (binascii.Error, ValueError, TypeError, UnicodeDecodeError):
        raise InvalidCursor(f"cursor {cursor!r} is not one this listing produced") from None
    return float(score), task_id


def _matches(view: dict[str, Any], state: str | None, name: str | None,
             route: str | None) -> bool:
    if state is not None and view["state"] != state:
        return False
    if route is not None and view["route"] != route:
        return False
    if name is None:
        return True
    task_name = view["task_name"] or ""
    return fnmatchcase(task_name, name) if any(c in name for c in "*?[") else task_name == name


def list_jobs(
    *,
    state: str | None = None,
    name: str | None = None,
    route: str | None = None,
    since: float | None = None,
    cursor: str | None = None,
    limit: int = 50,
    scan_limit: int = 5000,
) -> JobPage:
    """Jobs dispatched at or after ``since`` (epoch seconds), newest first, filtered by
    ``state``, ``name`` (exact, or a glob such as ``reports.*``) and ``route``.

    Raises ``ValueError`` naming the argument for an unknown state or route, a limit
    outside 1-1000, or a cursor this function did not produce (``InvalidCursor``).
    """
    if state is not None and state not in STATES:
        raise ValueError(f"state must be one of {', '.join(STATES)}, got {state!r}")
    if route is not None and route not in ("inline", "celery"):
        raise ValueError(f"route must be 'inline' or 'celery', got {route!r}")
    if not 1 <= limit <= 1000:
        raise ValueError(f"limit must be between 1 and 1000, got {limit!r}")
    position = None if cursor is None else decode_cursor(cursor)
    store = runtime.status_store()
    store.flush(1.0)  # this process's own latest writes belong in its answer
    items: list[dict[str, Any]] = []
    examined = 0
    chunk = min(500, max(limit * 2, 50))
    while examined < scan_limit:
        positions = store.index_page(position, since, chunk)
        records = store.load_many([task_id for _, task_id in positions])
        for found, record in zip(positions, records, strict=True):
            examined += 1
            position = found
            if record is None:
                continue  # expired since it was indexed
            view = job_view(record)
            if _matches(view, state, name, route):
                items.append(view)
                if len(items) == limit:
                    return JobPage(items, encode_cursor(found))
        if len(positions) < chunk:
            return JobPage(items, None)  # the index is exhausted
    return JobPage(items, None if position is None else encode_cursor(position))

