"""The job record: the one contract between processes about a job.

Every writer (both routes, the worker's consumer, the Lua scripts that store what
Python encoded) and every reader (``TaskHandle``, ``GET /tasks``, the dashboard) goes
through ``JobRecord``, ``make_record``/``encode_record``/``decode_record`` and
``job_view``. The stored fields follow Celery's result-backend layout (``status``,
``result``, ``traceback``, ``date_done``, ``children``) so Celery's ``AsyncResult``
can read a record too.
"""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime
from json.encoder import encode_basestring_ascii as _json_string
from typing import Any, Literal, NotRequired, TypedDict, cast

from .job import Job

State = Literal["PENDING", "STARTED", "RETRY", "SUCCESS", "FAILURE", "REVOKED"]
STATES: tuple[State, ...] = ("PENDING", "STARTED", "RETRY", "SUCCESS", "FAILURE", "REVOKED")
TERMINAL: frozenset[str] = frozenset({"SUCCESS", "FAILURE", "REVOKED"})
#: A position in the dispatch-time index: (dispatch time, job id); newest first.
Position = tuple[float, str]


class ErrorInfo(TypedDict):
    type: str
    message: str


class Progress(TypedDict):
    current: float
    total: float | None
    percent: float | None
    message: str
    at: float


class JobRecord(TypedDict):
    """A job's latest state as stored (one per job id)."""

    task_id: str
    status: State
    task_name: str | None
    route: str
    queue: str | None
    priority: int | None
    attempt: int | None
    max_attempts: int | None
    request_id: str | None
    dispatched_at: float | None
    result: Any
    error: ErrorInfo | None
    traceback: str | None
    children: list[Any]
    date_done: str | None
    reason: NotRequired[str | None]
    started_at: NotRequired[float]
    finished_at: NotRequired[float]
    queue_wait_ms: NotRequired[float]
    duration_ms: NotRequired[float]
    retry_in: NotRequired[float]
    progress: NotRequired[Progress | None]
    #: A delayed job's due time (``time.time()`` seconds), while it is PENDING.
    eta: NotRequired[float]


class HistoryEntry(TypedDict):
    state: str
    at: float | None
    attempt: int | None


def make_record(job: Job, status: State, **fields: Any) -> JobRecord:
    """The record for ``job`` in ``status``; ``fields`` adds result, error and timings."""
    record: dict[str, Any] = {
        "task_id": job.id,
        "status": status,
        "task_name": job.spec.name,
        "route": job.route,
        "queue": job.queue,
        "priority": job.priority,
        "attempt": job.attempt,
        "max_attempts": job.spec.retry.max_attempts,
        "request_id": job.request_id,
        "dispatched_at": job.dispatched_at,
        "result": None,
        "error": None,
        "traceback": None,
        "children": [],
        "date_done": None,
    }
    if status == "PENDING" and job.queued_at is not None:
        record["eta"] = job.queued_at  # delayed: when it is due (time.time() seconds)
    record.update(fields)
    return finish(cast(JobRecord, record))


def finish(record: JobRecord) -> JobRecord:
    """Fill in what a terminal record carries: its finish time and, for a failure,
    Celery's JSON encoding of the exception (for ``AsyncResult`` readers)."""
    if record["status"] in TERMINAL:
        now = time.time()
        record["finished_at"] = now
        record["date_done"] = datetime.fromtimestamp(now, UTC).isoformat()
    error = record.get("error")
    result = record.get("result")
    if (record["status"] == "FAILURE" and isinstance(error, dict)
            and not (isinstance(result, dict) and "exc_type" in result)):
        record["result"] = celery_exception(error)
    return record


def celery_exception(error: ErrorInfo, module: str | None = "builtins") -> dict[str, Any]:
    """A failure's result the way Celery's JSON result backend encodes an exception, so a
    plain Celery client's ``AsyncResult.get()`` raises the task's exception type (the
    real class when the client has imported ``module``; a class of that name made up
    by Celery when ``module`` is None) with the task's message."""
    return {"exc_type": error.get("type"), "exc_message": [error.get("message")],
            "exc_module": module}


def encode_record(record: JobRecord) -> str:
    return json.dumps(record, default=str)


def decode_record(raw: str | bytes | None) -> JobRecord | None:
    """A stored record, or None for nothing or anything that is not a job record."""
    if raw is None:
        return None
    try:
        value = json.loads(raw)
    except ValueError:
        return None
    if not isinstance(value, dict) or "task_id" not in value or "status" not in value:
        return None
    return cast(JobRecord, value)


