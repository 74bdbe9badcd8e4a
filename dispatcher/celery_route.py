"""The Celery route: publishing jobs to Redis, and running them inside a Celery worker.

Messages are plain Celery protocol-2 task messages (JSON body, the job id as task
id), so a stock Celery worker and Flower understand them. Our extra facts (attempt,
request id) ride in one ``dispatch`` header. Priorities map onto kombu's Redis
priority lists, where 0 is served first: our 9 (most urgent) becomes Celery's 0.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from celery import Celery
from celery.exceptions import Retry, WorkerLostError
from celery.signals import worker_ready

from . import core, runtime
from .broker import BROKER_ERRORS, BrokerMonitor
from .errors import BrokerUnavailable, ConfigurationError, TaskValidationError
from .events import emit
from .job import Job
from .registry import all_tasks
from .settings import DispatcherSettings
from .spec import RouteName
from .spool import Spool, SpooledJob
from .status import make_record
from .wire import (
    HEADER,
    Publisher,
    Sweeper,
    mark_started,
    queue_key,
    redis_client,
    task_message,
    task_messages,
)

if TYPE_CHECKING:
    from .task import Task

log = logging.getLogger("dispatcher.worker")
PUBLISH_BATCH = 500


def create_celery_app(settings: DispatcherSettings, main: str = "dispatcher") -> Celery:
    """A Celery app configured from our settings: JSON only, at-least-once, priorities on."""
    app = Celery(main, set_as_current=False)
    transport_options = {
        "visibility_timeout": settings.visibility_timeout,
        # Sweep for jobs of dead workers often enough to honour the visibility timeout
        # (kombu's defaults only look every ~100 s).
        "unacked_restore_interval": max(1, min(10, settings.visibility_timeout // 10)),
        "unacked_restore_throttle": 1,
        "socket_timeout": settings.publish_timeout,
        "socket_connect_timeout": settings.publish_timeout,
    }
    app.conf.update(
        broker_url=settings.broker_url,
        result_backend=settings.results_url,
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],
        result_accept_content=["json"],
        event_serializer="json",
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        task_ignore_result=True,
        task_default_queue=settings.default_queue,
        task_publish_retry=False,
        broker_transport_options=transport_options,
        result_backend_transport_options={"visibility_timeout": settings.visibility_timeout},
        broker_connection_retry_on_startup=True,
        broker_connection_retry=True,
        broker_connection_max_retries=None,
        broker_connection_timeout=settings.publish_timeout,
        worker_cancel_long_running_tasks_on_connection_loss=True,
        worker_send_task_events=settings.worker_events,
        worker_consumer="dispatcher.consumer:DispatchConsumer",
        enable_utc=True,
    )
    return app


class CeleryRoute:
    """Publishes jobs (and retries, and hand-overs); applies the broker-outage policy."""

    def __init__(self, settings: DispatcherSettings, app: Celery | None = None) -> None:
        self.settings = settings
        self.app = app if app is not None else create_celery_app(settings)
        self._lock = threading.Lock()
        self._publisher: Publisher | None = None
        self._monitor: BrokerMonitor | None = None

    @property
    def monitor(self) -> BrokerMonitor:
        with self._lock:
            if self._monitor is None:
                url = self.settings.broker_url
                if url is None:
                    raise BrokerUnavailable(
                        "a task is routed to Celery but no broker is configured "
                        "(set DISPATCH_BROKER_URL)"
                    )
                client = redis_client(url, self.settings.publish_timeout)
                self._publisher = Publisher(
                    client, self.settings.result_ttl, self.settings.result_ttl
                )
                self._monitor = BrokerMonitor(self._publisher, Spool(self.settings.spool_path))
                if self._monitor.spool.depth():
                    self._monitor.start()  # left over from an earlier run: relay it
            return self._monitor

    def current_monitor(self) -> BrokerMonitor | None:
        """The monitor if one was built (no side effects)."""
        return self._monitor

    def ping(self) -> bool:
        """Whether the broker answered the monitor's last probe (no I/O here)."""
        if self.settings.broker_url is None:
            return False
        monitor = self.monitor
        monitor.start()
        return monitor.healthy

    def status(self) -> dict[str, Any]:
        if self.settings.broker_url is None:
            return {"reachable": False, "checked_at": None, "spool_depth": 0}
        monitor = self.monitor
        monitor.start()
        return monitor.status()

    def _prepared_all(
        self, jobs: Sequence[Job], countdown: float | None, fresh: bool
    ) -> list[tuple[str, str, str | None]]:
        first = jobs[0]
        uniform = len(jobs) > 1 and all(
            (j.spec, j.queue, j.priority, j.request_id, j.attempt, j.dispatched_at)
            == (first.spec, first.queue, first.priority, first.request_id, first.attempt,
                first.dispatched_at)
            for j in jobs
        )
        if not uniform:
            return [self._prepared(job, countdown, fresh) for job in jobs]
        messages = task_messages(jobs, countdown)
        shared_redis = self.settings.result_backend_url in (None, self.settings.broker_url)
        if not (fresh and shared_redis):
            return [
                self._prepared(job, countdown, fresh, message)
                for job, message in zip(jobs, messages, strict=True)
            ]
        # The PENDING records differ only in the id too: serialise one, substitute.
        token = f"<{os.urandom(8).hex()}>"
        template = json.dumps(make_record(dataclasses.replace(first, id=token), "PENDING"))
        key = queue_key(first.queue or self.settings.default_queue, first.priority)
        limit = self.settings.max_payload_bytes
        prepared: list[tuple[str, str, str | None]] = []
        for job, message in zip(jobs, messages, strict=True):
            if len(message) > limit:
                self._prepared(job, countdown, fresh, message)  # raises with the details
            prepared.append((key, message, template.replace(token, job.id)))
        return prepared

    def _prepared(
        self, job: Job, countdown: float | None, fresh: bool, message: str | None = None
    ) -> tuple[str, str, str | None]:
        if message is None:
            message = json.dumps(task_message(job, countdown))
        if len(message) > self.settings.max_payload_bytes:
            raise TaskValidationError(
                job.spec.name,
                [
                    {
                        "field": "(arguments)",
                        "message": f"message of {len(message)} bytes exceeds "
                        f"DISPATCH_MAX_PAYLOAD_BYTES={self.settings.max_payload_bytes}",
                    }
                ],
            )
        shared_redis = self.settings.result_backend_url in (None, self.settings.broker_url)
        record = json.dumps(make_record(job, "PENDING")) if fresh and shared_redis else None
        return queue_key(job.queue or self.settings.default_queue, job.priority), message, record

    def dispatch(
        self,
        job: Job,
        countdown: float | None,
        *,
        outage: str | None = None,
        fresh: bool = True,
    ) -> RouteName:
        """Record, publish and announce ``job``; returns the route it finally took.

        If the broker is down (or stops answering within ``DISPATCH_PUBLISH_TIMEOUT``),
        the outage policy decides: ``spool`` (default), ``inline`` or ``raise``.
        """
        return self.dispatch_many([job], countdown, outage=outage, fresh=fresh)[0]

    def dispatch_many(
        self,
        jobs: Sequence[Job],
        countdown: float | None,
        *,
        outage: str | None = None,
        fresh: bool = True,
    ) -> list[RouteName]:
        """``dispatch`` for many jobs: one pipelined round trip per ``PUBLISH_BATCH`` jobs."""
        monitor = self.monitor
        prepared = self._prepared_all(jobs, countdown, fresh) if jobs else []
        routes: list[RouteName] = []
        for start in range(0, len(jobs), PUBLISH_BATCH):
            chunk = list(zip(jobs[start:start + PUBLISH_BATCH],
                             prepared[start:start + PUBLISH_BATCH], strict=True))
            if fresh:
                for job, (_, _, record) in chunk:
                    if record is None:  # separate records store: write before workers see it
                        core.record(job, "PENDING")
            if monitor.healthy:
                try:
                    monitor.publisher.publish(
                        [(job.publish_id, key, message, record)
                         for job, (key, message, record) in chunk]
                    )
                except BROKER_ERRORS as exc:
                    monitor.mark_down(exc)
                else:
                    for job, _ in chunk:
                        emit("task.dispatched", job)
                    routes += ["celery"] * len(chunk)
                    continue
            routes += [self._on_outage(job, countdown, key, message, record, outage)
                       for job, (key, message, record) in chunk]
        return routes

    def _on_outage(
        self,
        job: Job,
        countdown: float | None,
        key: str,
        message: str,
        record: str | None,
        outage: str | None,
    ) -> RouteName:
        mode = outage or self.settings.broker_outage
        if mode == "raise":
            raise BrokerUnavailable(
                f"the broker is unavailable; task {job.spec.name!r} was not accepted"
            )
        if mode == "inline":
            from .inline import dispatch_inline

            job.route, job.queue = "inline", None
            dispatch_inline(job, countdown, reason="broker_outage")
            return "inline"
        try:
            self.monitor.spool.put(SpooledJob(job.publish_id, key, message, record))
        except (sqlite3.Error, OSError) as exc:
            raise BrokerUnavailable(
                f"the broker is unavailable and the spool at {self.settings.spool_path} "
                f"cannot be written ({exc}); task {job.spec.name!r} was not accepted"
            ) from exc
        emit("task.dispatched", job, reason="spooled")
        return "celery"

    def publish(self, job: Job, countdown: float | None = None) -> None:
        """Publish the next attempt of a running job (a retry); spools on outage."""
        self.dispatch(job, countdown, outage="spool", fresh=False)


