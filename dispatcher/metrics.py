"""Prometheus metrics for both routes, by ``prometheus-client``.

Counters and histograms are fed by ``events.emit`` (``observe_event``), so every job is
counted where it runs, inline in the API process or in a worker's pool process. Gauges
(inline executor load, spool depth, Celery queue depths) are read when scraped, by
``ScrapeCollector``; a scrape never builds a service, starts a thread or waits long on
Redis.

Under several processes (Celery's prefork pool, uvicorn ``--workers``) prometheus-client
runs in its multiprocess mode: ``PROMETHEUS_MULTIPROC_DIR`` must be set before it is
first imported, each process writes its own files there, and a scrape adds them up.
``python -m worker`` and ``worker.app`` set it for the worker.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Histogram, multiprocess
from prometheus_client import values as _values
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.exposition import choose_encoder, start_http_server
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from wsgiref.simple_server import WSGIServer

    import redis
    from fastapi import APIRouter

    from .job import Job
    from .settings import DispatcherSettings

    #: ``GET /metrics`` for a FastAPI app (built on first use: importing this module
    #: from a worker does not import FastAPI).
    router: APIRouter

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


_series: dict[tuple[str, str], _Series] = {}
_decisions: dict[tuple[str, str, str], Any] = {}
_failures_logged = False


def _observe_failed(error: Exception) -> None:
    global _failures_logged
    if not _failures_logged:  # once: a broken metric must not flood the job logs
        _failures_logged = True
        log.warning("metrics not recorded: %s: %s", type(error).__name__, error)


def observe_event(
    event: str, job: Job, duration_ms: float | None, fields: Mapping[str, Any]
) -> None:
    """Count one ``events.emit`` event; called for every event, whatever the log level.

    Never raises: metrics must not break a job.
    """
    try:
        key = (job.spec.name, job.route)
        series = _series.get(key)
        if series is None:
            series = _series[key] = _Series(*key)
        if event == "task.dispatched":  # the most frequent event: asked first
            if job.attempt == 1:  # a Celery retry is published again; it counts as retried
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
        _observe_failed(exc)


def count_route_decision(task_name: str, route: str, reason: str) -> None:
    """Count a route chosen by policy at dispatch time. ``reason`` must be one of a few
    short words (``"adaptive"``, ``"spill_over"``): every value is a time series."""
    try:
        key = (task_name, route, reason)
        child = _decisions.get(key)
        if child is None:
            child = _decisions[key] = ROUTE_DECISIONS.labels(*key)
        child.inc()
    except Exception as exc:
        _observe_failed(exc)


# -- gauges read at scrape time ------------------------------------------------------

QUEUE_DEPTH_TIMEOUT = 0.5
QUEUE_DEPTH_BACKOFF = 5.0


class ScrapeCollector(Collector):
    """Gauges computed when scraped, from what this process already has: the inline
    executor, the Celery route's broker monitor and spool, and Celery queue lengths
    (one pipelined round trip with a short timeout, skipped for a while after a failure
    and while the monitor knows the broker is down)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._client: redis.Redis | None = None
        self._client_url: str | None = None
        self._down_until = 0.0

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
        ]

    def collect(self) -> Iterable[Metric]:
        busy, waiting, spool, depth, up = self._families()
        from . import runtime

        executor = runtime.current_inline_executor()
        running = executor.running() if executor is not None else 0
        outstanding = executor.outstanding() if executor is not None else 0
        busy.add_metric([], running)
        waiting.add_metric([], max(0, outstanding - running))
        yield busy
        yield waiting

        route = runtime._celery
        monitor = route.current_monitor() if route is not None else None
        if monitor is not None:
            try:
                spool.add_metric([], monitor.spool.depth())
                yield spool
            except Exception as exc:
                log.debug("spool depth not read: %s", exc)

        from .settings import get_settings

        settings = get_settings()
        if settings.broker_url is None:
            return
        broker_known_down = monitor is not None and not monitor.healthy
        depths = None if broker_known_down else self._queue_depths(settings)
        up.add_metric([], 0 if depths is None else 1)
        yield up
        if depths is not None:
            for queue, count in depths.items():
                depth.add_metric([queue], count)
            yield depth

    def _queue_depths(self, settings: DispatcherSettings) -> dict[str, int] | None:
        if time.monotonic() < self._down_until:
            return None
        from .celery_worker import worker_queues
        from .wire import queue_depths, redis_client

        url = settings.broker_url
        assert url is not None
        with self._lock:
            if self._client is None or self._client_url != url:
                timeout = min(QUEUE_DEPTH_TIMEOUT, settings.publish_timeout)
                self._client, self._client_url = redis_client(url, timeout), url
            client = self._client
        try:
            return queue_depths(client, worker_queues(settings))
        except Exception as exc:
            self._down_until = time.monotonic() + QUEUE_DEPTH_BACKOFF
            log.debug("queue depths not read: %s", exc)
            return None


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


