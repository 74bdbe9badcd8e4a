"""Reading job records back: one job's public view and filtered, paginated listings.

Both routes write the same records (``core.record``), so these answers cover every job,
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

from ..core.ports import RecordStore
from ..core.record import STATES, Position, job_view


class InvalidCursor(ValueError):
    """A ``cursor`` that no listing produced."""


@dataclass(frozen=True, slots=True)
class JobPage:
    """One page of a listing, newest first; ``next_cursor`` is None at the end."""

    items: list[dict[str, Any]]
    next_cursor: str | None


def get_job(store: RecordStore, task_id: str, *, with_history: bool = True
            ) -> dict[str, Any] | None:
    """One job's view with its state history, or None if unknown or expired."""
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
    store: RecordStore,
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

