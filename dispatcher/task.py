"""The ``@task`` decorator and ``Task``, the object it returns.

A ``Task`` is still the function (calling it runs it directly, with its signature,
docstring and types) and gains ``.dispatch``, ``.options`` and ``.dispatch_many``.
"""

from __future__ import annotations

import difflib
import functools
import inspect
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Generic, Literal, ParamSpec, TypeVar, overload

from . import adaptive, idempotency, runtime
from .context import request_id_var
from .errors import TaskDefinitionError, TaskValidationError
from .handle import TaskHandle
from .inline import InlinePlan, dispatch_inline
from .job import Job, new_job_id
from .metrics import count_route_decision
from .registry import register
from .retry import RetryPolicy
from .routing import RouteDecision, decide_route
from .settings import DispatcherSettings, get_settings
from .spec import (
    OUTAGE_MODES,
    CallOptions,
    OutageMode,
    PriorityName,
    RouteName,
    TaskSpec,
    parse_priority,
    parse_route,
)
from .validation import ArgumentValidator

P = ParamSpec("P")
R = TypeVar("R")

#: Called with each new handle; used by ``dispatcher.testing.capture_dispatches``.
dispatch_listeners: list[Callable[[TaskHandle], None]] = []

#: Inline decisions never spilled over to Celery: explicit pins, and
#: ``DISPATCH_FORCE_ROUTE=inline`` (runs without a worker).
PINNED_INLINE = ("call option", "decorator pin", "DISPATCH_FORCE_ROUTE")
#: Inline jobs that are never handed over to Celery (at shutdown, for instance).
_PINNED_BY_CALLER = ("call option", "decorator pin")

