"""The one execution core: both routes run every attempt through here.

It applies the timeout, records state, emits the log events and asks the task's
``RetryPolicy`` what to do after a failure. It never schedules anything itself: the
route that called it carries out the returned ``Outcome`` (a timer inline, a
re-publish with a countdown on Celery).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextvars
import dataclasses
import logging
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from pydantic_core import to_jsonable_python

from .context import attempt_var
from .errors import TaskTimeout
from .events import emit, error_fields
from .job import Job
from .ports import DeadLetterStore, Health, RecordStore
from .record import ErrorInfo, State, celery_exception, make_dead_letter, make_record
from .redaction import scrub, secret_values
from .registry import secret_names
from .spec import TaskSpec

log = logging.getLogger("dispatcher.core")


@dataclass(frozen=True, slots=True)
class Outcome:
    """How an attempt ended; ``retry_delay`` is set when the route must try again."""

    status: Literal["SUCCESS", "RETRY", "FAILURE"]
    result: Any = None
    error: BaseException | None = None
    retry_delay: float | None = None
    #: A timed-out sync call still running in its thread (Python cannot stop it).
    lingering: concurrent.futures.Future[Any] | None = None


def _ignore(spec: TaskSpec, seconds: float) -> None:
    """Default run-time observer: nothing learns from run times."""


class Execution:
    """The ports one process runs its jobs against: where records and dead letters go,
    whether the records store is up, and who learns from run times (adaptive routing).
    Built once per process by ``dispatcher.runtime`` and shared by both routes."""

    def __init__(self, records: RecordStore, dead_letters: DeadLetterStore, health: Health,
                 observe: Callable[[TaskSpec, float], None] = _ignore) -> None:
        self.records = records
        self.dead_letters = dead_letters
        self.health = health
        self.observe = observe

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

    def run_sync(self, job: Job, values: dict[str, Any]) -> Outcome:
        return _run_sync(self, job, values)

    async def run_async(self, job: Job, values: dict[str, Any]) -> Outcome:
        return await _run_async(self, job, values)

    def reject(self, job: Job, error: BaseException,
               reason: str = "invalid_payload") -> Outcome:
        """End a job that must not start (bad payload, poison): no retry, dead-lettered."""
        return Attempt(self, job, announce=False).failed(error, final_reason=reason)


class Attempt:
    """The life of one run: started, then succeeded or failed (maybe to be retried)."""

    def __init__(self, execution: Execution, job: Job, *, announce: bool = True) -> None:
        self.execution = execution
        self.job = job
        self.started_at = time.time()
        self.queue_wait_ms = round(job.queue_wait(self.started_at) * 1000, 3)
        self.progress: dict[str, Any] | None = None
        self._t0 = time.perf_counter()
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


def _must_propagate(error: BaseException, job: Job) -> bool:
    """Interrupts, a worker process being terminated, and the cancellation of *our*
    asyncio task are not failures of the task: the job is redelivered instead."""
    if isinstance(error, KeyboardInterrupt):
        return True
    if isinstance(error, SystemExit) and job.route == "celery":
        return True  # Celery terminating the pool process (e.g. on connection loss)
    if isinstance(error, asyncio.CancelledError):
        try:
            current = asyncio.current_task()
        except RuntimeError:
            return False
        return current is not None and current.cancelling() > 0
    return False


def _call_with_timeout(
    fn: Any, values: dict[str, Any], timeout: float
) -> tuple[Any, concurrent.futures.Future[Any] | None]:
    """Call ``fn`` in a fresh daemon thread and wait at most ``timeout`` seconds:
    ``(result, None)``, or ``(None, the still running call)`` once the time is up.

    The clock starts when the call does. Python cannot stop the thread: a timed-out
    call finishes in the background, and being a daemon it never delays an exit.
    """
    future: concurrent.futures.Future[Any] = concurrent.futures.Future()

    def call() -> None:
        try:
            future.set_result(fn(**values))
        except BaseException as exc:
            future.set_exception(exc)

    context = contextvars.copy_context()  # progress() in the thread finds its attempt
    threading.Thread(target=context.run, args=(call,), name="dispatch-timed-call",
                     daemon=True).start()
    try:
        return future.result(timeout=timeout), None
    except concurrent.futures.TimeoutError:
        if future.done():
            raise
        return None, future


def _run_sync(execution: Execution, job: Job, values: dict[str, Any]) -> Outcome:
    """Run a synchronous task function in this thread (the worker's and the inline
    executor's sync path); a timed-out call comes back as ``Outcome.lingering``."""
    attempt = Attempt(execution, job)
    fn, timeout = job.spec.fn, job.spec.timeout
    token = attempt_var.set(attempt)
    lingering = None
    try:
        if timeout is None:
            result = fn(**values)
        else:
            result, lingering = _call_with_timeout(fn, values, timeout)
    except BaseException as exc:
        if _must_propagate(exc, job):
            raise
        return attempt.failed(exc)
    finally:
        attempt_var.reset(token)
    if lingering is not None:
        assert timeout is not None
        outcome = attempt.failed(TaskTimeout(job.spec.name, timeout))
        return dataclasses.replace(outcome, lingering=lingering)
    return attempt.succeeded(result)


async def _run_async(execution: Execution, job: Job, values: dict[str, Any]) -> Outcome:
    """Run a coroutine task function on the running loop (both routes' async path)."""
    attempt = Attempt(execution, job)
    spec = job.spec
    token = attempt_var.set(attempt)  # copied into the task below
    try:
        running: asyncio.Future[Any] = asyncio.ensure_future(spec.fn(**values))
        if spec.timeout is None:
            result = await running
        else:
            done, _ = await asyncio.wait({running}, timeout=spec.timeout)
            if not done:
                running.cancel()
                return attempt.failed(TaskTimeout(spec.name, spec.timeout))
            result = running.result()
    except BaseException as exc:
        if _must_propagate(exc, job):
            raise
        return attempt.failed(exc)
    finally:
        attempt_var.reset(token)
    return attempt.succeeded(result)