# -- worker side ----------------------------------------------------------------------
_loops = threading.local()


def worker_loop() -> asyncio.AbstractEventLoop:
    """One persistent event loop per worker process (per thread with ``-P threads``) for
    async tasks, not one per job."""
    loop: asyncio.AbstractEventLoop | None = getattr(_loops, "loop", None)
    if loop is None or loop.is_closed() or getattr(_loops, "pid", 0) != os.getpid():
        loop = asyncio.new_event_loop()
        _loops.loop, _loops.pid = loop, os.getpid()
    return loop


def job_from_request(task: Task[Any, Any], request: Any, payload: dict[str, Any]) -> Job:
    meta = getattr(request, HEADER, None)
    meta = meta if isinstance(meta, dict) else {}
    delivery = getattr(request, "delivery_info", None) or {}
    priority = meta.get("priority")
    return Job(
        id=str(request.id),
        spec=task.spec,
        route="celery",
        queue=meta.get("queue") or delivery.get("routing_key"),
        priority=priority if isinstance(priority, int) else task.spec.priority,
        payload=payload,
        attempt=int(meta.get("attempt") or 1),
        request_id=meta.get("request_id"),
        dispatched_at=float(meta.get("dispatched_at") or 0.0),
    )


RUNS_PREFIX = "dispatch:runs:"


