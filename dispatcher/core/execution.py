"""The one execution core: both routes run every attempt through here.

It applies the timeout, records state, emits the log events and asks the task's
``RetryPolicy`` what to do after a failure. It never schedules anything itself: the
route that called it carries out the returned ``Outcome`` (a timer inline, a
re-publish with a countdown on Celery).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import logging
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from pydantic_core import to_jsonable_python

from .calls import call_with_timeout, must_propagate
from .cancellation import CANCEL_CHECK_EVERY, LocalCancellations
from .context import attempt_var
from .errors import TaskCancelled, TaskTimeout
from .events import emit, error_fields
from .job import Job
from .limits import Limits, LocalLimits
from .ports import Cancellations, DeadLetterStore, Health, RecordStore
from .record import ErrorInfo, State, celery_exception, make_dead_letter, make_record
from .redaction import scrub, secret_values
from .registry import secret_names
from .spec import TaskSpec

log = logging.getLogger("dispatcher.core")


@dataclass(frozen=True, slots=True)
class Outcome:
    """How an attempt ended; ``retry_delay`` is set when the route must try again."""

    status: Literal["SUCCESS", "RETRY", "FAILURE", "REVOKED"]
    result: Any = None
    error: BaseException | None = None
    retry_delay: float | None = None
    #: A timed-out sync call still running in its thread (Python cannot stop it).
    lingering: concurrent.futures.Future[Any] | None = None


class Execution:
    """The ports one process runs its jobs against: where records and dead letters go,
    whether the records store is up, and who learns from run times (adaptive routing).
    Built once per process by ``dispatcher.runtime`` and shared by both routes."""

    def __init__(self, records: RecordStore, dead_letters: DeadLetterStore, health: Health,
                 observe: Callable[[TaskSpec, float], None] | None = None,
                 cancellations: Cancellations | None = None,
                 limits: Limits | None = None) -> None:
        self.records = records
        self.dead_letters = dead_letters
        self.health = health
        self.observe = observe or (lambda spec, seconds: None)  # nothing learns
        self.cancellations: Cancellations = cancellations or LocalCancellations()
        self.limits: Limits = limits or LocalLimits()

    def record(self, job: Job, status: State, *, transition: bool = True,
               **fields: Any) -> None:
        """Save the job's record; a store outage is logged, never fatal to the job. The
        store buffers it (no I/O here) and writes it once Redis answers: a record is
        never skipped because the store was down a moment ago, or a finished job would
        keep showing PENDING. ``transition=False`` updates the record without a history
        entry (progress). A plain PENDING (a dispatch) only files the job: the store
        builds the record later, off the caller's (the request's) time."""
        try:
            if status == "PENDING" and not fields:
                self.records.save_pending(job)
            else:
                self.records.save(make_record(job, status, **fields), transition=transition)
        except Exception as exc:
            self.health.failed(exc)
            log.warning("could not record %s for task %s: %s", status, job.id, exc)

    def dead_letter(self, job: Job, error: ErrorInfo, reason: str, tb: str = "") -> None:
        """Keep a finally failed job, with its arguments, for inspection and re-dispatch."""
        try:
            self.dead_letters.add(make_dead_letter(job, error, reason, tb))
        except Exception as exc:
            log.error("could not dead-letter task %s (%s): %s", job.id, reason, exc)

    def run_sync(self, job: Job, values: dict[str, Any],
                 started_at: float | None = None) -> Outcome:
        """Run one attempt here; ``started_at``: when the limiter admitted it."""
        return _run_sync(self, job, values, started_at)

    async def run_async(self, job: Job, values: dict[str, Any],
                        started_at: float | None = None) -> Outcome:
        return await _run_async(self, job, values, started_at)

    def revoke(self, job: Job, *, duration_ms: float | None = None, **fields: Any) -> Outcome:
        """End a cancelled job: ``REVOKED`` (Celery's name), never retried or
        dead-lettered; ``task.cancelled`` is emitted once, here."""
        revoked: ErrorInfo = {"type": "TaskRevokedError", "message": "cancelled"}
        self.record(job, "REVOKED", reason="cancelled", result=celery_exception(
            revoked, "celery.exceptions"), duration_ms=duration_ms, **fields)
        emit("task.cancelled", job, duration_ms=duration_ms, reason="cancelled")
        return Outcome("REVOKED", error=TaskCancelled(job.id))

    def skip_cancelled(self, job: Job) -> Outcome:
        """A cancelled job met before it started: it never runs. It ends ``REVOKED``
        here unless the cancel ended it already (it was waiting then)."""
        try:
            record = self.records.load(job.id)
        except Exception as exc:  # unknown: record it again rather than not at all
            log.warning("record of cancelled task %s not read: %s", job.id, exc)
            record = None
        if record is None or record["status"] != "REVOKED":
            return self.revoke(job)
        return Outcome("REVOKED", error=TaskCancelled(job.id))

    def reject(self, job: Job, error: BaseException,
               reason: str = "invalid_payload") -> Outcome:
        """End a job that must not start (bad payload, poison): no retry, dead-lettered."""
        return Attempt(self, job, announce=False).failed(error, final_reason=reason)


class Attempt:
    """The life of one run: started, then succeeded or failed (maybe to be retried)."""

    def __init__(self, execution: Execution, job: Job, *, announce: bool = True,
                 started_at: float | None = None) -> None:
        self.execution = execution
        self.job = job
        self.started_at = time.time() if started_at is None else started_at
        self.queue_wait_ms = round(job.queue_wait(self.started_at) * 1000, 3)
        self.progress: dict[str, Any] | None = None
        self._t0 = time.perf_counter()
        self._cancelled = False
        self._next_cancel_check = 0.0
        if announce:
            execution.record(job, "STARTED", **self._fields())
            emit("task.started", job, queue_wait_ms=self.queue_wait_ms)

    def _fields(self) -> dict[str, Any]:
        """What every record of this attempt carries besides its state."""
        return {
            "started_at": self.started_at,
            "queue_wait_ms": self.queue_wait_ms,
            "progress": self.progress,
        }

    def _elapsed_ms(self) -> float:
        return (time.perf_counter() - self._t0) * 1000

    def report_progress(self, current: float, total: float | None, message: str) -> None:
        """Keep the latest progress and put it in the job's record (no history entry)."""
        percent = None if total is None else round(min(100.0, 100.0 * current / total), 1)
        self.progress = {"current": current, "total": total, "percent": percent,
                         "message": message, "at": time.time()}
        self.execution.record(self.job, "STARTED", transition=False, **self._fields())

    def cancel_requested(self) -> bool:
        """Whether this job was cancelled (asked of the marks at most every
        ``CANCEL_CHECK_EVERY`` seconds; once told, for good)."""
        if not self._cancelled and time.monotonic() >= self._next_cancel_check:
            self._next_cancel_check = time.monotonic() + CANCEL_CHECK_EVERY
            self._cancelled = self.execution.cancellations.is_cancelled(self.job.id)
        return self._cancelled

    def succeeded(self, result: Any) -> Outcome:
        self.execution.observe(self.job.spec, self._elapsed_ms() / 1000)
        try:
            encoded = to_jsonable_python(result)
        except Exception as exc:
            # Running again would repeat the side effects and fail the same way.
            error = TypeError(f"result cannot be stored as JSON: {exc}")
            return self.failed(error, final_reason="unserializable_result")
        duration = self._elapsed_ms()
        self.execution.record(self.job, "SUCCESS", result=encoded, duration_ms=round(duration, 3),
               **self._fields())
        emit("task.succeeded", self.job, duration_ms=duration)
        return Outcome("SUCCESS", result=encoded)

    def failed(self, error: BaseException, *, final_reason: str | None = None) -> Outcome:
        """Record a failed attempt; ``final_reason`` ends the job without asking the policy."""
        job = self.job
        final = final_reason is not None
        duration = self._elapsed_ms()
        if isinstance(error, TaskCancelled) or (
                isinstance(error, asyncio.CancelledError) and self._cancelled) or (
                not final and self.cancel_requested()):  # never retried once cancelled
            return self.execution.revoke(job, duration_ms=round(duration, 3), **self._fields())
        if not final:  # a run that failed (or timed out) took its time too
            self.execution.observe(job.spec, duration / 1000)
        decision = job.spec.retry.decide(job.attempt, error)
        secrets = secret_values(job.payload, secret_names(job.spec.name))
        raw = error_fields(error)
        error_info: ErrorInfo = {"type": scrub(raw["type"], secrets),
                                 "message": scrub(raw["message"], secrets)}
        fields = {"error": error_info, "duration_ms": round(duration, 3), **self._fields()}
        if decision.retry and not final:
            self.execution.record(job, "RETRY", retry_in=decision.delay, **fields)
            emit(
                "task.retrying",
                job,
                level=logging.WARNING,
                duration_ms=duration,
                error=error,
                retry_in=round(decision.delay, 3),
            )
            return Outcome("RETRY", error=error, retry_delay=decision.delay)
        tb = scrub("".join(traceback.format_exception(error)), secrets)
        reason = final_reason or decision.reason
        self.execution.record(job, "FAILURE", traceback=tb, reason=reason,
                              result=celery_exception(error_info, _exception_module(error)),
                              **fields)
        self.execution.dead_letter(job, error_info, reason, tb)
        emit(
            "task.failed",
            job,
            level=logging.ERROR,
            duration_ms=duration,
            error=error,
            reason=reason,
        )
        return Outcome("FAILURE", error=error)


def _exception_module(error: BaseException) -> str | None:
    """Where a Celery client finds the failure's class. Not ours: their constructors
    take more than the one message Celery passes (None: Celery makes up a class of the
    same name, which carries the message)."""
    module = type(error).__module__
    return None if module.split(".")[0] == "dispatcher" else module


def _run_sync(execution: Execution, job: Job, values: dict[str, Any],
              started_at: float | None) -> Outcome:
    """Run a synchronous task function in this thread (the worker's and the inline
    executor's sync path); a timed-out call comes back as ``Outcome.lingering``."""
    attempt = Attempt(execution, job, started_at=started_at)
    fn, timeout = job.spec.fn, job.spec.timeout
    token = attempt_var.set(attempt)
    lingering = None
    try:
        if timeout is None:
            result = fn(**values)
        else:
            result, lingering = call_with_timeout(fn, values, timeout)
    except BaseException as exc:
        if must_propagate(exc, job):
            raise
        return attempt.failed(exc)
    finally:
        attempt_var.reset(token)
    if lingering is not None:
        assert timeout is not None
        outcome = attempt.failed(TaskTimeout(job.spec.name, timeout))
        return dataclasses.replace(outcome, lingering=lingering)
    return attempt.succeeded(result)


async def _run_async(execution: Execution, job: Job, values: dict[str, Any],
                     started_at: float | None) -> Outcome:
    """Run a coroutine task function on the running loop (both routes' async path)."""
    attempt = Attempt(execution, job, started_at=started_at)
    spec = job.spec
    token = attempt_var.set(attempt)  # copied into the task below
    watcher: asyncio.Future[None] | None = None
    try:
        running: asyncio.Future[Any] = asyncio.ensure_future(spec.fn(**values))
        watcher = asyncio.ensure_future(_cancel_when_told(attempt, running))
        if spec.timeout is None:
            result = await running
        else:
            done, _ = await asyncio.wait({running}, timeout=spec.timeout)
            if not done:
                running.cancel()
                return attempt.failed(TaskTimeout(spec.name, spec.timeout))
            result = running.result()
    except BaseException as exc:
        if must_propagate(exc, job):
            raise
        return attempt.failed(exc)
    finally:
        if watcher is not None:
            watcher.cancel()
        attempt_var.reset(token)
    return attempt.succeeded(result)


async def _cancel_when_told(attempt: Attempt, running: asyncio.Future[Any]) -> None:
    """Cancel a coroutine task on its loop once its job is cancelled."""
    while not running.done():
        if attempt.cancel_requested():
            running.cancel()
            return
        await asyncio.wait({running}, timeout=CANCEL_CHECK_EVERY)
