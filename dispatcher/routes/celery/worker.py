"""The worker side of the Celery route: every delivered message runs through the
execution core here, crash redeliveries are counted apart from attempts (poison after
``DISPATCH_MAX_CRASHES``), and retries are re-published."""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
from typing import Any

import redis
from celery import Celery
from celery.exceptions import Retry, WorkerLostError

from ...core.errors import ConfigurationError, TaskFailed, TaskValidationError
from ...core.execution import Execution, Outcome
from ...core.job import Job
from ...core.limits import UNLIMITED, Admission, admit, is_limited, release_after
from ...core.ports import RegisteredTask
from ...core.record import pending_json
from ...core.registry import all_tasks
from ...core.settings import DispatcherSettings
from ...store import keys
from ...store.link import Link
from .defer import defer
from .delivery import delivery_commands, delivery_counts
from .monitor import BROKER_ERRORS
from .protocol import HEADER
from .route import CeleryRoute
from .started import StartedRequest
from .unknown import UnknownTasks

log = logging.getLogger("dispatcher.worker")

_loops = threading.local()


def worker_loop() -> asyncio.AbstractEventLoop:
    """One persistent event loop per worker process (per thread with ``-P threads``) for
    async tasks, not one per job."""
    loop: asyncio.AbstractEventLoop | None = getattr(_loops, "loop", None)
    if loop is None or loop.is_closed() or getattr(_loops, "pid", 0) != os.getpid():
        loop = asyncio.new_event_loop()
        _loops.loop, _loops.pid = loop, os.getpid()
    return loop


def job_from_request(task: RegisteredTask, request: Any, payload: dict[str, Any]) -> Job:
    meta = getattr(request, HEADER, None)
    meta = meta if isinstance(meta, dict) else {}
    delivery = getattr(request, "delivery_info", None) or {}
    priority = meta.get("priority")
    return Job(
        id=str(request.id),
        spec=task.spec,
        route="celery",
        queue=meta.get("queue") or delivery.get("routing_key"),
        priority=priority if isinstance(priority, int) else task.spec.priority,
        payload=payload,
        attempt=int(meta.get("attempt") or 1),
        request_id=meta.get("request_id"),
        # A message sent by a plain Celery client carries none of our header: its job
        # counts as dispatched when it arrives.
        dispatched_at=float(meta.get("dispatched_at") or time.time()),
        queued_at=_number(meta.get("queued_at")),
    )


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None




