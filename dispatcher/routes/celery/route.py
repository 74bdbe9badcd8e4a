"""The Celery route, publishing side: ``CeleryRoute`` publishes jobs, retries and
hand-overs and applies the broker-outage policy (the worker side is ``worker``).

Messages are plain Celery protocol-2 task messages (``protocol``), published by one
script call per batch (``publisher``).
"""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Callable, Sequence
from typing import Any

from celery import Celery

from ...core.errors import BrokerUnavailable, TaskValidationError
from ...core.events import emit
from ...core.execution import Execution
from ...core.job import Job
from ...core.ports import Route
from ...core.record import pending_json
from ...core.settings import DispatcherSettings
from ...core.spec import RouteName
from ...policy.routing import EVENT_REASON, Cause
from ...store.client import client_for
from .app import create_celery_app
from .monitor import BROKER_ERRORS, BrokerMonitor
from .protocol import MessageTemplate, encode_body, queue_key, task_message
from .publisher import Publisher
from .spool import Spool, SpooledJob

PUBLISH_BATCH = 500

Prepared = tuple[str, str, str | None]
"""``(queue_key, message_json, record_json)`` of one job, ready to publish."""


class CeleryRoute:
    """Publishes jobs (and retries, and hand-overs); applies the broker-outage policy.

    ``fallback`` is the inline route, for ``broker_outage="inline"`` (wired by
    ``dispatcher.runtime``; this route never imports the other)."""

    name: RouteName = "celery"

    def __init__(self, settings: DispatcherSettings, execution: Execution,
                 app: Celery | None = None, fallback: Route | None = None) -> None:
        self.settings = settings
        self.execution = execution
        self.fallback = fallback
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
                client = client_for(self.settings, url)
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
                            self.execution.record(job, "PENDING")
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
        if mode == "inline" and self.fallback is not None:
            job.route, job.queue = "inline", None
            return self.fallback.accept([job], countdown,
                                        reason=EVENT_REASON[Cause.OUTAGE])[0]
        try:
            self.monitor.spool.put(SpooledJob(job.publish_id, key, message, record))
        except (sqlite3.Error, OSError) as exc:
            raise BrokerUnavailable(
                f"the broker is unavailable and the spool at {self.settings.spool_path} "
                f"cannot be written ({exc}); task {job.spec.name!r} was not accepted"
            ) from exc
        emit("task.dispatched", job, reason="spooled")
        return "celery"

    def accept(self, jobs: Sequence[Job], countdown: float | None, *,
               reason: str | None = None) -> list[RouteName]:
        """The ``Route`` port: take jobs handed over by the inline route (spooled while
        the broker is down, never sent back inline)."""
        return self.dispatch_many(jobs, countdown, outage="spool", reason=reason)

    def publish(self, job: Job, countdown: float | None = None) -> None:
        """Publish the next attempt of a running job (a retry); spools on outage."""
        self.dispatch(job, countdown, outage="spool", fresh=False)
