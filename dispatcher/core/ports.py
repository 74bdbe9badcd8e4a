"""The ports: the interfaces the core and the routes are written against (``Limits``
lives with the limits it answers for, in ``limits``).

Adapters in ``dispatcher.store`` (Redis, memory) and ``dispatcher.routes`` implement
them; ``dispatcher.runtime`` builds one of each per process and hands them to whoever
needs them. Nothing here does I/O.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, NamedTuple, Protocol

from .record import DeadLetter, HistoryEntry, JobRecord, Position
from .spec import CallOptions, RouteName, TaskSpec

if TYPE_CHECKING:
    from .job import Job
    from .validation import ArgumentValidator


class RecordStore(Protocol):
    """Where job records are kept.

    ``save(record, transition=False)`` updates a record without a new history entry
    (progress reports). PENDING is not stored in the history: it is the dispatch itself.
    """

    def save(self, record: JobRecord, *, transition: bool = True) -> None: ...

    def save_pending(self, job: Job) -> None: ...

    def load(self, task_id: str) -> JobRecord | None: ...

    def load_many(self, task_ids: list[str]) -> list[JobRecord | None]: ...

    def history(self, task_id: str) -> list[HistoryEntry]: ...

    def index_page(
        self, before: Position | None, since: float | None, count: int
    ) -> list[Position]: ...

    def delete(self, task_id: str) -> None: ...

    def flush(self, timeout: float = 5.0) -> bool: ...


class DeadLetterStore(Protocol):
    def add(self, entry: DeadLetter) -> None: ...

    def get(self, task_id: str) -> DeadLetter | None: ...

    def remove(self, task_id: str) -> None: ...

    def list(self, limit: int = 100) -> list[DeadLetter]: ...


class Claimed(NamedTuple):
    """The job that holds an idempotency key."""

    id: str
    name: str
    route: RouteName
    queue: str | None


class IdempotencyStore(Protocol):
    def claim(self, task_name: str, key: str, job_id: str, route: RouteName,
              queue: str | None) -> Claimed | None:
        """Claim ``key`` for a new job; the earlier job if the key is taken."""
        ...

    def release(self, task_name: str, key: str, job_id: str) -> None:
        """Free ``key`` if it still belongs to ``job_id`` (its dispatch failed)."""
        ...


class Cancellations(Protocol):
    """Durable cancel marks (kept for ``DISPATCH_RESULT_TTL``), checked wherever a job
    could start and by a running job (``dispatcher.cancelled()``)."""

    def cancel(self, task_id: str) -> None: ...

    def is_cancelled(self, task_id: str) -> bool: ...


class Health(Protocol):
    """Whether a store is worth a call now; a failed call marks it down for a while."""

    def available(self) -> bool: ...

    def failed(self, error: BaseException) -> None: ...


class Route(Protocol):
    """One way to run jobs. The two routes meet only here: the inline route hands
    unfinished jobs over to Celery at shutdown, and the Celery route may fall back to
    running jobs inline during a broker outage, each through the other's ``Route``."""

    name: RouteName

    def accept(self, jobs: Sequence[Job], countdown: float | None, *,
               reason: str | None = None) -> list[RouteName]:
        """Take ``jobs`` (already routed here); the route each finally took."""
        ...


class RegisteredTask(Protocol):
    """What the registry and both routes need of a task (``dispatcher.Task``)."""

    @property
    def spec(self) -> TaskSpec: ...

    @property
    def validator(self) -> ArgumentValidator: ...

    @property
    def call_options(self) -> CallOptions: ...
