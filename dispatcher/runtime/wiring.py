"""The runtime's wiring between objects that must not know each other: the records
store's health (decided by the broker monitor when both share one Redis) and the
Celery route as the inline route's ``Route``."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

from ..core.job import Job
from ..core.settings import DispatcherSettings
from ..core.spec import RouteName
from ..routes.celery.monitor import BrokerMonitor
from ..routes.celery.route import CeleryRoute

#: Seconds the records store is left alone after a failed call.
RECORDS_BACKOFF = 5.0


class RecordsHealth:
    """The ``Health`` of the records Redis. A failed call marks it down for a while;
    when it is the broker's Redis, the broker monitor's probe decides, so a hanging
    Redis costs one timeout, not one per dispatch."""

    def __init__(self, settings: DispatcherSettings,
                 built_route: Callable[[], CeleryRoute | None]) -> None:
        self._shared = settings.results_url == settings.broker_url
        self._built_route = built_route
        self._down_until = 0.0

    def _monitor(self) -> BrokerMonitor | None:
        route = self._built_route() if self._shared else None
        return None if route is None else route.current_monitor()

    def available(self) -> bool:
        monitor = self._monitor()
        if monitor is not None and not monitor.healthy:
            return False
        return time.monotonic() >= self._down_until

    def failed(self, error: BaseException) -> None:
        self._down_until = time.monotonic() + RECORDS_BACKOFF
        monitor = self._monitor()
        if monitor is not None:
            monitor.mark_down(error)


class CeleryPort:
    """The Celery route as the inline route sees it (a ``Route``), built when first
    needed: a process that never hands a job over never connects to a broker."""

    name: RouteName = "celery"

    def __init__(self, route: Callable[[], CeleryRoute]) -> None:
        self._route = route

    def accept(self, jobs: Sequence[Job], countdown: float | None, *,
               reason: str | None = None) -> list[RouteName]:
        return self._route().accept(jobs, countdown, reason=reason)
