"""The API: the seeds' examples as real endpoints, plus job status and the registry."""

from __future__ import annotations

import contextlib
from typing import Annotated, Any

import anyio
from fastapi import Body, Depends, FastAPI, HTTPException, Query
from pydantic import BaseModel, Field

from dispatcher import TaskHandle, get_settings, runtime
from dispatcher.cli import route_table
from dispatcher.deadletter import redacted
from dispatcher.errors import UnknownTaskError
from dispatcher.fastapi import install, require_api_token
from dispatcher.registry import get_task
from dispatcher.settings import redact_url

from .tasks import generate_report, write_notification

app = FastAPI(title="Hybrid dispatcher example API", version="0.1.0")
install(app)

#: Endpoints that take arguments or show results need the bearer token when one is set.
guarded = [Depends(require_api_token)]


class Accepted(BaseModel):
    task_id: str
    task_name: str
    route: str
    queue: str | None = None


class ReportRequest(BaseModel):
    report_id: int = Field(ge=1, description="Which report to build.")


def _accepted(handle: TaskHandle) -> Accepted:
    return Accepted(
        task_id=handle.id, task_name=handle.name, route=handle.route, queue=handle.queue
    )


@app.post("/send-notification/{email}", status_code=202, response_model=Accepted,
          dependencies=guarded)
async def send_notification(
    email: str, message: str = Query("some notification", max_length=1000)
) -> Accepted:
    """Write a notification after the response (light task: inline route)."""
    return _accepted(write_notification.dispatch(email, message=message))


@app.post("/reports", status_code=202, response_model=Accepted, dependencies=guarded)
async def create_report(request: ReportRequest) -> Accepted:
    """Generate a report (heavy task: Celery route)."""
    return _accepted(generate_report.dispatch(request.report_id))


@app.post("/tasks/{name}", status_code=202, response_model=Accepted,
          dependencies=guarded)
async def dispatch_task(
    name: str, arguments: Annotated[dict[str, Any], Body(default_factory=dict)]
) -> Accepted:
    """Dispatch any registered task by name with a JSON object of keyword arguments."""
    return _accepted(get_task(name).dispatch(**arguments))


@app.get("/tasks")
async def list_tasks() -> list[dict[str, Any]]:
    """Every registered task with its effective route, queue, priority and retry policy."""
    return route_table()


def _secret_names(task_name: str) -> set[str]:
    names = set(get_settings().redact)
    with contextlib.suppress(UnknownTaskError):
        names |= get_task(task_name).validator.secret_names
    return names


@app.get("/tasks/dead", dependencies=guarded)
async def dead_letters(limit: int = Query(100, ge=1, le=1000)) -> list[dict[str, Any]]:
    """Jobs that ended in FAILURE, newest first, with secret arguments hidden."""
    entries = await anyio.to_thread.run_sync(runtime.dead_letters().list, limit)
    return [redacted(e, _secret_names(e["task_name"])) for e in entries]


@app.post("/tasks/{task_id}/retry", status_code=202, response_model=Accepted,
          dependencies=guarded)
async def retry_dead_letter(task_id: str) -> Accepted:
    """Dispatch a dead-lettered job again (as a new job) and drop it from the list."""
    store = runtime.dead_letters()
    entry = await anyio.to_thread.run_sync(store.get, task_id)
    if entry is None:
        raise HTTPException(status_code=404, detail=f"no dead-lettered task with id {task_id!r}")
    handle = get_task(entry["task_name"]).dispatch(**entry["arguments"])
    await anyio.to_thread.run_sync(store.remove, task_id)
    return _accepted(handle)


@app.get("/tasks/{task_id}", dependencies=guarded)
async def task_status(task_id: str) -> dict[str, Any]:
    """State, route, attempts, result or error of one job, on either route."""
    record = await anyio.to_thread.run_sync(runtime.status_store().load, task_id)
    if record is None:
        raise HTTPException(status_code=404, detail=f"no task with id {task_id!r}")
    return {
        "task_id": record["task_id"],
        "task_name": record.get("task_name"),
        "state": record["status"],
        "route": record.get("route"),
        "queue": record.get("queue"),
        "attempt": record.get("attempt"),
        "max_attempts": record.get("max_attempts"),
        "result": record.get("result") if record["status"] == "SUCCESS" else None,
        "error": record.get("error"),
        "reason": record.get("reason"),
        "request_id": record.get("request_id"),
        "dispatched_at": record.get("dispatched_at"),
        "started_at": record.get("started_at"),
        "date_done": record.get("date_done"),
    }


@app.get("/healthz")
async def healthz() -> dict[str, Any]:
    """Liveness, whether the broker answers, and the outage spool's depth (fast: no
    network call on this path)."""
    settings = get_settings()
    broker = runtime.celery_route().status()  # from the monitor's last probe: no I/O wait
    executor = runtime.current_inline_executor()
    return {
        "status": "ok" if broker["reachable"] or settings.broker_url is None else "degraded",
        "broker": {
            "configured": settings.broker_url is not None,
            "reachable": broker["reachable"],
            "checked_at": broker["checked_at"],
            "spool_depth": broker["spool_depth"],
            "url": redact_url(settings.broker_url),
        },
        "inline": {
            "running": executor.running() if executor else 0,
            "outstanding": executor.outstanding() if executor else 0,
            "concurrency": settings.inline_concurrency,
        },
    }
