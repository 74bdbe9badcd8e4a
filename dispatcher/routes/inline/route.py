"""The inline route: jobs run in this process, after the response (``BackgroundTasks``
semantics), on the process's ``InlineExecutor``.

Inside a request a job joins the request's batch, handed to the executor once the
response has been sent; outside one it goes to the executor at once. Unfinished jobs
at shutdown are handed to ``fallback`` (the Celery route, through the ``Route`` port:
this route never imports the other) or recorded as failed.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

from ...core.context import batch_var, request_id_var
from ...core.errors import DispatchError
from ...core.events import emit
from ...core.execution import Execution
from ...core.job import Job, new_job_id
from ...core.ports import Route
from ...core.settings import DispatcherSettings
from ...core.spec import RouteName, TaskSpec
from ...policy.routing import RouteDecision, handed_over_queue, pending_limit
from .executor import InlineExecutor

log = logging.getLogger("dispatcher.inline")


class InlineRoute:
    """Dispatches jobs to this process's executor; see the module docstring."""

    name: RouteName = "inline"

    def __init__(self, settings: DispatcherSettings, execution: Execution, *,
                 busy: Callable[[], bool] | None = None,
                 fallback: Route | None = None) -> None:
        self.settings = settings
        self.execution = execution
        self.fallback = fallback
        self._busy = busy
        self._lock = threading.Lock()
        self._executor: InlineExecutor | None = None
        self._closed = False

    @property
    def executor(self) -> InlineExecutor:
        """The executor, started on first use."""
        executor = self._executor
        if executor is not None:
            return executor
        with self._lock:
            if self._closed:  # a reset: this runtime's jobs are over
                raise DispatchError("the inline executor has been shut down")
            if self._executor is None:
                settings = self.settings
                self._executor = InlineExecutor(
                    settings.inline_concurrency, settings.inline_busy_share,
                    settings.inline_max_hold, execution=self.execution, busy=self._busy,
                    on_leftover=self._leftover)
            return self._executor

    def current_executor(self) -> InlineExecutor | None:
        """The executor if this process has started one (shutdown must not create it)."""
        return self._executor

    def waiting(self) -> int:
        executor = self._executor
        return 0 if executor is None else executor.waiting()

    def pending_limit(self, settings: DispatcherSettings) -> int:
        """Waiting jobs at which new ones spill over (``policy.routing.pending_limit``),
        each weighed at the waiting jobs' mean expected run time (``Accepted``)."""
        executor = self._executor
        weighed = None if executor is None else executor.accepted.weighed_run()
        return pending_limit(settings, weighed)

    def dispatch(self, job: Job, countdown: float | None, reason: str | None = None) -> None:
        """Record and announce ``job``, then attach it to the current request or run it."""
        self.execution.record(job, "PENDING")
        if reason is None:  # the event's reason is None by default: no keyword dict to build
            emit("task.dispatched", job)
        else:
            emit("task.dispatched", job, reason=reason)
        batch = batch_var.get()
        if countdown is None and batch is not None and batch.add(job):
            return
        self.executor.submit([job], countdown)

    def accept(self, jobs: Sequence[Job], countdown: float | None, *,
               reason: str | None = None) -> list[RouteName]:
        """The ``Route`` port (the Celery route's outage fallback)."""
        for job in jobs:
            job.route, job.queue = "inline", None
            self.dispatch(job, countdown, reason)
        return ["inline"] * len(jobs)

    def plan(self, spec: TaskSpec, decision: RouteDecision, settings: DispatcherSettings, *,
             spills: bool) -> InlinePlan:
        """The fast path of ``decision`` (made under ``settings``) through this route."""
        return InlinePlan(self, spec, decision, settings, spills=spills)

    def hand_over(self, jobs: Sequence[Job]) -> list[Job]:
        """Give unfinished inline jobs to the Celery route (or its spool) instead of
        dropping them; returns those that could not be handed over (no broker).

        A job that was mid-run may then run twice: at-least-once, never lost.
        """
        if self.settings.broker_url is None or self.fallback is None:
            return list(jobs)
        stranded = []
        for job in jobs:
            job.route = "celery"
            job.queue = handed_over_queue(job.spec, self.settings)
            try:
                self.fallback.accept([job], None)
            except Exception as exc:
                log.error("could not hand over inline task %s: %s", job.id, exc)
                stranded.append(job)
        if len(stranded) < len(jobs):
            log.warning("handed %d unfinished inline job(s) to Celery",
                        len(jobs) - len(stranded))
        return stranded

    def abandon(self, jobs: Sequence[Job], message: str, reason: str) -> None:
        """Record jobs that will never run as failed, loudly: nothing is dropped silently."""
        error = DispatchError(message)
        for job in jobs:
            fields: Any = {"type": "DispatchError", "message": message}
            self.execution.record(job, "FAILURE", error=fields, reason=reason)
            self.execution.dead_letter(job, fields, reason)
            emit("task.failed", job, level=logging.ERROR, error=error, reason=reason)

    def _leftover(self, jobs: list[Job], grace: float) -> None:
        """Jobs a drain gave up on. Running jobs are handed over too: servers end with
        their signal's default action after shutdown (uvicorn re-raises SIGTERM),
        killing the worker threads mid-job. A job that still finishes then runs twice:
        at-least-once."""
        stranded = self.hand_over([j for j in jobs if not j.pinned_inline])
        stranded += [j for j in jobs if j.pinned_inline]
        self.abandon(stranded, f"not finished within the shutdown grace of {grace:g}s",
                     "shutdown")

    def close(self, grace: float = 0.0) -> None:
        """Stop the executor for good (``dispatcher.runtime`` resets)."""
        with self._lock:
            self._closed = True
            executor, self._executor = self._executor, None
        if executor is not None:
            executor.shutdown(grace=grace)


class InlinePlan:
    """An inline dispatch of one task, worked out once per settings and runtime.

    The common case (inline, no countdown, no idempotency key) then costs a job and
    ``InlineRoute.dispatch`` (its filing, its event, an append to the request's batch):
    on a saturated server every microsecond of a dispatch is a request answered less.
    """

    __slots__ = ("pinned", "priority", "queue", "route", "settings", "spec", "spill_queue",
                 "spills")

    def __init__(self, route: InlineRoute, spec: TaskSpec, decision: RouteDecision,
                 settings: DispatcherSettings, *, spills: bool) -> None:
        self.route = route
        self.settings = settings
        self.spec = spec
        self.queue = decision.queue
        self.priority = decision.priority
        self.pinned = decision.pinned_inline
        #: Whether a dispatch may spill over to Celery once enough jobs wait, and the
        #: Celery queue it then goes to (set by the planner, which knows the routing).
        self.spills = spills
        self.spill_queue: str | None = None

    def dispatch(self, payload: dict[str, Any]) -> Job | None:
        """Dispatch ``payload`` as ``InlineRoute.dispatch`` would; None, having done
        nothing, when the plan does not apply now (the executor is full: it spills)."""
        route = self.route
        if self.spills and route.waiting() >= route.pending_limit(self.settings):
            return None
        job = Job(new_job_id(), self.spec, "inline", self.queue, self.priority, payload, 1,
                  request_id_var.get(), time.time(), self.pinned, None)
        self.route.dispatch(job, None)
        return job
