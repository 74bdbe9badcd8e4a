"""The composition root: one ``Runtime`` per process builds, holds and resets every
process-wide object, and wires the ports. Objects are built on first use from the
runtime's settings: the records Redis client, the record / dead-letter / idempotency
stores, the execution core's ports, both routes (each told of the other only as a
``Route``), the broker monitor (inside the Celery route), the adaptive router, the
server-load meter and the metrics gauges. ``dispatcher.configure()`` and
``dispatcher.testing.reset()`` replace the runtime. Process-scoped by nature (see
docs/architecture.md): the task registry, prometheus-client's registry, the event
listener and the at-fork hooks.
"""

from __future__ import annotations

import threading

import redis
from celery import Celery

from ..core import events
from ..core.cancellation import LocalCancellations
from ..core.execution import Execution
from ..core.limits import LocalLimits
from ..core.ports import DeadLetterStore, IdempotencyStore, RecordStore
from ..core.settings import DispatcherSettings, build_settings, get_settings, replace_settings
from ..observability.gauges import COLLECTOR, GaugeReadings
from ..observability.logging import log_until_configured
from ..observability.metrics import EventMetrics
from ..ops.dashboard_data import Dashboard, Sources
from ..ops.routes_table import route_table
from ..policy.governor import ServerLoad
from ..routes.celery.depths import QueueDepths
from ..routes.celery.route import CeleryRoute
from ..routes.inline.executor import InlineExecutor
from ..routes.inline.route import InlineRoute
from ..store import keys
from ..store.adaptive import AdaptiveRouter
from ..store.cancellations import RedisCancellations
from ..store.client import client_for
from ..store.deadletter import RedisDeadLetters
from ..store.idempotency import MemoryIdempotency, RedisIdempotency
from ..store.inline_reports import InlineReports
from ..store.limits import RedisLimits
from ..store.memory import MemoryDeadLetters, MemoryRecordStore
from ..store.records import RedisRecordStore
from .inline_fleet import REPORT_EVERY, REPORT_LIFETIME, InlineFleet
from .readings import read_gauges
from .wiring import CeleryPort, RecordsHealth