_OPTIONS = ("name", "weight", "priority", "queue", "route", "retry", "timeout", "broker_outage")


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
            _mark_coroutine_function(self, fn)

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
        idempotency_key: str | None = None,
    ) -> Task[P, R]:
        """A copy of this task whose dispatches use these per-call overrides."""
        errors = []
        try:
            parsed_route = None if route is None else parse_route(route)
        except ValueError as exc:
            errors.append({"field": "route", "message": str(exc)})
        try:
            parsed_priority = None if priority is None else parse_priority(priority)
        except ValueError as exc:
            errors.append({"field": "priority", "message": str(exc)})
        if queue is not None and (not isinstance(queue, str) or not queue):
            errors.append({"field": "queue", "message": "must be a non-empty string"})
        if countdown is not None and (
            isinstance(countdown, bool) or not isinstance(countdown, int | float) or countdown < 0
        ):
            errors.append({"field": "countdown", "message": "must be a number of seconds >= 0"})
        if idempotency_key is not None and (
            not isinstance(idempotency_key, str) or not 0 < len(idempotency_key) <= 200
        ):
            errors.append({"field": "idempotency_key", "message": "must be 1-200 characters"})
        if errors:
            raise TaskValidationError(self.spec.name, errors)
        current = self.call_options
        merged = CallOptions(
            route=parsed_route if parsed_route is not None else current.route,
            priority=parsed_priority if parsed_priority is not None else current.priority,
            queue=queue if queue is not None else current.queue,
            countdown=float(countdown) if countdown is not None else current.countdown,
            idempotency_key=idempotency_key or current.idempotency_key,
        )
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
            if auto is None:
                auto = adaptive.auto_route(self.spec, settings)
            return decide_route(self.spec, self.call_options, settings, auto)
        cached = self._route_cache
        if cached is not None and cached[0] is settings:
            return cached[1]
        decision = decide_route(self.spec, self.call_options, settings)
        self._route_cache = (settings, decision)
        options = self.call_options
        self._inline_plan = InlinePlan(
            self.spec, decision, settings, pinned=decision.reason in _PINNED_BY_CALLER,
            spills=self._spill_room(decision, settings) is not None,
        ) if (decision.route == "inline" and not options.countdown
              and options.idempotency_key is None) else None
        return decision

    def _spill_room(self, decision: RouteDecision, settings: DispatcherSettings) -> int | None:
        """How many more jobs of this decision may queue inline before the rest spill
        over to Celery; None when spill-over does not apply (not inline, pinned inline,
        no broker)."""
        if (
            decision.route != "inline"
            or decision.reason in PINNED_INLINE
            or settings.broker_url is None
        ):
            return None
        executor = runtime.current_inline_executor()
        waiting = 0 if executor is None else executor.waiting()
        return max(0, settings.inline_max_pending - waiting)

    def _spilled(self, decision: RouteDecision, settings: DispatcherSettings) -> RouteDecision:
        """``decision`` sent to Celery because the inline executor is full."""
        queue = decide_route(
            self.spec, CallOptions(route="celery", queue=self.call_options.queue), settings
        ).queue
        return RouteDecision(
            "celery",
            queue,
            decision.priority,
            f"spill-over: >= {settings.inline_max_pending} inline jobs waiting",
        )

    def dispatch(self, *args: P.args, **kwargs: P.kwargs) -> TaskHandle:
        """Validate the arguments, route the job and schedule it; returns its handle.

        Raises ``TaskValidationError`` (naming the field) before anything is scheduled,
        and ``BrokerUnavailable`` when the Celery route cannot take the job.
        """
        payload = self.validator.payload(args, kwargs)
        plan = self._inline_plan
        if plan is not None and plan.settings is get_settings():
            job = plan.dispatch(payload)
            if job is not None:
                return self._handle(job)
        return self._dispatch_validated(payload)

    def dispatch_many(
        self, items: Iterable[tuple[Any, ...] | Mapping[str, Any]]
    ) -> list[TaskHandle]:
        """Dispatch one job per item (a tuple of positional or a dict of keyword arguments).

        Every item is validated first, so one bad item schedules nothing.
        """
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
            room = self._spill_room(decision, settings)
            if room is None or room >= len(payloads):
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
            decision = self._spilled(decision, settings)
        now = time.time()
        jobs = [
            self._job(new_job_id(), payload, decision, now) for payload in payloads
        ]
        spilled = decision.reason.startswith("spill-over")
        routes = runtime.celery_route().dispatch_many(
            jobs, self.call_options.countdown, outage=self.spec.broker_outage,
            reason="spill_over" if spilled else None,
        )
        for job, route in zip(jobs, routes, strict=True):
            job.route = route
            if spilled:
                count_route_decision(self.spec.name, "celery", "spill_over")
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
        countdown = self.call_options.countdown
        pinned = decision.route == "inline" and decision.reason in _PINNED_BY_CALLER
        # Positional: this runs on every dispatch, and keyword arguments cost more.
        return Job(job_id, self.spec, decision.route, decision.queue, decision.priority,
                   payload, 1, request_id_var.get(), now, pinned,
                   now + countdown if countdown else None)

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
        spilled = False
        if decision.route == "inline" and self._spill_room(decision, settings) == 0:
            decision, spilled = self._spilled(decision, settings), True
        job_id = new_job_id()
        key = self.call_options.idempotency_key
        if key is not None:
            first = idempotency.claim(self.spec.name, key, job_id, decision.route, decision.queue)
            if first is not None:
                return first
        job = self._job(job_id, payload, decision)
        countdown = self.call_options.countdown
        try:
            if job.route == "celery":
                job.route = runtime.celery_route().dispatch(
                    job, countdown, outage=self.spec.broker_outage,
                    reason="spill_over" if spilled else None,
                )
            else:
                dispatch_inline(job, countdown)
        except BaseException:
            if key is not None:  # nothing was accepted: the key is free again
                idempotency.release(self.spec.name, key, job_id)
            raise
        if spilled:
            count_route_decision(self.spec.name, "celery", "spill_over")
        return self._handle(job)


def _mark_coroutine_function(wrapper: object, fn: Callable[..., Any]) -> None:
    """Let ``inspect.iscoroutinefunction`` see an async task as what it wraps, so code
    that calls it directly (``BackgroundTasks.add_task(task, ...)``) awaits the result."""
    marker = getattr(inspect, "markcoroutinefunction", None)  # Python 3.12+
    if marker is not None:
        marker(wrapper)
        return
    # Python 3.11 treats an object with a function's code attributes as function-like.
    for name in ("__code__", "__defaults__", "__kwdefaults__"):
        setattr(wrapper, name, getattr(fn, name, None))


