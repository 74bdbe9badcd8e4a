"""Rate and concurrency limits as the core sees them: what the limiter answers when a
job is about to start (``Admission``), and the limiter of a process without Redis
(``LocalLimits``). What a task declares is in ``spec`` (``RateLimit``).

The fleet-wide limiter lives in Redis (``dispatcher.store.limits``); both answer the
``Limits`` port. A job is admitted right before it starts, on either route; a refused
job is delayed (through the delay store on Celery, on a timer inline), never dropped.

- A rate limit of N per window holds for every window of that length (a sliding log of
  admissions), not only for aligned ones.
- A concurrency slot is a lease the holder renews; a holder that dies frees it within
  ``DISPATCH_CONCURRENCY_LEASE``.
"""

from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import json
import logging
import threading
import time
from dataclasses import dataclass
from typing import Any, Literal, Protocol

from .events import emit
from .job import Job
from .spec import TaskSpec

log = logging.getLogger("dispatcher.limits")

LimitReason = Literal["rate_limit", "concurrency"]
#: The longest an inline job waits for a slot before asking again (a slot freed in
#: another process wakes waiting Celery jobs, not an inline job here).
SLOT_RECHECK = 1.0


def slot_key(spec: TaskSpec, payload: dict[str, Any]) -> str:
    """The concurrency slots a job takes: the task's, or with ``concurrency_key`` the
    task's for that argument's value (a missing argument is its own key)."""
    if spec.concurrency_key is None:
        return spec.name
    value = payload.get(spec.concurrency_key)
    text = value if isinstance(value, str) else json.dumps(value, sort_keys=True)
    return f"{spec.name}\x1f{text}"


def is_limited(spec: TaskSpec) -> bool:
    return spec.rate_limit is not None or spec.concurrency is not None


@dataclass(frozen=True, slots=True)
class Admission:
    """The limiter's answer for one job about to start.

    ``at``: when it was admitted (the limiter's clock), the attempt's start time (None:
    no limiter was asked). Refused: ``wait`` seconds until asking again is worth it,
    and ``reason``. ``slot``: the concurrency slot held (released when the attempt ends),
    or waited for.
    """

    granted: bool
    at: float | None
    wait: float = 0.0
    reason: LimitReason | None = None
    slot: str | None = None
    #: Answered by this process's own limiter (the fleet's could not be asked).
    local: bool = False


class Limits(Protocol):
    """The port: rate and concurrency limits across the fleet, asked right before a job
    starts (only for tasks that declare one). A slot is held by one publication of a
    job (``job.publish_id``: an attempt), so a retry never takes over its predecessor's."""

    def admit(self, job: Job) -> Admission: ...

    def release(self, job: Job, admission: Admission) -> None: ...


#: The admission of a job whose task declares no limit (or whose limiter failed).
UNLIMITED = Admission(True, None)


_unreachable_logged = 0.0


def admit(limits: Limits, job: Job, slot_recheck: float | None = None) -> Admission:
    """Ask ``limits`` whether ``job`` may start now (a task without limits always may).

    ``slot_recheck``: a job refused a slot asks again at most this many seconds later
    (one that no freed slot wakes: an inline job). A refusal emits ``task.limited``
    (with ``reason`` and ``retry_in``, the wait the job was given). A limiter that
    fails unexpectedly admits: the job runs rather than waits for a limiter that may
    not come back, and a warning says so. (The Redis limiter answers by itself while
    Redis is down, with this process's own limits.)"""
    if not is_limited(job.spec):
        return UNLIMITED
    try:
        admission = limits.admit(job)
    except Exception as exc:
        global _unreachable_logged
        if time.monotonic() - _unreachable_logged > 10.0:  # not one line per job
            _unreachable_logged = time.monotonic()
            log.warning("limits of task %r not applied (limiter unreachable: %s)",
                        job.spec.name, exc)
        return UNLIMITED
    if admission.granted:
        return admission
    if slot_recheck is not None and admission.reason == "concurrency":
        admission = dataclasses.replace(admission, wait=min(admission.wait, slot_recheck))
    emit("task.limited", job, reason=admission.reason, retry_in=round(admission.wait, 3))
    return admission


def release(limits: Limits, job: Job, admission: Admission) -> None:
    """Give back the slot ``admission`` holds (if any); never raises (a slot not given
    back expires with its lease)."""
    if admission.slot is None or not admission.granted:
        return
    try:
        limits.release(job, admission)
    except Exception as exc:
        log.warning("concurrency slot of task %s not released (it expires with its "
                    "lease): %s", job.id, exc)


class LocalLimits:
    """The ``Limits`` port for a process without Redis, where one process sees every
    job: the same sliding log and slots, in memory (slots need no lease here)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._starts: dict[str, collections.deque[float]] = {}
        self._slots: dict[str, set[str]] = {}

    def admit(self, job: Job, taken: int = 0) -> Admission:
        """``taken``: slots of the job's key this process holds besides these (from
        the fleet's limiter, while this one stands in for it)."""
        spec = job.spec
        now = time.time()
        with self._lock:
            key = None
            if spec.concurrency is not None:
                key = slot_key(spec, job.payload)
                held = self._slots.setdefault(key, set())
                if job.publish_id not in held and len(held) + taken >= spec.concurrency:
                    return Admission(False, now, 0.25, "concurrency", key)
            rate = spec.rate_limit
            if rate is not None:
                starts = self._starts.setdefault(spec.name, collections.deque())
                while starts and starts[0] <= now - rate.per:
                    starts.popleft()
                if len(starts) >= rate.count:
                    free = starts[len(starts) - rate.count] + rate.per
                    return Admission(False, now, max(0.001, free - now), "rate_limit")
                starts.append(now)
            if key is not None:
                self._slots[key].add(job.publish_id)
            return Admission(True, now, slot=key)

    def release(self, job: Job, admission: Admission) -> None:
        if admission.slot is None:
            return
        with self._lock:
            held = self._slots.get(admission.slot)
            if held is not None:
                held.discard(job.publish_id)
                if not held:
                    del self._slots[admission.slot]


def release_after(limits: Limits, job: Job, admission: Admission,
                  lingering: concurrent.futures.Future[Any] | None) -> None:
    """``release`` now, or once a timed-out call that still runs (``lingering``: Python
    cannot stop a thread) ends: its slot stays taken while it runs."""
    if lingering is None or admission.slot is None:
        release(limits, job, admission)
    else:
        lingering.add_done_callback(lambda _: release(limits, job, admission))