def _make_router() -> APIRouter:
    from fastapi import APIRouter, Header, Response

    api = APIRouter()

    # Annotations name only builtins and module globals: FastAPI resolves them here.
    @api.get("/metrics", include_in_schema=False, response_model=None)
    def metrics(accept: str | None = Header(default=None)) -> Any:
        """Prometheus metrics of this API (all its processes in multiprocess mode)."""
        body, content_type = exposition(accept)
        return Response(content=body, media_type=content_type)

    return api


_router: APIRouter | None = None


def __getattr__(name: str) -> Any:
    global _router
    if name == "router":
        if _router is None:
            _router = _make_router()
        return _router
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


# -- the worker's endpoint ---------------------------------------------------------

_server: WSGIServer | None = None


def start_worker_server(settings: DispatcherSettings) -> WSGIServer | None:
    """Serve ``/metrics`` from the worker's main process on ``DISPATCH_METRICS_HOST:
    DISPATCH_METRICS_PORT``; a port in use is logged and the worker runs on without."""
    global _server
    if settings.metrics_port == 0 or _server is not None:
        return _server
    if not multiprocess_mode():
        log.warning(
            "prometheus-client was imported before %s was set: the worker's /metrics "
            "shows only its main process, not the jobs run by a prefork pool",
            MULTIPROC_ENV,
        )
    host, port = settings.metrics_host, settings.metrics_port
    try:
        server, _ = start_http_server(port, host, registry=scrape_registry())
    except OSError as exc:
        log.error(
            "worker metrics endpoint not started: cannot listen on %s:%d (%s); the worker "
            "runs on without it (set DISPATCH_METRICS_PORT to a free port, or 0 for none)",
            host, port, exc,
        )
        return None
    _server = server
    log.info("worker metrics on http://%s:%d/metrics", host, port)
    return server


def use_multiprocess_files(**_: Any) -> None:
    """Switch to multiprocess mode if ``PROMETHEUS_MULTIPROC_DIR`` came after
    prometheus-client was imported (the ``celery`` command imports it for Flower's
    command plugin). Run before the pool forks: our values are all labelled, made on
    first use, so every one the pool processes make then lives in the directory."""
    if os.environ.get(MULTIPROC_ENV) and not multiprocess_mode():
        _values.ValueClass = _values.get_value_class()  # type: ignore[no-untyped-call]


def _pool_process_started(**_: Any) -> None:
    """A forked pool process must not keep the parent's listening socket open."""
    if _server is not None:
        _server.socket.close()


def _pool_process_ended(pid: int | None = None, **_: Any) -> None:
    if multiprocess_mode():
        pid = pid if pid is not None else os.getpid()
        multiprocess.mark_process_dead(pid)  # type: ignore[no-untyped-call]


def install_worker_metrics(settings: DispatcherSettings) -> None:
    """Start the endpoint once the worker is ready (the pool has forked) and keep the
    multiprocess files right as pool processes come and go."""
    from celery.signals import (
        worker_init,
        worker_process_init,
        worker_process_shutdown,
        worker_ready,
    )

    if settings.metrics_port == 0:
        return
    worker_init.connect(use_multiprocess_files, weak=False, dispatch_uid="dispatch-metrics-mp")
    worker_ready.connect(
        lambda **_: start_worker_server(settings), weak=False, dispatch_uid="dispatch-metrics"
    )
    worker_process_init.connect(
        _pool_process_started, weak=False, dispatch_uid="dispatch-metrics-init"
    )
    worker_process_shutdown.connect(
        _pool_process_ended, weak=False, dispatch_uid="dispatch-metrics-dead"
    )