def count_run(job: Job, ttl: int) -> int | None:
    """Count this delivery of ``job``; a delivery beyond the header's attempt means an
    earlier run died with its process (SIGKILL, OOM) and counts as a failed attempt."""
    settings = runtime.settings()
    records = runtime.redis_client()
    broker = runtime.celery_route().monitor.publisher.client
    try:
        pipe = broker.pipeline(transaction=False)
        mark_started(pipe, job.publish_id)
        if records is not None and settings.results_url == settings.broker_url:
            pipe.incr(RUNS_PREFIX + job.id)
            pipe.expire(RUNS_PREFIX + job.id, ttl)
            return int(pipe.execute()[-2])
        pipe.execute()
        if records is None:
            return None
        with records.pipeline(transaction=False) as separate:
            separate.incr(RUNS_PREFIX + job.id)
            separate.expire(RUNS_PREFIX + job.id, ttl)
            return int(separate.execute()[0])
    except BROKER_ERRORS:
        return None  # no store: trust the message's own attempt number


def execute(task: Task[Any, Any], request: Any, payload: dict[str, Any]) -> None:
    """Run one delivered message through the execution core and carry out its outcome."""
    job = job_from_request(task, request, payload)
    runs = count_run(job, runtime.settings().result_ttl)
    if runs is not None and runs > job.attempt:
        job.attempt = runs
    if job.attempt > task.spec.retry.max_attempts:
        error = WorkerLostError(
            f"the process running task {job.id} died {job.attempt - 1} time(s); "
            "giving up (poison job)"
        )
        job.attempt -= 1
        core.reject(job, error, reason="crashed")
        return
    try:
        values = task.validator.decode(payload)
    except TaskValidationError as exc:
        core.reject(job, exc)
        return
    if task.spec.is_async:
        outcome = worker_loop().run_until_complete(core.run_async(job, values))
    else:
        outcome = core.run_sync(job, values)
    if outcome.retry_delay is not None:
        runtime.status_store().flush(1.0)  # RETRY lands before the next attempt's STARTED
        runtime.celery_route().publish(job.next_attempt(), countdown=outcome.retry_delay)
        # Tell Celery (and Flower) this run ended in a retry we already scheduled.
        raise Retry(str(outcome.error), when=outcome.retry_delay)  # type: ignore[arg-type]


