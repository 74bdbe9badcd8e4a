"""The ``@task`` decorator and ``Task``, the object it returns.

A ``Task`` is still the function (calling it runs it directly, with its signature,
docstring and types) and gains ``.dispatch``, ``.options`` and ``.dispatch_many``.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Iterable, Mapping, Sized
from datetime import datetime
from typing import Any, Generic, ParamSpec, TypeVar

from ..core.collector import paused_for
from ..core.context import request_id_var
from ..core.declaration import mark_coroutine_function, merge_call_options
from ..core.errors import TaskValidationError
from ..core.job import Job, new_job_id
from ..core.settings import DispatcherSettings, get_settings
from ..core.spec import CallOptions, PriorityName, RouteName, TaskSpec
from ..core.validation import ArgumentValidator
from ..policy.routing import (
    EVENT_REASON,
    Cause,
    RouteDecision,
    decide_route,
    spill_queue,
    spilled,
    spills,
)
from ..routes.inline.route import InlinePlan
from .container import current
from .handle import TaskHandle

SPILL_OVER = EVENT_REASON[Cause.SPILL_OVER]

P = ParamSpec("P")
R = TypeVar("R")

#: Called with each new handle; used by ``dispatcher.testing.capture_dispatches``.
dispatch_listeners: list[Callable[[TaskHandle], None]] = []


class Task(Generic[P, R]):
    """A registered task function; see the module docstring."""

    spec: TaskSpec
    validator: ArgumentValidator

    def __init__(
        self,
        fn: Callable[P, R],
        spec: TaskSpec,
        validator: ArgumentValidator,
        call_options: CallOptions | None = None,
    ) -> None:
        self.fn = fn
        self.spec = spec
        self.validator = validator
        self.call_options = call_options or CallOptions()
        #: The last routing decision and the settings it was made under (not for auto
        #: tasks, whose route moves): routing is a pure function of both.
        self._route_cache: tuple[DispatcherSettings, RouteDecision] | None = None
        #: The cached decision's inline fast path, when it applies (see ``InlinePlan``).
        self._inline_plan: InlinePlan | None = None
        functools.update_wrapper(self, fn)
        if spec.is_async:
            mark_coroutine_function(self, fn)

    @property
    def name(self) -> str:
        return self.spec.name

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R:
        """Run the function here and now, as if undecorated (no routing, no retries)."""
        return self.fn(*args, **kwargs)

    def __repr__(self) -> str:
        weight = "auto" if self.spec.adaptive else self.spec.weight
        return f"<Task {self.spec.name} weight={weight} priority={self.spec.priority}>"

    def options(
        self,
        *,
        route: RouteName | None = None,
        priority: PriorityName | int | None = None,
        queue: str | None = None,
        countdown: float | None = None,
        eta: datetime | None = None,
        idempotency_key: str | None = None,
    ) -> Task[P, R]:
        """A copy of this task whose dispatches use these per-call overrides.

        ``countdown`` (seconds) or ``eta`` (a timezone-aware datetime) delays each job:
        it is ``PENDING`` until then, held by the dispatcher (never by a worker)."""
        merged = merge_call_options(self.spec.name, self.call_options, route=route,
                                    priority=priority, queue=queue, countdown=countdown,
                                    eta=eta, idempotency_key=idempotency_key)
        return Task(self.fn, self.spec, self.validator, merged)

    def route_for(
        self,
        settings: DispatcherSettings | None = None,
        auto: tuple[RouteName, str] | None = None,
    ) -> RouteDecision:
        """Where a dispatch of this task goes now, and why (``auto``: the adaptive route
        to assume instead of this process's cached one)."""
        settings = settings or get_settings()
        if self.spec.adaptive or auto is not None:
            if auto is None and settings.broker_url is not None:
                auto = current().adaptive.auto_route(self.spec)
            return decide_route(self.spec, self.call_options, settings, auto)
        cached = self._route_cache
        if cached is not None and cached[0] is settings:
            plan = self._inline_plan
            if plan is not None and plan.route is not current().inline:
                self._inline_plan = self._plan(cached[1], settings)  # a reset since
            return cached[1]
        decision = decide_route(self.spec, self.call_options, settings)
        self._route_cache = (settings, decision)
        self._inline_plan = self._plan(decision, settings)
        return decision

    def _plan(self, decision: RouteDecision, settings: DispatcherSettings) -> InlinePlan | None:
        """The inline fast path of ``decision``, when it applies: inline, no countdown,
        no idempotency key, and decided under the process's current settings."""
        options = self.call_options
        if (decision.route != "inline" or options.countdown or options.eta is not None
                or options.idempotency_key is not None or settings is not get_settings()):
            return None
        plan = current().inline.plan(self.spec, decision, settings,
                                     spills=spills(decision, settings))
        if plan.spills:  # where a spill-over goes, worked out once
            plan.spill_queue = spill_queue(self.spec, options, settings)
        return plan

    def _spill_limit(self, decision: RouteDecision, settings: DispatcherSettings) -> int | None:
        """Waiting inline jobs at which this decision spills over to Celery; None when
        spill-over does not apply."""
        return current().inline.pending_limit(settings) if spills(decision, settings) else None

    def dispatch(self, *args: P.args, **kwargs: P.kwargs) -> TaskHandle:
        """Validate the arguments, route the job and schedule it; returns its handle.

        Raises ``TaskValidationError`` (naming the field) before anything is scheduled,
        and ``BrokerUnavailable`` when the Celery route cannot take the job.
        """
        payload = self.validator.payload(args, kwargs)
        plan = self._inline_plan
        if plan is not None and plan.settings is get_settings() and plan.route is current().inline:
            job = plan.dispatch(payload)
            if job is not None:
                return self._handle(job)
            if plan.spill_queue is not None:  # the executor is full: spill over
                return self._spill(plan, plan.spill_queue, payload)
        return self._dispatch_validated(payload)

    def _spill(self, plan: InlinePlan, queue: str, payload: dict[str, Any]) -> TaskHandle:
        """The fast path of a spill-over (``_dispatch_validated`` with a spilled
        decision, for the plain case the plan covers): it runs on every request of a
        saturated server, so it files the job with the background publisher and counts
        it, nothing else."""
        job = Job(new_job_id(), self.spec, "celery", queue, plan.priority, payload, 1,
                  request_id_var.get(), time.time(), False, None)
        self._file_spilled([job], None)
        return self._handle(job)

    def _file_spilled(self, jobs: list[Job], countdown: float | None) -> None:
        """Hand spilled-over jobs to the background publisher (never published on this
        thread) and count each as a spill-over."""
        runtime = current()
        runtime.celery.spill(jobs, countdown, outage=self.spec.broker_outage)
        for _ in jobs:
            runtime.metrics.count_route_decision(self.spec.name, "celery", SPILL_OVER)

    def dispatch_many(
        self, items: Iterable[tuple[Any, ...] | Mapping[str, Any]]
    ) -> list[TaskHandle]:
        """Dispatch one job per item (a tuple of positional or a dict of keyword arguments).

        Every item is validated first, so one bad item schedules nothing.
        """
        calls = items if isinstance(items, Sized) else list(items)
        with paused_for(len(calls)):
            return self._dispatch_many(calls)

    def _dispatch_many(
        self, items: Iterable[tuple[Any, ...] | Mapping[str, Any]]
    ) -> list[TaskHandle]:
        if self.call_options.idempotency_key is not None:
            raise TaskValidationError(
                self.spec.name,
                [{"field": "idempotency_key", "message": "one key cannot cover many jobs; "
                  "dispatch each item with its own key"}],
            )
        payloads = self.validator.payloads(items)
        settings = get_settings()
        decision = self.route_for(settings)
        handles = []
        if decision.route == "inline":
            limit = self._spill_limit(decision, settings)
            room = 0 if limit is None else max(0, limit - current().inline.waiting())
            if limit is None or room >= len(payloads):
                return [
                    self._dispatch_validated(payload, decision, settings)
                    for payload in payloads
                ]
            # As many as fit queue inline; the rest spill over to Celery.
            handles = [
                self._dispatch_validated(payload, decision, settings)
                for payload in payloads[:room]
            ]
            payloads = payloads[room:]
            decision = spilled(decision, self.spec, self.call_options, settings, limit)
        now = time.time()
        jobs = [
            self._job(new_job_id(), payload, decision, now) for payload in payloads
        ]
        spill = decision.cause is Cause.SPILL_OVER
        countdown = jobs[0].delay(now) if jobs else None
        if spill:
            self._file_spilled(jobs, countdown)
            routes = [job.route for job in jobs]
        else:
            routes = current().celery.dispatch_many(
                jobs, countdown, outage=self.spec.broker_outage)
        for job, route in zip(jobs, routes, strict=True):
            job.route = route
            handles.append(self._handle(job))
        return handles

    def _job(
        self,
        job_id: str,
        payload: dict[str, Any],
        decision: RouteDecision,
        dispatched_at: float | None = None,
    ) -> Job:
        now = time.time() if dispatched_at is None else dispatched_at
        options = self.call_options
        due = options.eta if options.eta is not None else (
            now + options.countdown if options.countdown else None)
        # Positional: this runs on every dispatch, and keyword arguments cost more.
        return Job(job_id, self.spec, decision.route, decision.queue, decision.priority,
                   payload, 1, request_id_var.get(), now, decision.pinned_inline, due)

    def _handle(self, job: Job) -> TaskHandle:
        handle = TaskHandle(job.id, self.spec.name, job.route, job.queue)
        if dispatch_listeners:
            for listener in dispatch_listeners:
                listener(handle)
        return handle

    def _dispatch_validated(
        self,
        payload: dict[str, Any],
        decision: RouteDecision | None = None,
        settings: DispatcherSettings | None = None,
    ) -> TaskHandle:
        settings = settings or get_settings()
        if decision is None:
            decision = self.route_for(settings)
        spill = False
        limit = self._spill_limit(decision, settings) if decision.route == "inline" else None
        if limit is not None and current().inline.waiting() >= limit:
            decision, spill = spilled(decision, self.spec, self.call_options, settings,
                                      limit), True
        runtime = current()
        job_id = new_job_id()
        key = self.call_options.idempotency_key
        if key is not None:
            first = runtime.idempotency.claim(self.spec.name, key, job_id, decision.route,
                                              decision.queue)
            if first is not None:
                return TaskHandle(*first)
        job = self._job(job_id, payload, decision)
        countdown = job.delay()
        try:
            if spill:
                self._file_spilled([job], countdown)
            elif job.route == "celery":
                job.route = runtime.celery.dispatch(job, countdown,
                                                    outage=self.spec.broker_outage)
            else:
                runtime.inline.dispatch(job, countdown)
        except BaseException:
            if key is not None:  # nothing was accepted: the key is free again
                runtime.idempotency.release(self.spec.name, key, job_id)
            raise
        return self._handle(job)
