"""The worker's Prometheus endpoint: ``/metrics`` from the main process, summing the
files its prefork pool processes write (prometheus-client's multiprocess mode)."""

from __future__ import annotations

import logging
import os
from typing import TYPE_CHECKING, Any

from prometheus_client import multiprocess
from prometheus_client import values as _values
from prometheus_client.exposition import start_http_server

from ...core.settings import DispatcherSettings
from ...observability.metrics import MULTIPROC_ENV, multiprocess_mode, scrape_registry

if TYPE_CHECKING:
    from wsgiref.simple_server import WSGIServer

log = logging.getLogger("dispatcher.metrics")

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
