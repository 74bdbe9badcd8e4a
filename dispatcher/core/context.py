"""Context: the HTTP request id, the request's batch of inline jobs, the running job."""

from __future__ import annotations

import threading
from contextvars import ContextVar
from typing import NamedTuple, Protocol

from .job import Job

request_id_var: ContextVar[str | None] = ContextVar("dispatcher_request_id", default=None)


class RequestBatch:
    """Inline jobs dispatched while one request is handled.

    They are handed to the executor as one chain once the response has been sent
    (``BackgroundTasks`` semantics): started in dispatch order, one after another.
    """

    def __init__(self) -> None:
        self._jobs: list[Job] = []
        self._lock = threading.Lock()
        self.closed = False
        #: Set when the request ended in an error answer: its jobs must not run.
        self.failed = False

    def add(self, job: Job) -> bool:
        """Append ``job``; False if the batch was already handed over."""
        with self._lock:
            if self.closed:
                return False
            self._jobs.append(job)
            return True

    def close(self) -> list[Job]:
        """Stop accepting jobs and return those collected."""
        with self._lock:
            self.closed = True
            jobs, self._jobs = self._jobs, []
            return jobs


batch_var: ContextVar[RequestBatch | None] = ContextVar("dispatcher_batch", default=None)


class RunningAttempt(Protocol):
    """What ``progress()`` and ``current_job()`` need of the attempt that is running
    (``core.execution.Attempt``)."""

    @property
    def job(self) -> Job: ...

    def report_progress(self, current: float, total: float | None, message: str) -> None: ...

    def cancel_requested(self) -> bool: ...


#: The attempt running in this context (set by the execution core, read by ``progress``).
attempt_var: ContextVar[RunningAttempt | None] = ContextVar("dispatcher_attempt", default=None)


def current_request_id() -> str | None:
    return request_id_var.get()


class JobInfo(NamedTuple):
    """What a running task may know about its own job (``dispatcher.current_job()``)."""

    id: str
    name: str
    route: str
    attempt: int
    max_attempts: int
    request_id: str | None


def current_job() -> JobInfo | None:
    """The job whose task is running in this context, on either route; None outside one
    (for example when the task function is called directly)."""
    attempt = attempt_var.get()
    if attempt is None:
        return None
    job = attempt.job
    return JobInfo(job.id, job.spec.name, job.route, job.attempt,
                   job.spec.retry.max_attempts, job.request_id)
