"""The worker's Celery consumer: Celery's own, except that a message it refuses is
logged without its body, and a message for a task this worker does not have is handed
back for a worker that has it (``unknown``). Celery dumps the body of an unregistered,
invalid or undecodable message into the log; our messages carry task arguments, which
may be secrets."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from celery.worker.consumer import Consumer

from .delivery import uncount
from .unknown import HAND_BACK_DELAY

if TYPE_CHECKING:
    from .worker import CeleryWorker

log = logging.getLogger("dispatcher.worker")


def _describe(message: Any) -> str:
    headers = getattr(message, "headers", None) or {}
    return (
        f"task={headers.get('task')!r} id={headers.get('id')!r} "
        f"content-type={getattr(message, 'content_type', None)!r}"
    )


class DispatchConsumer(Consumer):
    """Refuses bad messages loudly (one ERROR line each) and never runs them."""

    # Set by Celery's Consumer; declared for the type checker. ``app.dispatch_worker``
    # is set by ``dispatcher.runtime`` when it builds the worker's app.
    connection_errors: tuple[type[BaseException], ...]
    event_dispatcher: Any
    app: Any
    timer: Any

    def on_unknown_task(self, body: Any, message: Any, exc: Exception) -> None:
        """Hand the message back while another worker may have the task (a rolling
        deploy, another service on this Redis); fail and dead-letter it only after the
        grace (``unknown``). Without our worker set up (a bare app): refuse it."""
        headers = message.headers or {}
        task_id, name = headers.get("id"), headers.get("task")
        worker: CeleryWorker | None = getattr(self.app, "dispatch_worker", None)
        unknown = worker.unknown_tasks if worker is not None else None
        if unknown is not None and unknown.verdict(task_id, name) == "hand_back":
            if worker is not None and task_id:
                uncount(worker.route.monitor.publisher.client, str(task_id), message)
            self.timer.call_after(HAND_BACK_DELAY, self._hand_back, (message,))
            return
        log.error("refused a message for a task no worker has (%s): not run",
                  _describe(message))
        if unknown is not None and task_id:
            try:
                unknown.fail(str(task_id), None if name is None else str(name), message)
            except Exception as error:  # still refused; the message is not run
                log.warning("could not record the unknown task %s: %s", task_id, error)
        message.reject_log_error(log, self.connection_errors)
        if self.event_dispatcher:
            self.event_dispatcher.send("task-failed", uuid=task_id,
                                       exception=f"NotRegistered({name!r})")

    def _hand_back(self, message: Any) -> None:
        """Back to the end of its queue (kombu's requeue restores it leftmost)."""
        try:
            message.reject(requeue=True)
        except self.connection_errors as exc:  # still unacknowledged: a restore brings it
            log.warning("could not hand back a message (%s): %s", _describe(message), exc)

    def on_invalid_task(self, body: Any, message: Any, exc: Exception) -> None:
        log.error("refused an invalid task message (%s): %s", _describe(message), exc)
        message.reject_log_error(log, self.connection_errors)

    def on_decode_error(self, message: Any, exc: Exception) -> None:
        log.error("refused a message that cannot be decoded (%s): %s", _describe(message), exc)
        message.ack()
