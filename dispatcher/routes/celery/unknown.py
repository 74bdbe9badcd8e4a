"""Messages for a task this worker does not have: hand them back, and fail them only
when no live worker has had that task for ``DISPATCH_UNKNOWN_TASK_GRACE``.

During a rolling deploy an old worker meets tasks only the new release has (and the
other way round); two services sharing a Redis meet each other's tasks. Consuming such
a message as a failure would lose a job another worker could run. So the worker holds
it a moment (``HAND_BACK_DELAY``, so it does not spin on it) and puts it back at the
end of its queue. Workers advertise their task names at each heartbeat (``liveness``);
the grace runs from the later of the last advertisement and the first hand-back. Past
it the job is recorded FAILURE, every field of its record kept, and dead-lettered
(re-dispatchable once the task exists again).
"""

from __future__ import annotations

import logging
import time
from typing import Any, Literal

import redis

from ...core.execution import Execution
from ...core.record import DeadLetter, ErrorInfo, JobRecord, celery_exception, finish
from ...store import keys
from .liveness import last_advertised
from .monitor import BROKER_ERRORS

log = logging.getLogger("dispatcher.worker")

#: Seconds a worker keeps a message it cannot run before handing it back.
HAND_BACK_DELAY = 1.0

Verdict = Literal["hand_back", "fail"]


class UnknownTasks:
    """What this worker does with messages for tasks it does not have."""

    def __init__(self, client: redis.Redis, execution: Execution, grace: float) -> None:
        self.client = client
        self.execution = execution
        self.grace = grace
        self._told: set[str] = set()

    def verdict(self, task_id: str | None, name: str | None) -> Verdict:
        """``hand_back`` while another worker may run it (or Redis cannot tell)."""
        if not task_id or not name:
            return "fail"  # not a task message any worker could run
        now = time.time()
        try:
            self.client.set(keys.unknown(task_id), repr(now), nx=True,
                            ex=int(self.grace) + 3600)
            first = float(self.client.get(keys.unknown(task_id)) or now)
            advertised = last_advertised(self.client, name)
        except BROKER_ERRORS as exc:
            log.warning("cannot tell whether a worker has task %s (%s): handing it back",
                        name, exc)
            return "hand_back"
        since = max(first, advertised or first)
        if now - since < self.grace:
            if name not in self._told:
                self._told.add(name)
                log.warning("this worker does not have task %s: handing its messages back "
                            "for a worker that has it (failed after %.0f s without one)",
                            name, self.grace)
            return "hand_back"
        return "fail"

    def fail(self, task_id: str, name: str | None, message: Any) -> None:
        """Record the job FAILURE (keeping its record's fields) and dead-letter it."""
        error: ErrorInfo = {"type": "UnknownTaskError",
                 "message": f"no worker has had task {name!r} for {self.grace:.0f} s"}
        existing = self.execution.records.load(task_id)
        record = _failed(existing, task_id, name, message, error)
        try:
            self.execution.records.save(record)
            self.execution.records.flush(5.0)
        except Exception as exc:  # the dead letter below still keeps the job
            log.warning("could not record the unknown task %s: %s", task_id, exc)
        self.execution.dead_letters.add(_dead_letter(record, message, error))
        self.client.delete(keys.unknown(task_id))


def _failed(existing: JobRecord | None, task_id: str, name: str | None, message: Any,
            error: ErrorInfo) -> JobRecord:
    delivery = getattr(message, "delivery_info", None) or {}
    base: dict[str, Any] = dict(existing) if existing is not None else {
        "task_id": task_id, "task_name": name, "route": "celery",
        "queue": delivery.get("routing_key"), "priority": None, "attempt": 1,
        "max_attempts": None, "request_id": None, "dispatched_at": time.time(),
        "children": [], "date_done": None,
    }
    base.update(status="FAILURE", reason="unknown_task", error=error, traceback=None,
                result=celery_exception(error, None))
    return finish(base)  # type: ignore[arg-type]


def _dead_letter(record: JobRecord, message: Any, error: ErrorInfo) -> DeadLetter:
    body = getattr(message, "payload", None)
    args, kwargs = (body[0], body[1]) if isinstance(body, list | tuple) and len(body) >= 2 \
        else ((), {})
    arguments = dict(kwargs) if isinstance(kwargs, dict) else {}
    if args:
        arguments["(positional)"] = list(args)
    return {
        "task_id": record["task_id"], "task_name": str(record["task_name"]),
        "route": "celery", "queue": record["queue"], "priority": record["priority"] or 0,
        "attempts": record["attempt"] or 1, "max_attempts": record["max_attempts"] or 1,
        "request_id": record["request_id"], "arguments": arguments,
        "error": error,
        "reason": "unknown_task", "traceback": "", "dead_at": time.time(),
    }
