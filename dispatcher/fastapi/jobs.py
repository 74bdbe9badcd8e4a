"""Operator endpoints for any FastAPI app: ``app.include_router(jobs_router)``.

Job records with filters and cursor pagination, one job with its history, a live
Server-Sent Events stream per job, dead letters and their re-dispatch, dispatch by
name, and the effective routing table. Everything that shows arguments, results or
tracebacks needs the ``DISPATCH_API_TOKEN`` bearer token when one is set.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

import anyio
from fastapi import APIRouter, Body, Depends, HTTPException, Query, Request
from fastapi.responses import StreamingResponse
from pydantic import BaseModel

from ..core.errors import UnknownJobError
from ..core.record import TERMINAL
from ..ops.dashboard_data import redacted_dead_letters
from ..ops.jobs import get_job, list_jobs
from ..runtime.cancel import cancel
from ..runtime.container import current
from ..runtime.decorator import registered
from ..runtime.handle import TaskHandle
from ..runtime.scheduler import schedule_rows
from ..store.client import REDIS_UNREACHABLE
from ..store.schedules import ScheduleState
from .auth import require_api_token
from .errors import StoreRoute

log = logging.getLogger("dispatcher.api")
router = APIRouter(tags=["jobs"], route_class=StoreRoute)

#: Endpoints that take arguments or show results need the bearer token when one is set.
guarded = [Depends(require_api_token)]

#: How often an event stream looks at the job's record, and how often it says it is alive.
STREAM_POLL = 0.2
STREAM_KEEPALIVE = 15.0


class Accepted(BaseModel):
    """The answer to a dispatch: where the job went."""

    task_id: str
    task_name: str
    route: str
    queue: str | None = None


def accepted(handle: TaskHandle) -> Accepted:
    return Accepted(
        task_id=handle.id, task_name=handle.name, route=handle.route, queue=handle.queue
    )


class JobList(BaseModel):
    items: list[dict[str, Any]]
    next_cursor: str | None


def _query_error(field: str, message: str) -> HTTPException:
    return HTTPException(
        status_code=422,
        detail=[{"loc": ["query", field], "msg": message, "type": "value_error"}],
    )


def _epoch(moment: datetime | None) -> float | None:
    if moment is None:
        return None
    return (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).timestamp()


@router.get("/routes")
async def routes() -> list[dict[str, Any]]:
    """Every registered task with its effective route, queue, priority and retry policy;
    ``inline_fleet``: the inline executors of every API process, per process and summed
    (where an inline job runs, and how full each process is)."""
    runtime = current()
    table = await anyio.to_thread.run_sync(runtime.route_table)
    fleet = runtime.inline_fleet.summary()
    return [{**row, "inline_fleet": fleet} for row in table]


@router.get("/tasks", response_model=JobList, dependencies=guarded)
async def jobs(
    state: Literal["PENDING", "STARTED", "RETRY", "SUCCESS", "FAILURE", "REVOKED"] | None = None,
    name: Annotated[str | None, Query(max_length=200,
                                      description="Task name, or a glob like `reports.*`")
                    ] = None,
    route: Literal["inline", "celery"] | None = None,
    since: Annotated[datetime | None, Query(
        description="Only jobs dispatched at or after this time (ISO 8601 or epoch seconds)")
    ] = None,
    cursor: Annotated[str | None, Query(max_length=200)] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 50,
) -> JobList:
    """Job records of both routes, newest first; follow ``next_cursor`` for more."""
    try:
        page = await anyio.to_thread.run_sync(
            lambda: list_jobs(current().records, state=state, name=name, route=route,
                              since=_epoch(since), cursor=cursor, limit=limit)
        )
    except ValueError as exc:  # only the cursor can still be wrong here
        raise _query_error("cursor", str(exc)) from None
    return JobList(items=page.items, next_cursor=page.next_cursor)


@router.post("/tasks/{name}", status_code=202, response_model=Accepted, dependencies=guarded)
async def dispatch_task(
    name: str, arguments: Annotated[dict[str, Any], Body(default_factory=dict)]
) -> Accepted:
    """Dispatch any registered task by name with a JSON object of keyword arguments."""
    return accepted(registered(name).dispatch(**arguments))


@router.get("/schedules", dependencies=guarded)
async def schedules() -> list[dict[str, Any]]:
    """Every schedule (``@task(schedule=...)``, ``DISPATCH_SCHEDULES``) with its last
    dispatch and its next tick (``time.time()`` seconds)."""
    def read() -> list[dict[str, Any]]:
        runtime = current()  # the workers' schedulers keep it on the broker
        state = (None if runtime.settings.broker_url is None
                 else ScheduleState(runtime.celery.monitor.publisher.client))
        return schedule_rows(runtime.settings, state)

    return await anyio.to_thread.run_sync(read)


@router.get("/tasks/dead", dependencies=guarded)
async def dead_letters(limit: int = Query(100, ge=1, le=1000)) -> list[dict[str, Any]]:
    """Jobs that ended in FAILURE, newest first, with secret arguments hidden."""
    store = current().dead_letters
    return await anyio.to_thread.run_sync(redacted_dead_letters, store, limit)


@router.post("/tasks/{task_id}/retry", status_code=202, response_model=Accepted,
             dependencies=guarded)
async def retry_dead_letter(task_id: str) -> Accepted:
    """Dispatch a dead-lettered job again (as a new job) and drop it from the list."""
    store = current().dead_letters
    entry = await anyio.to_thread.run_sync(store.get, task_id)
    if entry is None:
        raise HTTPException(status_code=404, detail=f"no dead-lettered task with id {task_id!r}")
    handle = registered(entry["task_name"]).dispatch(**entry["arguments"])
    try:
        await anyio.to_thread.run_sync(store.remove, task_id)
    except REDIS_UNREACHABLE as exc:  # dispatched: say so
        log.warning("re-dispatched dead letter %s as %s, but could not remove it from "
                    "the list (%s)", task_id, handle.id, type(exc).__name__)
    return accepted(handle)


@router.post("/tasks/{task_id}/cancel", status_code=202, dependencies=guarded)
async def cancel_job(task_id: str) -> dict[str, Any]:
    """Cancel a job: one not started never starts, a running one is told (409 if it
    has finished, and nothing changes)."""
    try:
        stopped = await anyio.to_thread.run_sync(cancel, task_id)
    except UnknownJobError:
        raise HTTPException(status_code=404, detail=f"no task with id {task_id!r}") from None
    view = await _load(task_id, with_history=False)
    if not stopped:
        raise HTTPException(status_code=409, detail={
            "message": f"task {task_id!r} has finished; nothing was cancelled",
            "state": None if view is None else view["state"]})
    return {"task_id": task_id, "cancelled": True,
            "state": None if view is None else view["state"]}


async def _load(task_id: str, with_history: bool = True) -> dict[str, Any] | None:
    return await anyio.to_thread.run_sync(
        lambda: get_job(current().records, task_id, with_history=with_history)
    )


@router.get("/tasks/{task_id}", dependencies=guarded)
async def job(task_id: str) -> dict[str, Any]:
    """One job on either route: state, history, attempts, timings, progress, result or error."""
    view = await _load(task_id)
    if view is None:
        raise HTTPException(status_code=404, detail=f"no task with id {task_id!r}")
    return view


@router.get("/tasks/{task_id}/events", dependencies=guarded)
async def job_events(task_id: str, request: Request) -> StreamingResponse:
    """Server-Sent Events: ``state`` on each state change, ``progress`` on each progress
    report (both carry the job's view as JSON), until the job ends."""
    view = await _load(task_id, with_history=False)
    if view is None:
        raise HTTPException(status_code=404, detail=f"no task with id {task_id!r}")
    return StreamingResponse(
        _stream(task_id, view, request),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


def _event(kind: str, number: int, data: dict[str, Any]) -> str:
    return f"id: {number}\nevent: {kind}\ndata: {json.dumps(data, default=str)}\n\n"


async def _stream(task_id: str, view: dict[str, Any], request: Request) -> AsyncIterator[str]:
    last_state: tuple[Any, Any] | None = None
    last_progress: Any = None
    number = 0
    alive_at = time.monotonic()
    while True:
        state = (view["state"], view["attempt"])
        if state != last_state or view["progress"] != last_progress:
            number += 1
            yield _event("state" if state != last_state else "progress", number, view)
            last_state, last_progress, alive_at = state, view["progress"], time.monotonic()
        if view["state"] in TERMINAL or await request.is_disconnected():
            return
        await anyio.sleep(STREAM_POLL)
        if time.monotonic() - alive_at > STREAM_KEEPALIVE:
            yield ": keep-alive\n\n"
            alive_at = time.monotonic()
        latest = await _load(task_id, with_history=False)
        if latest is None:  # expired while watched
            yield _event("gone", number + 1, {"task_id": task_id})
            return
        view = latest