def implied_pending(headers: Any) -> JobRecord | None:
    """The PENDING record of a job whose publish left it to the worker's take (a
    ``dispatch_many`` batch), from its Celery message's headers: what ``make_record``
    writes (and ``lua/take_one.lua`` when it takes the job). None for any other message.
    """
    meta = headers.get("dispatch") if isinstance(headers, dict) else None
    if not isinstance(meta, dict) or meta.get("record_at") != "take":
        return None
    return cast(JobRecord, {
        "task_id": headers.get("id"), "status": "PENDING", "task_name": headers.get("task"),
        "route": "celery", "queue": meta.get("queue"), "priority": meta.get("priority"),
        "attempt": meta.get("attempt"), "max_attempts": meta.get("max_attempts"),
        "request_id": meta.get("request_id"), "dispatched_at": meta.get("dispatched_at"),
        "result": None, "error": None, "traceback": None, "children": [], "date_done": None,
    })


def history_entry(record: JobRecord) -> HistoryEntry:
    """What a state change adds to the job's history."""
    return {"state": record["status"], "at": time.time(), "attempt": record.get("attempt")}


#: Stand-ins for the values that differ between the PENDING records of one task.
_ID_TOKEN, _REQUEST_TOKEN, _AT_TOKEN = "@@task-id@@", "@@request-id@@", "@@dispatched-at@@"
#: PENDING record templates: (task name, route, queue, priority, attempt, max attempts)
#: -> the JSON text around the job id, the request id and the dispatch time.
_pending_templates: dict[tuple[Any, ...], tuple[str, str, str, str]] = {}
_TEMPLATES_KEPT = 1024


def pending_json(job: Job) -> str:
    """``encode_record(make_record(job, "PENDING"))``, from a template per task and route.

    Every dispatched job gets a PENDING record, written by a thread that shares the web
    server's GIL: filling three values into ready JSON costs a fraction of building
    and encoding the whole record each time.
    """
    if job.queued_at is not None:  # delayed: its eta differs from job to job
        return encode_record(make_record(job, "PENDING"))
    key = (job.spec.name, job.route, job.queue, job.priority, job.attempt,
           job.spec.retry.max_attempts)
    parts = _pending_templates.get(key)
    if parts is None:
        record: dict[str, Any] = dict(make_record(job, "PENDING"))
        record.update(task_id=_ID_TOKEN, request_id=_REQUEST_TOKEN, dispatched_at=_AT_TOKEN)
        text = json.dumps(record)
        try:
            head, rest = text.split(json.dumps(_ID_TOKEN))
            middle, rest = rest.split(json.dumps(_REQUEST_TOKEN))
            tail, end = rest.split(json.dumps(_AT_TOKEN))
        except ValueError:  # a task or queue name that holds a stand-in: no template
            return encode_record(make_record(job, "PENDING"))
        parts = (head, middle, tail, end)
        if len(_pending_templates) >= _TEMPLATES_KEPT:
            _pending_templates.clear()
        _pending_templates[key] = parts
    head, middle, tail, end = parts
    request_id = "null" if job.request_id is None else _json_string(job.request_id)
    return (head + _json_string(job.id) + middle + request_id + tail
            + repr(job.dispatched_at) + end)


def after(position: Position, before: Position | None) -> bool:
    """Whether ``position`` comes after ``before`` in the newest-first listing."""
    return before is None or position < before


#: Results longer than this (as JSON) are shortened in ``summarize``.
SUMMARY_CHARS = 200


def summarize(result: Any) -> str | None:
    """A short, one-line rendering of a result for listings."""
    if result is None:
        return None
    text = json.dumps(result, default=str)
    return text if len(text) <= SUMMARY_CHARS else text[: SUMMARY_CHARS - 1] + "…"


def job_view(record: JobRecord, history: list[HistoryEntry] | None = None) -> dict[str, Any]:
    """The public shape of a job (``GET /tasks``, ``GET /tasks/{id}``,
    ``TaskHandle.record()``); ``history`` adds the list of state changes."""
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
        "eta": record.get("eta") if state == "PENDING" else None,
        "progress": record.get("progress"),
    }
    if history is not None:
        dispatched: HistoryEntry = {"state": "PENDING", "at": record.get("dispatched_at"),
                                    "attempt": 1}
        view["history"] = [dispatched, *history]
    return view


class DeadLetter(TypedDict):
    """A job that ended in FAILURE, kept with its arguments for re-dispatch."""

    task_id: str
    task_name: str
    route: str
    queue: str | None
    priority: int
    attempts: int
    max_attempts: int
    request_id: str | None
    arguments: dict[str, Any]
    error: ErrorInfo
    reason: str
    traceback: str
    dead_at: float


def make_dead_letter(job: Job, error: ErrorInfo, reason: str, traceback: str) -> DeadLetter:
    return {
        "task_id": job.id,
        "task_name": job.spec.name,
        "route": job.route,
        "queue": job.queue,
        "priority": job.priority,
        "attempts": job.attempt,
        "max_attempts": job.spec.retry.max_attempts,
        "request_id": job.request_id,
        "arguments": job.payload,
        "error": error,
        "reason": reason,
        "traceback": traceback,
        "dead_at": time.time(),
    }