class CeleryWorker:
    """Runs delivered messages in a worker process (each pool process has its own copy
    after the fork): its ``route`` publishes retries, ``execution`` records attempts,
    ``records`` is the records Redis (None: none configured)."""

    def __init__(self, settings: DispatcherSettings, route: CeleryRoute, execution: Execution,
                 records: redis.Redis | None) -> None:
        self.settings = settings
        self.route = route
        self.execution = execution
        self.records = records
        #: False: the caller writes each job's records with its acknowledgement (a direct
        #: consumer, ``RedisRecordStore.write_with_ack``), so ``execute`` leaves them in
        #: the buffer, but for a retry's (written before the next attempt is published).
        self.flush_before_ack = True
        #: What to do with messages for tasks this worker does not have.
        self.unknown_tasks = UnknownTasks(route.monitor.publisher.client, execution,
                                          settings.unknown_task_grace)
        #: Each thread's own connection for run counts, kept across jobs (``-P threads``
        #: runs jobs side by side: their replies must not interleave on one connection).
        self._count = threading.local()

    def count_run(self, job: Job, ttl: int, request: Any = None) -> tuple[int | None, bool]:
        """Count this delivery of ``job``; a delivery beyond the header's attempt means an
        earlier run died with its process (SIGKILL, OOM): a death, not a failed attempt.

        Waited for before the task runs: a count sent without waiting was measured to be
        lost now and then when the task killed its process right after (the fault suite's
        self-SIGKILL jobs), and a lost count lets a poison job run once too often.
        None: no count (no store, or it failed), trust the message's own attempt number.
        Also answers whether the job was cancelled (its mark, read in the same round trip).
        Our transport has done all this as the worker took the message (``transport``):
        then no round trip is made here.
        """
        settings = self.settings
        counted = delivery_counts(request)
        if counted is not None:  # runs None: our records live apart from the broker
            runs, cancelled = counted
            if runs is None:
                runs = _count_separately(self.records, job, ttl)
            return runs, cancelled
        records = self.records
        shared = records is not None and settings.results_url == settings.broker_url
        # A batch job's PENDING record is left to the take: none took it here.
        commands = delivery_commands(job.publish_id, ttl if shared else 0,
                                     pending=(pending_json(job), ttl) if shared else None)
        link = self._count_link()
        try:
            link.send(commands)
            replies = [link.read() for _ in commands]
        except BROKER_ERRORS:
            link.drop()  # an error reply too: the rest of them are still unread
            return None, False
        cancelled = bool(replies[2])
        if shared:
            return int(replies[3]), cancelled
        return _count_separately(records, job, ttl), cancelled

    def connect_early(self) -> None:
        """Connect a new pool process before its first job, so that job does not wait for
        it (a connection costs a few milliseconds)."""
        try:
            self._count_link().connect()
        except BROKER_ERRORS as exc:  # the first job will try again
            log.debug("could not connect ahead of the first job: %s", exc)

    def _count_link(self) -> Link:
        link: Link | None = getattr(self._count, "link", None)
        if link is None:
            link = self._count.link = Link(self.route.monitor.publisher.client)
        return link

    def execute(self, task: RegisteredTask, request: Any, payload: dict[str, Any],
                args: tuple[Any, ...] = ()) -> Any:
        """Run one delivered message through the execution core and carry out its outcome.

        The job's records are flushed before the message is acknowledged (or written
        with the acknowledgement, see ``flush_before_ack``): a worker
        process that dies right after (the next job may kill it) must not take them
        along. Celery's task events (what Flower shows) follow the outcome: the result
        is returned (``ignore_result``: Celery puts it in the event and stores nothing),
        and a job that failed for good raises ``TaskFailed``, an expected error Celery
        logs without a traceback (ours is in the job's record and log line already).

        ``args``: positional arguments, which only a plain Celery client sends
        (``send_task(name, args=[...])``); they are bound to the task's parameter names
        and then validated like any payload.
        """
        outcome: Outcome | None = None
        try:
            refused: TaskValidationError | None = None
            if args:
                try:
                    payload = task.validator.bind(args, payload)
                except TaskValidationError as exc:
                    refused = exc
            job = job_from_request(task, request, payload)
            admission = self._admit(job, request)
            try:
                runs, cancelled = self.count_run(job, self.settings.result_ttl, request)
                if cancelled:  # never started: acknowledged without running
                    self.execution.skip_cancelled(job)
                    return None
                outcome = self._execute(task, job, payload, runs, refused, admission.at)
            finally:
                release_after(self.execution.limits, job, admission,
                              None if outcome is None else outcome.lingering)
        finally:
            # Written with the acknowledgement only after a plain run: a retry's record
            # must land before its next attempt is published, and so must a deferral's.
            if self.flush_before_ack or outcome is None or outcome.retry_delay is not None:
                self.execution.records.flush(self.settings.publish_timeout)
        if outcome.retry_delay is not None:  # the RETRY record has landed (flushed above)
            self.route.publish(job.next_attempt(outcome.retry_delay),
                               countdown=outcome.retry_delay)
            # Tell Celery (and Flower) this run ended in a retry we already scheduled.
            raise Retry(str(outcome.error), when=outcome.retry_delay)  # type: ignore[arg-type]
        if outcome.status == "FAILURE":
            error = outcome.error
            raise TaskFailed(str(request.id), type(error).__name__, str(error)) from error
        return outcome.result

    def _admit(self, job: Job, request: Any = None) -> Admission:
        """The limiter's admission of ``job`` (always, for a task without limits). A job
        it refused is filed back in the delay store, to come back when the limiter said
        (or when a slot it waits for frees), and Celery is told it will be retried."""
        if not is_limited(job.spec) or self.execution.cancellations.is_cancelled(job.id):
            return UNLIMITED
        admission = admit(self.execution.limits, job)
        if admission.granted or not defer(self.route.monitor.publisher.client,
                                          self.settings, job, admission,
                                          _counted_on_broker(request)):
            return admission
        reason = (admission.reason or "limit").replace("_", " ")
        raise Retry(f"over its {reason}: waits {admission.wait:.3g} s",
                    when=admission.wait)  # type: ignore[arg-type]

    def _execute(self, task: RegisteredTask, job: Job, payload: dict[str, Any],
                 runs: int | None, refused: TaskValidationError | None = None,
                 started_at: float | None = None) -> Outcome:
        # Deliveries beyond the attempt number: earlier runs died with their process.
        # Deaths are not the task's failures (its worker may have been killed with it);
        # only a job that kept killing its process is poison.
        crashes = 0 if runs is None else max(0, runs - job.attempt)
        if crashes >= self.settings.max_crashes:
            error = WorkerLostError(
                f"the process running task {job.id} died {crashes} time(s); "
                "giving up (poison job)"
            )
            return self.execution.reject(job, error, reason="crashed")
        if crashes:
            log.warning("task %s (%s) runs again: its process died while running it "
                        "(death %d; poison at %d)", job.id, job.spec.name, crashes,
                        self.settings.max_crashes)
        if refused is not None:
            return self.execution.reject(job, refused)
        try:
            values = task.validator.decode(payload)
        except TaskValidationError as exc:
            return self.execution.reject(job, exc)
        if task.spec.is_async:
            outcome = worker_loop().run_until_complete(
                self.execution.run_async(job, values, started_at))
        else:
            outcome = self.execution.run_sync(job, values, started_at)
        return outcome

    def register_tasks(self, app: Celery) -> list[str]:
        """Register every ``@task`` with ``app`` under its own name; returns the names."""
        names = []
        for task in all_tasks():
            self._register(app, task)
            names.append(task.spec.name)
        return names

    def _register(self, app: Celery, task: RegisteredTask) -> None:
        worker = self

        def run(self: Any, /, *args: Any, **payload: Any) -> Any:
            return worker.execute(task, self.request, payload, args)

        run.__name__ = task.spec.name.rsplit(".", 1)[-1]
        run.__doc__ = task.spec.fn.__doc__
        app.task(name=task.spec.name, bind=True, ignore_result=True, acks_late=True,
                 typing=False, throws=(TaskFailed,), Request=StartedRequest)(run)


def _counted_on_broker(request: Any) -> bool:
    counts = delivery_counts(request)
    return counts is not None and counts[0] is not None


def _count_separately(records: redis.Redis | None, job: Job, ttl: int) -> int | None:
    """The delivery count in a records store other than the broker."""
    if records is None:
        return None
    try:
        with records.pipeline(transaction=False) as separate:
            separate.incr(keys.runs(job.id))
            separate.expire(keys.runs(job.id), ttl)
            return int(separate.execute()[0])
    except BROKER_ERRORS:
        return None


def require_broker(settings: DispatcherSettings) -> str:
    if settings.broker_url is None:
        raise ConfigurationError("DISPATCH_BROKER_URL is not set; a Celery worker needs a broker")
    return settings.broker_url


def worker_queues(settings: DispatcherSettings) -> list[str]:
    """Every queue a registered task can be routed to: the default, decorators', rules'."""
    queues = [settings.default_queue]
    queues += [q for t in all_tasks() if (q := t.spec.queue)]
    queues += [rule.queue for rule in settings.routes if rule.queue and rule.route == "celery"]
    return list(dict.fromkeys(queues))