def _build_spec(fn: Callable[..., Any], options: dict[str, Any]) -> TaskSpec:
    unknown = [key for key in options if key not in _OPTIONS]
    if unknown:
        key = unknown[0]
        close = difflib.get_close_matches(key, _OPTIONS, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise TaskDefinitionError(
            f"@task got an unknown option {key!r}{hint} (known: {', '.join(_OPTIONS)})"
        )
    if not callable(fn):
        raise TaskDefinitionError(f"@task decorates functions, got {fn!r}")
    where = f"@task on {getattr(fn, '__qualname__', fn)!r}"
    name = options.get("name")
    if name is None:
        name = f"{fn.__module__}.{fn.__qualname__}"
    if not isinstance(name, str) or not name.strip():
        raise TaskDefinitionError(f"{where}: name must be a non-empty string")
    if "<locals>" in name and "name" not in options:
        raise TaskDefinitionError(
            f"{where}: functions defined inside another function need an explicit name=..."
        )
    weight = options.get("weight", 1)
    adaptive_weight = weight == "auto"
    if adaptive_weight:
        weight = 1  # what DISPATCH_ROUTES weight ranges see
    elif isinstance(weight, bool) or not isinstance(weight, int) or weight < 1:
        raise TaskDefinitionError(
            f"{where}: weight must be an int >= 1 or \"auto\", got {weight!r}"
        )
    try:
        priority = parse_priority(options.get("priority", "normal"))
        route = None if options.get("route") is None else parse_route(options["route"])
    except ValueError as exc:
        raise TaskDefinitionError(f"{where}: {exc}") from None
    queue = options.get("queue")
    if queue is not None and (not isinstance(queue, str) or not queue.strip()):
        raise TaskDefinitionError(f"{where}: queue must be a non-empty string")
    retry = options.get("retry")
    if retry is not None and not isinstance(retry, RetryPolicy):
        raise TaskDefinitionError(f"{where}: retry must be a RetryPolicy, got {retry!r}")
    timeout = options.get("timeout")
    if timeout is not None and (
        isinstance(timeout, bool) or not isinstance(timeout, int | float) or timeout <= 0
    ):
        raise TaskDefinitionError(f"{where}: timeout must be a number of seconds > 0")
    outage = options.get("broker_outage")
    if outage is not None and outage not in OUTAGE_MODES:
        raise TaskDefinitionError(
            f"{where}: broker_outage must be 'spool', 'inline' or 'raise', got {outage!r}"
        )
    return TaskSpec(
        broker_outage=outage,
        name=name,
        fn=fn,
        weight=weight,
        priority=priority,
        queue=queue,
        route=route,
        retry=retry if retry is not None else RetryPolicy.never(),
        timeout=None if timeout is None else float(timeout),
        is_async=inspect.iscoroutinefunction(fn),
        adaptive=adaptive_weight,
    )


def _make_task(fn: Callable[P, R], options: dict[str, Any]) -> Task[P, R]:
    spec = _build_spec(fn, options)
    task_obj = Task(fn, spec, ArgumentValidator(spec.name, fn))
    register(task_obj)
    return task_obj


@overload
def task(fn: Callable[P, R], /) -> Task[P, R]: ...


@overload
def task(
    *,
    name: str | None = None,
    weight: int | Literal["auto"] = 1,
    priority: PriorityName | int = "normal",
    queue: str | None = None,
    route: RouteName | None = None,
    retry: RetryPolicy | None = None,
    timeout: float | None = None,
    broker_outage: OutageMode | None = None,
) -> Callable[[Callable[P, R]], Task[P, R]]: ...


def task(fn: Any = None, /, **options: Any) -> Any:
    """Declare a task: ``@task`` or ``@task(name=, weight=, priority=, queue=, route=,
    retry=, timeout=, broker_outage=)``. Invalid or unknown options raise
    ``TaskDefinitionError`` here."""
    if fn is not None:
        return _make_task(fn, options)
    _build_spec(_probe, options)  # fail fast on bad options, even before a function

    def decorate(inner: Callable[P, R]) -> Task[P, R]:
        return _make_task(inner, options)

    return decorate


def _probe() -> None:
    """Stand-in used to check decorator options before the function is known."""
