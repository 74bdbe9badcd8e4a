"""``@task``: declares a task function (its options checked here, at decoration time)
and registers the ``Task`` it becomes; ``registered(name)`` finds it again."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from typing import Any, Literal, ParamSpec, TypeVar, cast, overload

from ..core.declaration import build_spec, probe
from ..core.registry import get_task, register
from ..core.retry import RetryPolicy
from ..core.spec import OutageMode, PriorityName, RouteName
from ..core.validation import ArgumentValidator
from .task import Task

P = ParamSpec("P")
R = TypeVar("R")


def _make_task(fn: Callable[P, R], options: dict[str, Any]) -> Task[P, R]:
    spec = build_spec(fn, options)
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
    schedule: str | timedelta | None = None,
    rate_limit: str | None = None,
    concurrency: int | None = None,
    concurrency_key: str | None = None,
) -> Callable[[Callable[P, R]], Task[P, R]]: ...


def task(fn: Any = None, /, **options: Any) -> Any:
    """Declare a task: ``@task`` or ``@task(name=, weight=, priority=, queue=, route=,
    retry=, timeout=, broker_outage=, schedule=, rate_limit=, concurrency=,
    concurrency_key=)``. Invalid or unknown options raise
    ``TaskDefinitionError`` here."""
    if fn is not None:
        return _make_task(fn, options)
    build_spec(probe, options)  # fail fast on bad options, even before a function

    def decorate(inner: Callable[P, R]) -> Task[P, R]:
        return _make_task(inner, options)

    return decorate


def registered(name: str) -> Task[Any, Any]:
    """The task registered as ``name`` (``UnknownTaskError`` otherwise)."""
    return cast("Task[Any, Any]", get_task(name))
