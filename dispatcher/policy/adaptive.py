"""The adaptive rule for ``@task(weight="auto")``: where a task should run, from its
measured run times. Pure: the Redis side (sharing run times and the route between
processes) is ``dispatcher.store.adaptive``.

Hysteresis: an inline task moves to Celery once its p95 exceeds
``DISPATCH_INLINE_MAX_SECONDS``, a task on Celery moves back once its p95 is below half
of that, and nothing moves before ``MIN_SAMPLES`` run times.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ..core.settings import DispatcherSettings
from ..core.spec import RouteName

#: Run times needed in the window before a task may move either way.
MIN_SAMPLES = 5


def p95(values: Sequence[float]) -> float | None:
    """The 95th percentile, interpolating between the two nearest ranks; None if empty."""
    if not values:
        return None
    ordered = sorted(values)
    rank = (len(ordered) - 1) * 0.95
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def next_route(
    current: RouteName, values: Sequence[float], max_seconds: float
) -> tuple[RouteName, str] | None:
    """The route an auto task should move to, with the reason, or None to stay.

    Hysteresis: to Celery above ``max_seconds``, back inline only below half of it, so
    a p95 hovering around the threshold does not flap; no move before ``MIN_SAMPLES``.
    """
    if len(values) < MIN_SAMPLES:
        return None
    value = p95(values)
    assert value is not None
    if current == "inline" and value > max_seconds:
        return "celery", f"p95 {value:.3g}s > {max_seconds:g}s"
    back = max_seconds / 2
    if current == "celery" and value < back:
        return "inline", f"p95 {value:.3g}s < {back:g}s"
    return None


@dataclass(frozen=True, slots=True)
class AdaptiveState:
    """One auto task as this process last saw it."""

    route: RouteName = "inline"
    reason: str = "starts inline"
    since: float | None = None
    p95: float | None = None
    samples: int = 0

    def describe(self, settings: DispatcherSettings) -> dict[str, Any]:
        """The ``adaptive`` column of ``python -m dispatcher routes`` and ``GET /routes``."""
        return {
            "route": self.route,
            "reason": self.reason,
            "since": self.since,
            "p95_seconds": None if self.p95 is None else round(self.p95, 4),
            "samples": self.samples,
            "window": settings.adaptive_window,
            "max_seconds": settings.inline_max_seconds,
        }
