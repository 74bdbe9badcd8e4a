"""Gauges read when ``/metrics`` is scraped (``ScrapeCollector``): the inline
executor's load, the outage spool, Celery queue depths, backlogs and delayed jobs, and
the fleet view of the inline executors. A scrape never builds a service, starts a
thread or waits long on Redis: ``source`` reads what the process already holds."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from prometheus_client import REGISTRY
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

log = logging.getLogger("dispatcher.metrics")


@dataclass(frozen=True, slots=True)
class GaugeReadings:
    """What a scrape shows of this process right now (read by ``dispatcher.runtime``
    from what the process already has: no service is built, no thread started)."""

    inline_running: int = 0
    inline_waiting: int = 0
    spool_depth: int | None = None
    #: None without a broker; else per queue (None: could not be read now).
    queue_depths: dict[str, int] | None = None
    broker_configured: bool = False
    #: Per queue, every job not finished with: waiting, delivered and not
    #: acknowledged (None: not read).
    backlog: dict[str, int] | None = None
    #: Every API process's inline executor (``process``, ``running``, ``waiting``,
    #: ``spilled``, ...); None: this process does not take part in the fleet view.
    inline_fleet: list[Any] | None = None
    #: Jobs in the delay store, not yet due (None: not read).
    delayed_jobs: int | None = None


#: The states of ``dispatch_inline_fleet``.
FLEET_STATES = ("running", "waiting", "spilled")


def _nothing() -> GaugeReadings:
    return GaugeReadings()


class ScrapeCollector(Collector):
    """Gauges computed when scraped, from ``source`` (set by ``dispatcher.runtime``):
    the inline executor's load, the outage spool, Celery queue lengths and backlogs."""

    def __init__(self) -> None:
        self.source: Callable[[], GaugeReadings] = _nothing

    def describe(self) -> Iterable[Metric]:
        return self._families()

    def _families(self) -> list[GaugeMetricFamily]:
        return [
            GaugeMetricFamily("dispatch_inline_busy", "Inline jobs running in this process."),
            GaugeMetricFamily(
                "dispatch_inline_waiting",
                "Inline jobs accepted in this process and not running (queued or waiting "
                "to retry).",
            ),
            GaugeMetricFamily(
                "dispatch_spool_depth", "Jobs in this process's broker-outage spool."
            ),
            GaugeMetricFamily(
                "dispatch_queue_depth", "Messages waiting in a Celery queue.", labels=["queue"]
            ),
            GaugeMetricFamily(
                "dispatch_broker_up",
                "1 if the queue depths could be read from the broker at this scrape.",
            ),
            GaugeMetricFamily(
                "dispatch_backlog",
                "Jobs of a Celery queue not finished with: waiting at any priority, "
                "or delivered to a worker and not acknowledged (the signal to "
                "scale workers on).",
                labels=["queue"],
            ),
            GaugeMetricFamily(
                "dispatch_delayed_jobs",
                "Jobs in the dispatcher's delay store (countdowns, etas, retry delays) "
                "not yet due, every queue.",
            ),
            GaugeMetricFamily(
                "dispatch_inline_fleet",
                "Each API process's inline executor as it last reported it to Redis: jobs "
                "running, waiting, and spilled over to Celery since the process started.",
                labels=["process", "state"],
            ),
            GaugeMetricFamily(
                "dispatch_inline_fleet_sum",
                "dispatch_inline_fleet added up over every API process (whichever process "
                "answers the scrape).",
                labels=["state"],
            ),
        ]

    def collect(self) -> Iterable[Metric]:
        busy, waiting, spool, depth, up, backlog, delayed, fleet, fleet_sum = self._families()
        try:
            readings = self.source()
        except Exception as exc:  # a scrape never fails on our account
            log.debug("gauges not read: %s", exc)
            readings = GaugeReadings()
        busy.add_metric([], readings.inline_running)
        waiting.add_metric([], readings.inline_waiting)
        yield busy
        yield waiting
        if readings.inline_fleet is not None:
            for state in FLEET_STATES:
                for report in readings.inline_fleet:
                    fleet.add_metric([report["process"], state], report[state])
                fleet_sum.add_metric([state], sum(r[state] for r in readings.inline_fleet))
            yield fleet
            yield fleet_sum
        if readings.spool_depth is not None:
            spool.add_metric([], readings.spool_depth)
            yield spool
        if not readings.broker_configured:
            return
        depths = readings.queue_depths
        up.add_metric([], 0 if depths is None else 1)
        yield up
        if depths is not None:
            for queue, count in depths.items():
                depth.add_metric([queue], count)
            yield depth
        if depths is not None and readings.backlog is not None:
            for queue, count in readings.backlog.items():
                backlog.add_metric([queue], count)
            yield backlog
        if depths is not None and readings.delayed_jobs is not None:
            delayed.add_metric([], readings.delayed_jobs)
            yield delayed


COLLECTOR = ScrapeCollector()
REGISTRY.register(COLLECTOR)
