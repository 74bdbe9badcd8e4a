"""The worker's Celery consumer: Celery's own, except that a message it refuses is
logged without its body. Celery dumps the body of an unregistered, invalid or
undecodable message into the log; our messages carry task arguments, which may be
secrets. An unregistered task also gets a FAILURE record in our format."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from celery.worker.consumer import Consumer

from ...core.record import JobRecord

if TYPE_CHECKING:
    from .worker import CeleryWorker

log = logging.getLogger("dispatcher.worker")


def _describe(message: Any) -> str:
    headers = getattr(message, "headers", None) or {}
    return (
        f"task={headers.get('task')!r} id={headers.get('id')!r} "
        f"content-type={getattr(message, 'content_type', None)!r}"
    )


def _unknown_task_record(task_id: str, name: Any) -> JobRecord:
    return {
        "task_id": task_id, "status": "FAILURE", "task_name": None if name is None else str(name),
        "route": "celery", "queue": None, "priority": None, "attempt": None,
        "max_attempts": None, "request_id": None, "dispatched_at": None,
        "reason": "unknown_task", "traceback": None,
        "error": {"type": "UnknownTaskError", "message": f"no task named {name!r} is registered"},
        "result": {"exc_type": "NotRegistered", "exc_message": [name],
                   "exc_module": "celery.exceptions"},
        "children": [], "date_done": None,
    }


class DispatchConsumer(Consumer):
    """Refuses bad messages loudly (one ERROR line each) and never runs them."""

    # Set by Celery's Consumer; declared for the type checker. ``app.dispatch_worker``
    # is set by ``dispatcher.runtime`` when it builds the worker's app.
    connection_errors: tuple[type[BaseException], ...]
    event_dispatcher: Any
    app: Any

    def on_unknown_task(self, body: Any, message: Any, exc: Exception) -> None:
        log.error("refused a message for an unregistered task (%s): not run", _describe(message))
        message.reject_log_error(log, self.connection_errors)
        headers = message.headers or {}
        task_id, name = headers.get("id"), headers.get("task")
        worker: CeleryWorker | None = getattr(self.app, "dispatch_worker", None)
        if task_id and worker is not None and worker.execution.health.available():
            try:
                worker.execution.records.save(_unknown_task_record(str(task_id), name))
            except Exception as error:
                log.warning("could not record the unknown task %s: %s", task_id, error)
        if self.event_dispatcher:
            self.event_dispatcher.send("task-failed", uuid=task_id,
                                       exception=f"NotRegistered({name!r})")

    def on_invalid_task(self, body: Any, message: Any, exc: Exception) -> None:
        log.error("refused an invalid task message (%s): %s", _describe(message), exc)
        message.reject_log_error(log, self.connection_errors)

    def on_decode_error(self, message: Any, exc: Exception) -> None:
        log.error("refused a message that cannot be decoded (%s): %s", _describe(message), exc)
        message.ack()
