"""Messages ready to publish: each job's queue key, Celery message, PENDING record and
due time, size-checked against ``DISPATCH_MAX_PAYLOAD_BYTES`` before anything is sent.

A job not yet due (a countdown, an eta, a retry delay) carries its due time: the publish
script files it in the delay store instead of its queue (``delayed``)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from ...core.errors import TaskValidationError
from ...core.job import Job
from ...core.record import pending_json
from ...core.settings import DispatcherSettings
from .protocol import MessageTemplate, encode_body, message_json, queue_key

Prepared = tuple[str, str, str | None, float | None]
"""``(queue_key, message_json, record_json, due)`` of one job, ready to publish; ``due``
(``time.time()`` seconds) is None for a job due now."""

#: The record of a batch's job: written by the worker's take, not the publish. Until
#: then its publish marker holds the message, from which readers tell its PENDING
#: record (``store.records``): one write fewer per job for Redis at publish, which
#: sets ``dispatch_many``'s pace.
RECORD_AT_TAKE = "="


def preparer(settings: DispatcherSettings, jobs: Sequence[Job],
             fresh: bool) -> Callable[[int, int], list[Prepared]]:
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
    if not (uniform and fresh and first.attempt == 1 and first.queued_at is None
            and _records_with_broker(settings)):
        ready = [prepared(settings, job, fresh) for job in jobs]
        return lambda start, stop: ready[start:stop]
    template = MessageTemplate(first, record_at_take=True)
    bodies = [encode_body(job.payload) for job in jobs]
    limit = settings.max_payload_bytes
    for job, body in zip(jobs, bodies, strict=True):
        size = template.size(job.id, body)
        if size > limit:
            raise too_large(settings, job, size)
    key = queue_key(first.queue or settings.default_queue, first.priority)

    def prepare(start: int, stop: int) -> list[Prepared]:
        return [
            (key, template.render(job.id, body), RECORD_AT_TAKE, None)
            for job, body in zip(jobs[start:stop], bodies[start:stop], strict=True)
        ]

    return prepare


def prepared(settings: DispatcherSettings, job: Job, fresh: bool) -> Prepared:
    """One job's queue key, message, (for a fresh job whose records live with the
    broker) PENDING record, written by the publish script with the message, and due
    time (None: due now)."""
    message = message_json(job)
    if len(message) > settings.max_payload_bytes:
        raise too_large(settings, job, len(message))
    due = job.queued_at if job.delay() else None
    record = pending_json(job) if fresh and _records_with_broker(settings) else None
    return queue_key(job.queue or settings.default_queue, job.priority), message, record, due


def too_large(settings: DispatcherSettings, job: Job, size: int) -> TaskValidationError:
    return TaskValidationError(job.spec.name, [{
        "field": "(arguments)",
        "message": f"message of {size} bytes exceeds "
        f"DISPATCH_MAX_PAYLOAD_BYTES={settings.max_payload_bytes}",
    }])


def _records_with_broker(settings: DispatcherSettings) -> bool:
    return settings.result_backend_url in (None, settings.broker_url)
