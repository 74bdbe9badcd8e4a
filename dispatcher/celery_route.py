"""The Celery route, publishing side: the Celery app's settings and ``CeleryRoute``,
which publishes jobs, retries and hand-overs and applies the broker-outage policy
(the worker side is ``celery_worker``).

Messages are plain Celery protocol-2 task messages (JSON body, the job id as task
id), so a stock Celery worker and Flower understand them. Our extra facts (attempt,
request id) ride in one ``dispatch`` header. Priorities map onto kombu's Redis
priority lists, where 0 is served first: our 9 (most urgent) becomes Celery's 0.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Callable, Sequence
from typing import Any

from celery import Celery

from . import core
from .broker import BROKER_ERRORS, BrokerMonitor
from .errors import BrokerUnavailable, TaskValidationError
from .events import emit
from .job import Job
from .settings import DispatcherSettings
from .spec import RouteName
from .spool import Spool, SpooledJob
from .status import pending_json
from .wire import (
    MessageTemplate,
    Publisher,
    encode_body,
    queue_key,
    redis_client,
    task_message,
)

PUBLISH_BATCH = 500

Prepared = tuple[str, str, str | None]
"""``(queue_key, message_json, record_json)`` of one job, ready to publish."""


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

    def status(self) -> dict[str, Any]:
        if self.settings.broker_url is None:
            return {"reachable": False, "checked_at": None, "spool_depth": 0}
        monitor = self.monitor
        monitor.start()
        return monitor.status()

    def _preparer(
        self, jobs: Sequence[Job], countdown: float | None, fresh: bool
    ) -> Callable[[int, int], list[Prepared]]:
        """Checks every job's message size now (so one oversized job publishes nothing)
        and returns ``prepare(start, stop)``, which builds that slice's queue keys,
        messages and PENDING records when it is about to be sent."""
        first = jobs[0]
        uniform = len(jobs) > 1 and all(
            (j.spec, j.queue, j.priority, j.request_id, j.attempt, j.dispatched_at, j.queued_at)
            == (first.spec, first.queue, first.priority, first.request_id, first.attempt,
                first.dispatched_at, first.queued_at)
            for j in jobs
        )
        shared_redis = self.settings.result_backend_url in (None, self.settings.broker_url)
        if not (uniform and fresh and shared_redis):
            prepared = [self._prepared(job, countdown, fresh) for job in jobs]
            return lambda start, stop: prepared[start:stop]
        template = MessageTemplate(first, countdown)
        bodies = [encode_body(job.payload) for job in jobs]
        limit = self.settings.max_payload_bytes
        for job, body in zip(jobs, bodies, strict=True):
            size = template.size(job.id, body)
            if size > limit:
                raise self._too_large(job, size)
        key = queue_key(first.queue or self.settings.default_queue, first.priority)

        def prepare(start: int, stop: int) -> list[Prepared]:
            return [
                (key, template.render(job.id, body), pending_json(job))
                for job, body in zip(jobs[start:stop], bodies[start:stop], strict=True)
            ]

        return prepare

    def _prepared(
        self, job: Job, countdown: float | None, fresh: bool, message: str | None = None
    ) -> Prepared:
        if message is None:
            message = json.dumps(task_message(job, countdown))
        if len(message) > self.settings.max_payload_bytes:
            raise self._too_large(job, len(message))
        shared_redis = self.settings.result_backend_url in (None, self.settings.broker_url)
        record = pending_json(job) if fresh and shared_redis else None
        return queue_key(job.queue or self.settings.default_queue, job.priority), message, record

    def _too_large(self, job: Job, size: int) -> TaskValidationError:
        return TaskValidationError(job.spec.name, [{
            "field": "(arguments)",
            "message": f"message of {size} bytes exceeds "
            f"DISPATCH_MAX_PAYLOAD_BYTES={self.settings.max_payload_bytes}",
        }])

    def dispatch(
        self,
        job: Job,
        countdown: float | None,
        *,
        outage: str | None = None,
        fresh: bool = True,
        reason: str | None = None,
    ) -> RouteName:
        """Record, publish and announce ``job``; returns the route it finally took.

        If the broker is down (or stops answering within ``DISPATCH_PUBLISH_TIMEOUT``),
        the outage policy decides: ``spool`` (default), ``inline`` or ``raise``.
        ``reason`` goes into the ``task.dispatched`` event (e.g. ``spill_over``).
        """
        return self.dispatch_many([job], countdown, outage=outage, fresh=fresh,
                                  reason=reason)[0]

    def dispatch_many(
        self,
        jobs: Sequence[Job],
        countdown: float | None,
        *,
        outage: str | None = None,
        fresh: bool = True,
        reason: str | None = None,
    ) -> list[RouteName]:
        """``dispatch`` for many jobs, ``PUBLISH_BATCH`` per script call, the calls
        pipelined: Redis publishes one batch while this process sends the next.

        Every message is built (and size-checked) before the first is published.
        """
        monitor = self.monitor
        if not jobs:
            return []
        prepare = self._preparer(jobs, countdown, fresh)
        routes: list[RouteName] = ["celery"] * len(jobs)
        sent: dict[int, list[Prepared]] = {}

        def confirmed(start: int) -> None:
            del sent[start]
            for job in jobs[start:start + PUBLISH_BATCH]:
                emit("task.dispatched", job, reason=reason)

        def not_confirmed(start: int, batch: list[Prepared]) -> None:
            for index, item in enumerate(batch, start):
                routes[index] = self._on_outage(jobs[index], countdown, *item, outage)

        stream = monitor.publisher.stream()

        def settle() -> None:
            """Every batch sent gets its answer, or goes to the outage policy."""
            try:
                while len(stream):
                    confirmed(stream.receive()[0])
            except BROKER_ERRORS as exc:
                monitor.mark_down(exc)
                for unconfirmed in stream.abandon():
                    not_confirmed(unconfirmed, sent.pop(unconfirmed))
                while len(stream):  # confirmed before the error: no I/O left
                    confirmed(stream.receive()[0])

        try:
            for start in range(0, len(jobs), PUBLISH_BATCH):
                batch = prepare(start, start + PUBLISH_BATCH)
                chunk = jobs[start:start + PUBLISH_BATCH]
                if fresh:
                    for job, (_, _, record) in zip(chunk, batch, strict=True):
                        if record is None:  # separate records store: write before publishing
                            core.record(job, "PENDING")
                if not monitor.healthy:  # found down meanwhile (here or by another thread)
                    settle()
                    not_confirmed(start, batch)
                    continue
                last = start + PUBLISH_BATCH >= len(jobs)
                try:
                    sent[start] = batch
                    stream.send(start, [(job.publish_id, *item)
                                        for job, item in zip(chunk, batch, strict=True)])
                    while len(stream) > (0 if last else 1):
                        confirmed(stream.receive()[0])
                except BROKER_ERRORS as exc:
                    monitor.mark_down(exc)
                    settle()
            settle()
        except BaseException:
            settle()  # whatever went wrong, nothing sent is left without an answer
            raise
        finally:
            stream.close()
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
