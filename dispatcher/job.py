"""One dispatched job: the task, where it goes, its arguments and its attempt number."""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from typing import Any

from .spec import RouteName, TaskSpec


@dataclass(slots=True)
class Job:
    """A unit of work as both routes see it.

    ``payload`` is the validated, JSON-ready argument mapping; each attempt decodes it
    into typed values, on either route.
    """

    id: str
    spec: TaskSpec
    route: RouteName
    queue: str | None
    priority: int
    payload: dict[str, Any]
    attempt: int = 1
    request_id: str | None = None
    dispatched_at: float = field(default_factory=time.time)
    #: Routed inline by a decorator pin or a call option: never moved to Celery.
    pinned_inline: bool = False
    #: When this attempt became due (after a countdown or retry delay): its queue wait
    #: is measured from here. ``None``: from ``dispatched_at``.
    queued_at: float | None = None

    @property
    def publish_id(self) -> str:
        """Identity of one publication: a job id is published once per attempt."""
        return f"{self.id}:{self.attempt}"

    def next_attempt(self, delay: float = 0.0) -> Job:
        """The job's next attempt, due ``delay`` seconds from now."""
        return replace(self, attempt=self.attempt + 1, queued_at=time.time() + delay)

    def queue_wait(self, started_at: float) -> float:
        """Seconds this attempt waited between being due and starting."""
        due = self.queued_at if self.queued_at is not None else self.dispatched_at
        return max(0.0, started_at - due)

    def meta(self) -> dict[str, Any]:
        """What travels beside the arguments (a Celery message header)."""
        return {
            "attempt": self.attempt,
            "request_id": self.request_id,
            "dispatched_at": self.dispatched_at,
            "priority": self.priority,
            "queue": self.queue,
            "queued_at": self.queued_at,
        }
