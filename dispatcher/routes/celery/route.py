"""The Celery route, publishing side: ``CeleryRoute`` publishes jobs, retries and
hand-overs and applies the broker-outage policy (the worker side is ``worker``).

Messages are plain Celery protocol-2 task messages (``protocol``), published by one
script call per batch (``publisher``).
"""

from __future__ import annotations

import logging
import sqlite3
import threading
from collections.abc import Callable, Sequence
from typing import Any

from celery import Celery

from ...core.errors import BrokerUnavailable
from ...core.events import Announcement, emit, emit_many
from ...core.execution import Execution
from ...core.job import Job
from ...core.ports import Route
from ...core.record import ErrorInfo, pending_json
from ...core.settings import DispatcherSettings
from ...core.spec import RouteName
from ...policy.governor import never_busy
from ...policy.routing import EVENT_REASON, Cause
from ...store.client import client_for
from ...store.record_buffer import RecordBuffer
from .app import create_celery_app
from .monitor import BROKER_ERRORS, BrokerMonitor
from .prepare import RECORD_AT_TAKE, Prepared, prepared, preparer
from .publisher import Publisher
from .spill import SpillPublisher
from .spool import Spool, SpooledJob

log = logging.getLogger("dispatcher.celery")

PUBLISH_BATCH = 500
#: Spilled-over jobs a process may hold for publishing (``SpillPublisher``); past it a
#: spilled job goes to the outage spool.
SPILL_CAPACITY = 10_000


class CeleryRoute:
    """Publishes jobs (and retries, and hand-overs); applies the broker-outage policy.

    ``fallback`` is the inline route, for ``broker_outage="inline"`` (wired by
    ``dispatcher.runtime``; this route never imports the other)."""

    name: RouteName = "celery"

    def __init__(self, settings: DispatcherSettings, execution: Execution,
                 app: Celery | None = None, fallback: Route | None = None, *,
                 busy: Callable[[], bool] = never_busy) -> None:
        self.settings = settings
        #: Whether the web server is saturated (its spill-over publisher asks).
        self._busy = busy
        self.execution = execution
        self.fallback = fallback
        self.app = app if app is not None else create_celery_app(settings)
        self._lock = threading.Lock()
        self._publisher: Publisher | None = None
        self._monitor: BrokerMonitor | None = None
        self._spill: SpillPublisher | None = None

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
                    client, self.settings.result_ttl, self.settings.result_ttl,
                    self.settings.publish_spin_us / 1e6,
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
        monitor = self.monitor
        item = prepared(self.settings, job, fresh)
        if fresh and item[2] is None:  # a separate records store: written before
            self.execution.record(job, "PENDING")
        if not monitor.healthy:
            return self._on_outage(job, countdown, *item, outage)
        dispatched = Announcement("task.dispatched", job, reason=reason)
        try:
            monitor.publisher.publish_one((job.publish_id, *item), dispatched.prepare)
        except BROKER_ERRORS as exc:
            monitor.mark_down(exc)
            return self._on_outage(job, countdown, *item, outage)
        dispatched.emit()
        return "celery"

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
        prepare = preparer(self.settings, jobs, fresh)
        routes: list[RouteName] = ["celery"] * len(jobs)
        sent: dict[int, list[Prepared]] = {}

        def confirmed(start: int) -> None:
            del sent[start]
            emit_many("task.dispatched", jobs[start:start + PUBLISH_BATCH], reason=reason)

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
                    for job, (_, _, record, _) in zip(chunk, batch, strict=True):
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
        due: float | None,
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
        record = pending_json(job) if record == RECORD_AT_TAKE else record  # relayed by any release
        try:
            self.monitor.spool.put(SpooledJob(job.publish_id, key, message, record, due))
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

    def spill(self, jobs: Sequence[Job], countdown: float | None, *,
              outage: str | None = None) -> None:
        """Take jobs spilled over from the full inline executor without publishing on
        the caller's thread (a request's): a background thread publishes them in
        pipelined batches (``SpillPublisher``). When the broker is known to be down,
        the outage policy applies at once, as for ``dispatch``; when the buffer is full,
        a job goes to the outage spool (no Redis call on this thread either way)."""
        reason = EVENT_REASON[Cause.SPILL_OVER]
        monitor = self.monitor
        if not monitor.healthy:
            self.dispatch_many(jobs, countdown, outage=outage, reason=reason)
            return
        # The caller was answered already: a later outage cannot raise to it.
        mode = outage or self.settings.broker_outage
        later = "inline" if mode == "inline" else "spool"
        spill = self.spill_publisher
        for job in jobs:
            if not spill.put(job, countdown, later):
                self._on_outage(job, countdown, *prepared(self.settings, job, True), "spool")

    @property
    def spill_publisher(self) -> SpillPublisher:
        """The background publisher of spilled-over jobs (built on first use; the
        records store answers PENDING for the jobs it holds)."""
        with self._lock:
            if self._spill is None:
                self._spill = SpillPublisher(self._publish_spilled, self._run_inline,
                                             SPILL_CAPACITY, busy=self._busy)
                records = self.execution.records
                if isinstance(records, RecordBuffer):
                    records.read_also(self._spill.filed)
            return self._spill

    def _publish_spilled(self, jobs: Sequence[Job], countdown: float | None,
                         outage: str) -> list[RouteName]:
        return self.dispatch_many(jobs, countdown, outage=outage,
                                  reason=EVENT_REASON[Cause.SPILL_OVER])

    def _run_inline(self, jobs: Sequence[Job], countdown: float | None) -> None:
        """Spilled jobs the broker refused (too large): run where they were headed."""
        for job in jobs:
            job.route, job.queue = "inline", None
        if self.fallback is None:  # nowhere to run them: kept as dead letters
            error: ErrorInfo = {"type": "BrokerUnavailable",
                     "message": "spilled over, refused by the broker, no inline route"}
            for job in jobs:
                log.error("spilled-over job %s could not be published or run inline", job.id)
                self.execution.record(job, "FAILURE", error=error, reason="spill_over")
                self.execution.dead_letter(job, error, "spill_over")
            return
        self.fallback.accept(jobs, countdown, reason=EVENT_REASON[Cause.SPILL_OVER])

    def close(self) -> None:
        """Publish (or spool) every spilled-over job still held; stop its thread. A
        later spill (the app's lifespan starts again, as under a test client) gets a
        new publisher."""
        with self._lock:
            spill, self._spill = self._spill, None
        if spill is not None:
            spill.stop()

    def publish(self, job: Job, countdown: float | None = None) -> None:
        """Publish the next attempt of a running job (a retry); spools on outage."""
        self.dispatch(job, countdown, outage="spool", fresh=False)
