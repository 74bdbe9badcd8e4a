"""Declaring a task: the ``@task`` options checked and turned into a ``TaskSpec``, and
``.options(...)`` checked and merged into ``CallOptions``. Unknown or invalid options
fail here, at decoration (or ``.options``) time, naming the option."""

from __future__ import annotations

import datetime
import difflib
import inspect
from collections.abc import Callable
from typing import Any

from .errors import TaskDefinitionError, TaskValidationError
from .retry import RetryPolicy
from .schedule import parse_schedule
from .spec import (
    OUTAGE_MODES,
    CallOptions,
    RateLimit,
    TaskSpec,
    parse_priority,
    parse_rate_limit,
    parse_route,
)

OPTIONS = ("name", "weight", "priority", "queue", "route", "retry", "timeout", "broker_outage",
           "schedule", "rate_limit", "concurrency", "concurrency_key")


def merge_call_options(task_name: str, current: CallOptions, *, route: Any = None,
                       priority: Any = None, queue: Any = None, countdown: Any = None,
                       eta: Any = None, idempotency_key: Any = None) -> CallOptions:
    """``current`` with these overrides; ``TaskValidationError`` names each bad one."""
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
    if eta is not None and not isinstance(eta, datetime.datetime):
        errors.append({"field": "eta", "message": "must be a datetime"})
    elif eta is not None and eta.utcoffset() is None:
        errors.append({"field": "eta", "message": "must be timezone-aware "
                       "(e.g. datetime.now(timezone.utc) + timedelta(minutes=5))"})
    if eta is not None and countdown is not None:
        errors.append({"field": "eta", "message": "give countdown or eta, not both"})
    if idempotency_key is not None and (
        not isinstance(idempotency_key, str) or not 0 < len(idempotency_key) <= 200
    ):
        errors.append({"field": "idempotency_key", "message": "must be 1-200 characters"})
    if errors:
        raise TaskValidationError(task_name, errors)
    merged = CallOptions(
        route=parsed_route if parsed_route is not None else current.route,
        priority=parsed_priority if parsed_priority is not None else current.priority,
        queue=queue if queue is not None else current.queue,
        # The later of countdown and eta replaces the other.
        countdown=(float(countdown) if countdown is not None
                   else None if eta is not None else current.countdown),
        eta=(eta.timestamp() if eta is not None
             else None if countdown is not None else current.eta),
        idempotency_key=idempotency_key or current.idempotency_key,
    )
    return merged


def build_spec(fn: Callable[..., Any], options: dict[str, Any]) -> TaskSpec:
    unknown = [key for key in options if key not in OPTIONS]
    if unknown:
        key = unknown[0]
        close = difflib.get_close_matches(key, OPTIONS, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise TaskDefinitionError(
            f"@task got an unknown option {key!r}{hint} (known: {', '.join(OPTIONS)})"
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
    schedule = None
    if options.get("schedule") is not None:
        try:
            schedule = parse_schedule(name, options["schedule"])
        except ValueError as exc:
            raise TaskDefinitionError(f"{where}: {exc}") from None
        needed = [p.name for p in inspect.signature(fn).parameters.values()
                  if p.default is p.empty and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
        if needed:
            raise TaskDefinitionError(
                f"{where}: a scheduled task must be callable without arguments ({needed[0]!r} "
                "has no default); give arguments in DISPATCH_SCHEDULES instead")
    rate_limit, concurrency, concurrency_key = _limits(where, fn, options)
    return TaskSpec(
        rate_limit=rate_limit,
        concurrency=concurrency,
        concurrency_key=concurrency_key,
        schedule=schedule,
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


def _limits(where: str, fn: Callable[..., Any], options: dict[str, Any]
            ) -> tuple[RateLimit | None, int | None, str | None]:
    """``rate_limit``, ``concurrency`` and ``concurrency_key``, checked."""
    rate_limit = None
    if options.get("rate_limit") is not None:
        try:
            rate_limit = parse_rate_limit(options["rate_limit"])
        except ValueError as exc:
            raise TaskDefinitionError(f"{where}: {exc}") from None
    concurrency = options.get("concurrency")
    if concurrency is not None and (
            isinstance(concurrency, bool) or not isinstance(concurrency, int) or concurrency < 1):
        raise TaskDefinitionError(f"{where}: concurrency must be an int >= 1, got {concurrency!r}")
    key = options.get("concurrency_key")
    if key is not None:
        if concurrency is None:
            raise TaskDefinitionError(f"{where}: concurrency_key needs concurrency=N")
        names = [p.name for p in inspect.signature(fn).parameters.values()
                 if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
        if fn is not probe and key not in names:
            raise TaskDefinitionError(
                f"{where}: concurrency_key {key!r} is not a parameter (it has: "
                f"{', '.join(names) or 'none'})")
    return rate_limit, concurrency, key


def probe() -> None:
    """What ``@task(...)`` checks its options with before it has the function."""


def mark_coroutine_function(wrapper: object, fn: Callable[..., Any]) -> None:
    """Let ``inspect.iscoroutinefunction`` see an async task as what it wraps, so code
    that calls it directly (``BackgroundTasks.add_task(task, ...)``) awaits the result."""
    marker = getattr(inspect, "markcoroutinefunction", None)  # Python 3.12+
    if marker is not None:
        marker(wrapper)
        return
    # Python 3.11 treats an object with a function's code attributes as function-like.
    for name in ("__code__", "__defaults__", "__kwdefaults__"):
        setattr(wrapper, name, getattr(fn, name, None))
