"""``TaskHandle``: what ``dispatch()`` returns; the same on both routes."""

from __future__ import annotations

import asyncio
import time
from typing import Any, NamedTuple

from . import runtime
from .errors import TaskFailed
from .spec import RouteName
from .status import TERMINAL, State

_FIRST_POLL = 0.01
_MAX_POLL = 0.25


def _outcome(record: dict[str, Any]) -> Any:
    if record["status"] == "SUCCESS":
        return record.get("result")
    error = record.get("error") or {}
    raise TaskFailed(record["task_id"], str(error.get("type")), str(error.get("message")))


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
        record = runtime.status_store().load(task_id)
        if record is None:
            return None
        return cls(task_id, record["task_name"], record["route"], record.get("queue"))

    def record(self) -> dict[str, Any] | None:
        """The full job record: state, attempts, result or error, timings."""
        return runtime.status_store().load(self.id)

    def state(self) -> State:
        """``PENDING | STARTED | RETRY | SUCCESS | FAILURE``."""
        record = self.record()
        return "PENDING" if record is None else record["status"]  # type: ignore[no-any-return,unused-ignore]

    def get(self, timeout: float | None = None) -> Any:
        """Block until the job ends; its result, or ``TaskFailed`` with the task's error.

        Raises ``TimeoutError`` when ``timeout`` seconds pass first.
        """
        poll = _Poll(self.id, timeout)
        while True:
            record = self.record()
            if record is not None and record["status"] in TERMINAL:
                return _outcome(record)
            time.sleep(poll.next_pause())

    async def wait(self, timeout: float | None = None) -> Any:
        """``get`` for async code: polls without blocking the event loop."""
        poll = _Poll(self.id, timeout)
        while True:
            record = await asyncio.to_thread(self.record)
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