class Runtime:
    """Every process-wide object of one process, for one set of settings."""

    def __init__(self, settings: DispatcherSettings) -> None:
        self.settings = settings
        keys.use_namespace(settings.namespace)  # before anything names a key
        self.load = ServerLoad()
        self.metrics = EventMetrics()
        self.health = RecordsHealth(settings, lambda: self._celery)
        self.queue_depths = QueueDepths(settings)
        self.dashboard = Dashboard()
        self._lock = threading.RLock()
        self._redis: redis.Redis | None = None
        self._records: RecordStore | None = None
        self._dead: DeadLetterStore | None = None
        self._idempotency: IdempotencyStore | None = None
        self._execution: Execution | None = None
        self._inline: InlineRoute | None = None
        self._celery: CeleryRoute | None = None
        self._celery_app: Celery | None = None
        self._adaptive: AdaptiveRouter | None = None
        self._fleet: InlineFleet | None = None

    # -- stores ---------------------------------------------------------------------
    @property
    def redis(self) -> redis.Redis | None:
        """A client for the records Redis (result backend, else broker); None without."""
        with self._lock:
            url = self.settings.results_url
            if self._redis is None and url is not None:
                self._redis = client_for(self.settings, url)
            return self._redis

    @property
    def records(self) -> RecordStore:
        store = self._records
        if store is not None:  # asked on every dispatch: no lock once built
            return store
        with self._lock:
            if self._records is None:
                client = self.redis
                self._records = (
                    MemoryRecordStore() if client is None
                    else RedisRecordStore(client, self.settings.result_ttl,
                                          on_error=self.health.failed, busy=self.load.busy))
                self._apply_poll()
            return self._records

    @property
    def dead_letters(self) -> DeadLetterStore:
        with self._lock:
            if self._dead is None:
                client = self.redis
                self._dead = MemoryDeadLetters() if client is None else RedisDeadLetters(client)
            return self._dead

    @property
    def idempotency(self) -> IdempotencyStore:
        with self._lock:
            if self._idempotency is None:
                client, ttl = self.redis, self.settings.idempotency_ttl
                self._idempotency = (MemoryIdempotency(ttl) if client is None
                                     else RedisIdempotency(client, ttl, self.health))
            return self._idempotency

    def _apply_poll(self) -> None:
        if _records_poll is not None and isinstance(self._records, RedisRecordStore):
            self._records.poll_every(_records_poll)

    # -- execution and routes ------------------------------------------------------------
    @property
    def execution(self) -> Execution:
        execution = self._execution
        if execution is not None:
            return execution
        with self._lock:
            if self._execution is None:
                observe = (self.adaptive.observe_spec if self.settings.broker_url is not None
                           else None)
                # On the broker: where the workers and the delay store's relay read them.
                url = self.settings.broker_url or self.settings.results_url
                client = None if url is None else client_for(self.settings, url)
                marks = (LocalCancellations() if client is None
                         else RedisCancellations(client, self.settings.result_ttl))
                limits = (LocalLimits() if client is None
                          else RedisLimits(client, self.settings.concurrency_lease))
                self._execution = Execution(self.records, self.dead_letters, self.health,
                                            observe, marks, limits)
            return self._execution

    @property
    def inline(self) -> InlineRoute:
        route = self._inline
        if route is not None:
            return route
        with self._lock:
            if self._inline is None:
                self._inline = InlineRoute(self.settings, self.execution, busy=self.load.busy,
                                           fallback=CeleryPort(lambda: self.celery))
            return self._inline

    @property
    def celery(self) -> CeleryRoute:
        route = self._celery
        if route is not None:
            return route
        with self._lock:
            if self._celery is None:
                self._celery = CeleryRoute(self.settings, self.execution, self._celery_app,
                                           fallback=self.inline, busy=self.load.busy)
            return self._celery

    def built_celery(self) -> CeleryRoute | None:  # for shutdown paths: builds nothing
        return self._celery

    def use_celery_app(self, app: Celery) -> CeleryRoute:
        """The worker's app is the route's app too (one connection pool, one config)."""
        with self._lock:
            self._celery_app = app
            self._celery = None
            return self.celery

    @property
    def adaptive(self) -> AdaptiveRouter:
        router = self._adaptive
        if router is not None:  # asked on each dispatch of a weight="auto" task
            return router
        with self._lock:
            if self._adaptive is None:
                client = self.redis if self.settings.broker_url is not None else None
                self._adaptive = AdaptiveRouter(self.settings, client, self.health, self.metrics)
            return self._adaptive

    # -- observability -------------------------------------------------------------------
    def gauges(self) -> GaugeReadings:
        """What ``/metrics`` shows of this process (built objects only, no waiting)."""
        return read_gauges(self, self._celery)

    @property
    def inline_fleet(self) -> InlineFleet:
        """This process's inline executor reported, and everyone's (API processes)."""
        with self._lock:
            if self._fleet is None:
                client, lifetime = self.redis, REPORT_EVERY * REPORT_LIFETIME
                reports = None if client is None else InlineReports(client, lifetime)
                self._fleet = InlineFleet(self.inline_load, lambda: self.metrics.spilled,
                                          self.settings.inline_concurrency, reports)
            return self._fleet

    def inline_executor(self) -> InlineExecutor | None:
        """This process's inline executor, if one was started (starts none)."""
        return None if self._inline is None else self._inline.current_executor()

    def inline_load(self) -> tuple[int, int]:
        """(running, outstanding) inline jobs of this process; no executor is started."""
        executor = self.inline_executor()
        return (0, 0) if executor is None else (executor.running(), executor.outstanding())

    def route_table(self) -> list[dict[str, object]]:
        adaptive = self.adaptive if self.settings.broker_url is not None else None
        return route_table(self.settings, adaptive)

    def dashboard_sources(self) -> Sources:
        return Sources(self.settings, self.records, self.dead_letters, self.inline_load,
                       lambda: self.celery.status().get("spool_depth"),
                       self.queue_depths.now, self.route_table,
                       lambda: self.inline_fleet.summary())

    def close(self) -> None:
        """Stop what this runtime started (inline executor, spill-over, adaptive thread)."""
        with self._lock:
            inline, self._inline = self._inline, None
            adaptive, self._adaptive = self._adaptive, None
            fleet, self._fleet = self._fleet, None
        if fleet is not None:
            fleet.stop()
        if inline is not None:
            inline.close()
        if self._celery is not None:
            self._celery.close()
        if adaptive is not None:
            adaptive.close()


_lock = threading.Lock()
_current: Runtime | None = None
#: Set in worker processes (``poll_records``); every runtime of the process follows it.
_records_poll: float | None = None


def poll_records(interval: float) -> None:
    """Make this process's records writer poll every ``interval`` seconds instead of
    waking on each save (Celery pool processes flush each job's records before its ack
    anyway; waking a thread per job costs a GIL hand-off). Survives ``reset()``."""
    global _records_poll
    _records_poll = interval
    runtime = _current
    if runtime is not None:
        with runtime._lock:
            runtime._apply_poll()


def current() -> Runtime:
    """This process's runtime for the current settings, made on first use."""
    runtime = _current
    if runtime is not None:
        return runtime
    return _make()


def _make() -> Runtime:
    global _current
    with _lock:
        if _current is None:
            settings = get_settings()
            log_until_configured(settings)
            _current = Runtime(settings)
            events.set_listeners(_current.metrics.observe_event)
        return _current


#: ``/metrics`` reads the gauges of whichever runtime is current when scraped (one
#: made for it builds nothing and starts nothing: see ``Runtime.gauges``).
COLLECTOR.source = lambda: current().gauges()


def built() -> Runtime | None:
    """The runtime if one was made (shutdown paths must not make one)."""
    return _current


def reset() -> None:
    """Forget every process-wide object; the next use rebuilds it from the settings."""
    global _current
    with _lock:
        runtime, _current = _current, None
    if runtime is not None:
        runtime.close()


def configure(settings: DispatcherSettings | None = None, **overrides: object
              ) -> DispatcherSettings:
    """Replace the process-wide settings (tests, embedding) and reset everything built
    from the old ones. ``ConfigurationError`` names a bad value's variable."""
    new = build_settings(settings, **overrides)
    replace_settings(new)
    reset()
    keys.use_namespace(new.namespace)
    return new
