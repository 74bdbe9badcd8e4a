"""What a task declares (``TaskSpec``) and what one call overrides (``CallOptions``)."""

from __future__ import annotations

import re
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


_RATE = re.compile(r"^\s*(\d+)\s*/\s*(s|m|h)\s*$")
_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0}
#: Above it a sliding log costs more memory than a limit is worth.
MAX_RATE_COUNT = 100_000

@dataclass(frozen=True, slots=True)
class RateLimit:
    """At most ``count`` starts in any ``per`` seconds."""

    count: int
    per: float
    text: str

    def __str__(self) -> str:
        return self.text


def parse_rate_limit(value: object) -> RateLimit:
    """``"100/m"`` (``/s``, ``/m``, ``/h``) as a ``RateLimit``; ``ValueError`` otherwise."""
    match = _RATE.match(value) if isinstance(value, str) else None
    if match is None:
        raise ValueError(f"rate_limit must look like '100/m' (per s, m or h), got {value!r}")
    count = int(match.group(1))
    if not 1 <= count <= MAX_RATE_COUNT:
        raise ValueError(f"rate_limit must allow 1-{MAX_RATE_COUNT:,} starts, got {count}")
    return RateLimit(count, _UNITS[match.group(2)], f"{count}/{match.group(2)}")


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
    #: ``@task(rate_limit="100/m")``: starts allowed per window, fleet-wide.
    rate_limit: RateLimit | None = None
    #: ``@task(concurrency=N)``: jobs running at once, fleet-wide (per value of the
    #: ``concurrency_key`` argument when set).
    concurrency: int | None = None
    concurrency_key: str | None = None


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
