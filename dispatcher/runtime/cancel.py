"""``dispatcher.cancel(task_id)``: a job that has not started never starts; a running
one is told (``dispatcher.cancelled()``, and ``progress()`` raises ``TaskCancelled``).

The cancel mark is durable (Redis, kept for ``DISPATCH_RESULT_TTL``) and is checked
wherever a job could start: the delay store's relay, the inline executor and a worker
before it runs the job. A job still waiting ends ``REVOKED`` at once; a running job
ends ``REVOKED`` when it stops (if it finishes first, its own outcome stands).
"""

from __future__ import annotations

import logging

import redis

from ..core.errors import UnknownJobError, UnknownTaskError
from ..core.job import Job
from ..core.record import TERMINAL, JobRecord, finish
from ..core.registry import get_task
from ..store import keys
from .container import current

log = logging.getLogger("dispatcher.cancel")


def cancel(task_id: str) -> bool:
    """Cancel the job ``task_id`` on either route; True if it will not start (or was
    told to stop), False if it had finished already (nothing changes).

    Raises ``UnknownJobError`` for an id no record knows.
    """
    runtime = current()
    record = runtime.records.load(task_id)
    if record is None:
        raise UnknownJobError(task_id)
    if record["status"] in TERMINAL:
        return False
    runtime.execution.cancellations.cancel(task_id)
    celery = record["route"] == "celery" and runtime.settings.broker_url is not None
    started, withdrawn = (_withdraw(runtime.celery.monitor.publisher.client, record)
                          if celery else (False, False))
    if started:
        return True  # a worker started it meanwhile: it is told, and ends when it stops
    # Waiting (even a job that ran, died with its worker and now waits for a limit).
    if withdrawn or record["status"] in ("PENDING", "RETRY"):
        job = _job(record)
        if job is None:  # a task this process does not have: its record all the same
            runtime.records.save(finish({**record, "status": "REVOKED",
                                         "reason": "cancelled"}))
        else:
            runtime.execution.revoke(job)
        executor = runtime.inline_executor()
        if record["route"] == "inline" and executor is not None:
            executor.forget(task_id)  # a timer of this process holds it: gone now
        runtime.records.flush(2.0)
    return True


def _withdraw(client: redis.Redis, record: JobRecord) -> tuple[bool, bool]:
    """Take the job's waiting publication out of the delay store (a delay may outlast
    the cancel mark). Returns whether a worker has started it (its publish marker says
    so) and whether it was taken out of the delay store."""
    attempt = record.get("attempt") or 1
    task_id = record["task_id"]
    waiting = [f"{task_id}:{attempt}", f"{task_id}:{attempt + 1}"]  # a retry's next one
    with client.pipeline(transaction=True) as pipe:
        pipe.zrem(keys.DELAYED, *waiting)
        pipe.get(keys.marker(waiting[0]))
        removed, marker = pipe.execute()
    return (not removed and record["status"] == "PENDING" and marker == b"1"), bool(removed)


def _job(record: JobRecord) -> Job | None:
    """The waiting job a record describes (for its events and its REVOKED record)."""
    name = record.get("task_name")
    try:
        spec = get_task(str(name)).spec
    except UnknownTaskError:
        log.info("cancelled %s of task %r, which this process does not have",
                 record["task_id"], name)
        return None
    return Job(record["task_id"], spec, "celery" if record["route"] == "celery" else "inline",
               record.get("queue"), record.get("priority") or spec.priority, {},
               record.get("attempt") or 1, record.get("request_id"),
               record.get("dispatched_at") or 0.0)
