"""Prometheus metrics for both routes, by ``prometheus-client``.

Counters and histograms are fed by the log events (``observe_event`` listens to
``core.events``), so every job is counted where it runs, inline in the API process or
in a worker's pool process. Gauges (inline executor load, spool depth, Celery queue
depths and backlogs) are read when scraped, by ``ScrapeCollector``; a scrape never builds a service,
starts a thread or waits long on Redis.

Under several processes (Celery's prefork pool, uvicorn ``--workers``) prometheus-client
runs in its multiprocess mode: ``PROMETHEUS_MULTIPROC_DIR`` must be set before it is
first imported, each process writes its own files there, and a scrape adds them up.
``dispatcher worker`` and ``worker.app`` set it for the worker.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Histogram, multiprocess
from prometheus_client import values as _values
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.exposition import choose_encoder
from prometheus_client.registry import Collector

from ..core.job import Job

log = logging.getLogger("dispatcher.metrics")

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
LABELS = ("task", "route")

#: Seconds; jobs run from milliseconds (notifications) to minutes (reports).
DURATION_BUCKETS = (
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0,
    600.0,
)

JOBS_DISPATCHED = Counter(
    "dispatch_jobs_dispatched", "Jobs accepted by dispatch() (first attempts).", LABELS
)
JOBS_SUCCEEDED = Counter("dispatch_jobs_succeeded", "Jobs that ended in SUCCESS.", LABELS)
JOBS_FAILED = Counter("dispatch_jobs_failed", "Jobs that ended in FAILURE.", LABELS)
JOBS_RETRIED = Counter(
    "dispatch_jobs_retried", "Failed attempts the retry policy scheduled again.", LABELS
)
JOB_DURATION = Histogram(
    "dispatch_job_duration_seconds",
    "Run time of each attempt (succeeded, failed or retried).",
    LABELS,
    buckets=DURATION_BUCKETS,
)
QUEUE_WAIT = Histogram(
    "dispatch_job_queue_wait_seconds",
    "Time from dispatch (or a retry's due time) to the start of the attempt.",
    LABELS,
    buckets=DURATION_BUCKETS,
)
ROUTE_DECISIONS = Counter(
    "dispatch_route_decisions",
    "Routes chosen by policy at dispatch time (adaptive routing, spill-over), by reason.",
    ("task", "route", "reason"),
)


class _Series:
    """The labelled children of one (task, route), made once and reused per event."""

    __slots__ = ("dispatched", "duration", "failed", "queue_wait", "retried", "succeeded")

    def __init__(self, task: str, route: str) -> None:
        self.dispatched = JOBS_DISPATCHED.labels(task, route)
        self.succeeded = JOBS_SUCCEEDED.labels(task, route)
        self.failed = JOBS_FAILED.labels(task, route)
        self.retried = JOBS_RETRIED.labels(task, route)
        self.duration = JOB_DURATION.labels(task, route)
        self.queue_wait = QUEUE_WAIT.labels(task, route)


class EventMetrics:
    """Counts the events of one process (``dispatcher.runtime`` owns it and makes it a
    listener of ``core.events``): the labelled children it has made, and whether a
    failure was logged already. The counters themselves live in prometheus-client's
    registry, as prometheus-client requires."""

    def __init__(self) -> None:
        self._series: dict[tuple[str, str], _Series] = {}
        self._decisions: dict[tuple[str, str, str], Any] = {}
        self._failures_logged = False
        #: Jobs this process spilled over from its inline executor to Celery.
        self.spilled = 0

    def _observe_failed(self, error: Exception) -> None:
        if not self._failures_logged:  # once: a broken metric must not flood the job logs
            self._failures_logged = True
            log.warning("metrics not recorded: %s: %s", type(error).__name__, error)

    def observe_event(
        self, event: str, job: Job, duration_ms: float | None, fields: Mapping[str, Any]
    ) -> None:
        """Count one ``events.emit`` event; called for every event, whatever the log
        level. Never raises: metrics must not break a job."""
        try:
            key = (job.spec.name, job.route)
            series = self._series.get(key)
            if series is None:
                series = self._series[key] = _Series(*key)
            if event == "task.dispatched":  # the most frequent event: asked first
                if job.attempt == 1:  # a Celery retry is published again: counted as retried
                    series.dispatched.inc()
                return
            if event == "task.started":
                wait = fields.get("queue_wait_ms")
                if wait is not None:
                    series.queue_wait.observe(max(0.0, wait / 1000))
                return
            if event == "task.succeeded":
                series.succeeded.inc()
            elif event == "task.failed":
                series.failed.inc()
            elif event == "task.retrying":
                series.retried.inc()
            else:
                return
            if duration_ms is not None:  # None: failed without running (rejected, shutdown)
                series.duration.observe(duration_ms / 1000)
        except Exception as exc:
            self._observe_failed(exc)

    def count_route_decision(self, task_name: str, route: str, reason: str) -> None:
        """Count a route chosen by policy at dispatch time. ``reason`` must be one of a
        few short words (``"adaptive"``, ``"spill_over"``): every value is a time series."""
        if reason == "spill_over":
            self.spilled += 1
        try:
            key = (task_name, route, reason)
            child = self._decisions.get(key)
            if child is None:
                child = self._decisions[key] = ROUTE_DECISIONS.labels(*key)
            child.inc()
        except Exception as exc:
            self._observe_failed(exc)


# -- gauges read at scrape time ------------------------------------------------------


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


def multiprocess_mode() -> bool:
    """Whether this process's metrics live in ``PROMETHEUS_MULTIPROC_DIR`` files (decided
    when prometheus-client was first imported)."""
    return bool(getattr(_values.ValueClass, "_multiprocess", False))


def scrape_registry() -> CollectorRegistry:
    """What a scrape exposes: every process's files in multiprocess mode, plus this
    process's gauges; otherwise the default registry."""
    if not multiprocess_mode():
        return REGISTRY
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
    registry.register(COLLECTOR)
    return registry


def exposition(accept: str | None = None) -> tuple[bytes, str]:
    """The scrape body and its content type, negotiated from an Accept header."""
    encoder, content_type = choose_encoder(accept or "")
    return encoder(scrape_registry()), content_type
