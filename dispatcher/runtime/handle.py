"""``TaskHandle``: what ``dispatch()`` returns; the same on both routes."""

from __future__ import annotations

import asyncio
import time
from typing import Any, NamedTuple

from ..core.errors import TaskCancelled, TaskFailed
from ..core.record import TERMINAL, JobRecord, State, job_view
from ..core.spec import RouteName
from .cancel import cancel
from .container import current

_FIRST_POLL = 0.01
_MAX_POLL = 0.25


def _outcome(record: JobRecord) -> Any:
    if record["status"] == "SUCCESS":
        return record.get("result")
    if record["status"] == "REVOKED":
        raise TaskCancelled(record["task_id"])
    error = record.get("error")
    kind, message = (None, None) if error is None else (error.get("type"), error.get("message"))
    raise TaskFailed(record["task_id"], str(kind), str(message))


class TaskHandle(NamedTuple):
    """A dispatched job: ``id`` (also the Celery task id), task ``name``, ``route``, ``queue``.

    Immutable. A named tuple rather than a frozen dataclass: every dispatch makes one,
    and a tuple is built in half the time (a frozen dataclass sets each field through
    ``object.__setattr__``).
    """

    id: str
    name: str
    route: RouteName
    queue: str | None = None

    @classmethod
    def lookup(cls, task_id: str) -> TaskHandle | None:
        """The handle of a job known to the record store, or None."""
        record = current().records.load(task_id)
        if record is None:
            return None
        route: RouteName = "celery" if record["route"] == "celery" else "inline"
        return cls(task_id, record["task_name"] or "", route, record.get("queue"))

    def cancel(self) -> bool:
        """``dispatcher.cancel(self.id)``: True if the job will not start (or was told to
        stop), False if it had finished already."""
        return cancel(self.id)

    def record(self) -> dict[str, Any] | None:
        """The job as ``GET /tasks/{id}`` shows it (the same fields, ``history``
        included): state, attempts, result or error, timings; None if unknown."""
        store = current().records
        record = store.load(self.id)
        return None if record is None else job_view(record, store.history(self.id))

    def _record(self) -> JobRecord | None:
        return current().records.load(self.id)

    def state(self) -> State:
        """``PENDING | STARTED | RETRY | SUCCESS | FAILURE | REVOKED``."""
        record = self._record()
        return "PENDING" if record is None else record["status"]

    def get(self, timeout: float | None = None) -> Any:
        """Block until the job ends; its result, or ``TaskFailed`` with the task's error
        (``TaskCancelled`` for a cancelled job).

        Raises ``TimeoutError`` when ``timeout`` seconds pass first.
        """
        poll = _Poll(self.id, timeout)
        while True:
            record = self._record()
            if record is not None and record["status"] in TERMINAL:
                return _outcome(record)
            time.sleep(poll.next_pause())

    async def wait(self, timeout: float | None = None) -> Any:
        """``get`` for async code: polls without blocking the event loop."""
        poll = _Poll(self.id, timeout)
        while True:
            record = await asyncio.to_thread(self._record)
            if record is not None and record["status"] in TERMINAL:
                return _outcome(record)
            await asyncio.sleep(poll.next_pause())


class _Poll:
    """Growing pauses between record reads, bounded by an optional deadline."""

    def __init__(self, task_id: str, timeout: float | None) -> None:
        self.task_id = task_id
        self.timeout = timeout
        self.deadline = None if timeout is None else time.monotonic() + timeout
        self.pause = _FIRST_POLL

    def next_pause(self) -> float:
        """The next pause; ``TimeoutError`` once the deadline has passed."""
        pause, self.pause = self.pause, min(self.pause * 1.5, _MAX_POLL)
        if self.deadline is None:
            return pause
        remaining = self.deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError(f"task {self.task_id} did not finish within {self.timeout}s")
        return min(pause, remaining)
