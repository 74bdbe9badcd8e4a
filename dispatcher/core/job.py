"""One dispatched job: the task, where it goes, its arguments and its attempt number."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from .spec import RouteName, TaskSpec

_ID_HEX = 32
_IDS_PER_READ = 256
_id_lock = threading.Lock()
#: Ready random ids, taken with ``list.pop()`` (atomic under the GIL, no lock): hex
#: strings for request ids, formatted UUIDs for job ids.
_hex_pool: list[str] = []
_uuid_pool: list[str] = []
#: The RFC 4122 variant bits (10xx) applied to the id's 17th hex digit.
_VARIANT = {d: "89ab"[int(d, 16) & 3] for d in "0123456789abcdef"}


def _fresh_hex() -> list[str]:
    """256 strings of 32 random hex digits from one ``os.urandom`` call: each call
    releases the GIL, and on a busy server every release lets background threads take
    the request thread's turn."""
    raw = os.urandom(_ID_HEX // 2 * _IDS_PER_READ).hex()
    return [raw[i:i + _ID_HEX] for i in range(0, len(raw), _ID_HEX)]


def _as_uuid(h: str) -> str:
    return f"{h[:8]}-{h[8:12]}-4{h[13:16]}-{_VARIANT[h[16]]}{h[17:20]}-{h[20:]}"


def _take(pool: list[str], refill: Callable[[], list[str]]) -> str:
    while True:
        try:
            return pool.pop()
        except IndexError:
            with _id_lock:
                if not pool:
                    pool.extend(refill())


def _forget_pools() -> None:
    """A forked child reads its own randomness, never ids its parent also holds."""
    global _id_lock
    _id_lock = threading.Lock()
    _hex_pool.clear()
    _uuid_pool.clear()


os.register_at_fork(after_in_child=_forget_pools)


def new_job_id() -> str:
    """A random (version 4) UUID string, like ``str(uuid.uuid4())``; formatted a pool at
    a time, off the request's path."""
    try:
        return _uuid_pool.pop()
    except IndexError:
        return _take(_uuid_pool, lambda: [_as_uuid(h) for h in _fresh_hex()])


def new_request_id() -> str:
    """A random 32-hex-digit id for an HTTP request (``X-Request-ID``)."""
    try:
        return _hex_pool.pop()
    except IndexError:
        return _take(_hex_pool, _fresh_hex)


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

    def delay(self, now: float | None = None) -> float | None:
        """Seconds until this attempt is due (a countdown, an eta, a retry delay); None
        when it is due already."""
        if self.queued_at is None:
            return None
        left = self.queued_at - (time.time() if now is None else now)
        return left if left > 0 else None

    @property
    def due_at(self) -> float:
        """When this attempt became due (``time.time()``): its queue wait starts here."""
        return self.queued_at if self.queued_at is not None else self.dispatched_at

    def queue_wait(self, started_at: float) -> float:
        """Seconds this attempt waited between being due and starting."""
        return max(0.0, started_at - self.due_at)

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
