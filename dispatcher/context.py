"""Per-request context: the HTTP request id and the request's batch of inline jobs."""

from __future__ import annotations

import threading
from contextvars import ContextVar
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .core import Attempt
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


#: The attempt running in this context (set by the execution core, read by ``progress``).
attempt_var: ContextVar[Attempt | None] = ContextVar("dispatcher_attempt", default=None)


def current_request_id() -> str | None:
    return request_id_var.get()