def register_tasks(app: Celery) -> list[str]:
    """Register every ``@task`` with ``app`` under its own name; returns the names."""
    names = []
    for task in all_tasks():
        _register(app, task)
        names.append(task.spec.name)
    return names


def _register(app: Celery, task: Task[Any, Any]) -> None:
    def run(self: Any, /, **payload: Any) -> None:
        execute(task, self.request, payload)

    run.__name__ = task.spec.name.rsplit(".", 1)[-1]
    run.__doc__ = task.__doc__
    app.task(name=task.spec.name, bind=True, ignore_result=True, acks_late=True, typing=False)(run)


def require_broker(settings: DispatcherSettings) -> str:
    if settings.broker_url is None:
        raise ConfigurationError("DISPATCH_BROKER_URL is not set; a Celery worker needs a broker")
    return settings.broker_url


def worker_queues(settings: DispatcherSettings) -> list[str]:
    """Every queue a registered task can be routed to: the default, decorators', rules'."""
    queues = [settings.default_queue]
    queues += [t.spec.queue for t in all_tasks() if t.spec.queue]
    queues += [rule.queue for rule in settings.routes if rule.queue and rule.route == "celery"]
    return list(dict.fromkeys(queues))


def create_worker_app(settings: DispatcherSettings) -> Celery:
    """The worker's Celery app: imports task modules, registers every task, shares the route."""
    from .checks import check_configuration
    from .events import configure_logging
    from .registry import import_task_modules

    require_broker(settings)
    configure_logging(settings)
    import_task_modules(settings.task_modules)
    app = create_celery_app(settings, main="worker")
    register_tasks(app)
    check_configuration(settings, app.conf)
    route = CeleryRoute(settings, app)
    runtime.use_celery_route(route)
    worker_ready.connect(lambda **_: start_sweeper(route), weak=False)
    return app


def start_sweeper(route: CeleryRoute) -> threading.Thread:
    """Re-queue lost publications from the worker's main process, in the background."""
    sweeper = Sweeper(route.monitor.publisher.client, route.settings.requeue_lost_after)
    pause = max(1.0, min(10.0, route.settings.requeue_lost_after / 2))

    def loop() -> None:
        while True:
            time.sleep(pause)
            try:
                sweeper.sweep()
            except BROKER_ERRORS as exc:
                log.debug("lost-job sweep skipped: %s", exc)

    thread = threading.Thread(target=loop, name="dispatch-sweeper", daemon=True)
    thread.start()
    return thread
