"""What a scrape of ``/metrics`` reads of a runtime: only objects already built, and
nothing that waits (a broker known to be down is not asked)."""

from __future__ import annotations

import logging
from typing import Protocol

from ..core.settings import DispatcherSettings
from ..observability.gauges import GaugeReadings
from ..routes.celery.depths import QueueDepths
from ..routes.celery.route import CeleryRoute
from .inline_fleet import InlineFleet

log = logging.getLogger("dispatcher.metrics")


class Readable(Protocol):
    """What a scrape reads of the runtime (``container.Runtime``)."""

    settings: DispatcherSettings
    queue_depths: QueueDepths

    def inline_load(self) -> tuple[int, int]: ...

    @property
    def inline_fleet(self) -> InlineFleet: ...


def read_gauges(runtime: Readable, route: CeleryRoute | None) -> GaugeReadings:
    """``route``: the runtime's Celery route if it was built (None: nothing to read)."""
    running, outstanding = runtime.inline_load()
    monitor = route.current_monitor() if route is not None else None
    spool = None
    if monitor is not None:
        try:
            spool = monitor.spool.depth()
        except Exception as exc:
            log.debug("spool depth not read: %s", exc)
    configured = runtime.settings.broker_url is not None
    known_down = monitor is not None and not monitor.healthy
    load = None if not configured or known_down else runtime.queue_depths.read()
    fleet = runtime.inline_fleet
    return GaugeReadings(running, max(0, outstanding - running), spool,
                         load.depths if load else None, configured,
                         load.backlog if load else None,
                         fleet.summary()["processes"] if fleet.started else None,
                         load.delayed if load else None)
