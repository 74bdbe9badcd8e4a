"""What a task declares (``TaskSpec``) and what one call overrides (``CallOptions``)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from .retry import RetryPolicy
from .schedule import Schedule

RouteName = Literal["inline", "celery"]
ROUTES: tuple[RouteName, ...] = ("inline", "celery")
PriorityName = Literal["low", "normal", "high"]
OutageMode = Literal["spool", "inline", "raise"]
OUTAGE_MODES: tuple[OutageMode, ...] = ("spool", "inline", "raise")
PRIORITY_NAMES: dict[str, int] = {"low": 2, "normal": 5, "high": 8}
NO_RETRY = RetryPolicy.never()


def parse_priority(value: object) -> int:
    """Map ``"low" | "normal" | "high"`` or an int 0-9 (9 most urgent) to an int.

    Raises ``ValueError`` with the accepted values for anything else.
    """
    if isinstance(value, str) and value in PRIORITY_NAMES:
        return PRIORITY_NAMES[value]
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= 9:
        return value
    raise ValueError(f"priority must be 'low', 'normal', 'high' or an int 0-9, got {value!r}")


def parse_route(value: object) -> RouteName:
    if value == "inline":
        return "inline"
    if value == "celery":
        return "celery"
    raise ValueError(f"route must be 'inline' or 'celery', got {value!r}")


@dataclass(frozen=True, slots=True)
class TaskSpec:
    """The declaration of one task, fixed at decoration time."""

    name: str
    fn: Callable[..., Any]
    weight: int = 1
    priority: int = PRIORITY_NAMES["normal"]
    queue: str | None = None
    route: RouteName | None = None
    retry: RetryPolicy = NO_RETRY
    timeout: float | None = None
    is_async: bool = False
    broker_outage: OutageMode | None = None
    #: ``weight="auto"``: routed by measured run time (``dispatcher.store.adaptive``);
    #: ``weight`` is then 1 for rule matching.
    adaptive: bool = False
    #: ``@task(schedule=...)``: dispatched by itself on a cron expression or interval.
    schedule: Schedule | None = None


@dataclass(frozen=True, slots=True)
class CallOptions:
    """Per-call overrides set with ``task.options(...)``; ``None`` means "not set"."""

    route: RouteName | None = None
    priority: int | None = None
    queue: str | None = None
    countdown: float | None = None
    #: When to run, as ``time.time()`` seconds (from ``eta=datetime``); excludes countdown.
    eta: float | None = None
    idempotency_key: str | None = None
