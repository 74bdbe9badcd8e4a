"""Prometheus metrics for both routes, by ``prometheus-client``.

Counters and histograms are fed by the log events (``observe_event`` listens to
``core.events``), so every job is counted where it runs, inline in the API process or
in a worker's pool process. Gauges are read when scraped (``gauges``).

Under several processes (Celery's prefork pool, uvicorn ``--workers``) prometheus-client
runs in its multiprocess mode: ``PROMETHEUS_MULTIPROC_DIR`` must be set before it is
first imported, each process writes its own files there, and a scrape adds them up.
``dispatcher worker`` and ``worker.app`` set it for the worker.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Histogram, multiprocess
from prometheus_client import values as _values
from prometheus_client.exposition import choose_encoder

from ..core.job import Job
from .gauges import COLLECTOR

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
JOBS_CANCELLED = Counter(
    "dispatch_cancelled", "Jobs that ended REVOKED (cancelled before or while running).",
    LABELS)
RATE_LIMITED = Counter(
    "dispatch_rate_limited",
    "Starts a rate limit refused: the job waited (counted once per refusal).", LABELS)
CONCURRENCY_LIMITED = Counter(
    "dispatch_concurrency_limited",
    "Starts a concurrency limit refused: the job waited (counted once per refusal).", LABELS)
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

    __slots__ = ("cancelled", "concurrency_limited", "dispatched", "duration", "failed",
                 "queue_wait", "rate_limited", "retried", "succeeded")

    def __init__(self, task: str, route: str) -> None:
        self.dispatched = JOBS_DISPATCHED.labels(task, route)
        self.succeeded = JOBS_SUCCEEDED.labels(task, route)
        self.failed = JOBS_FAILED.labels(task, route)
        self.retried = JOBS_RETRIED.labels(task, route)
        self.cancelled = JOBS_CANCELLED.labels(task, route)
        self.rate_limited = RATE_LIMITED.labels(task, route)
        self.concurrency_limited = CONCURRENCY_LIMITED.labels(task, route)
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
            elif event == "task.cancelled":
                series.cancelled.inc()
            elif event == "task.limited":
                limited = fields.get("reason") == "rate_limit"
                (series.rate_limited if limited else series.concurrency_limited).inc()
                return
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
