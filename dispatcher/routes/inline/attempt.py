"""One attempt of an inline job, in the executor's worker thread."""

from __future__ import annotations

import asyncio

from ...core.errors import TaskValidationError
from ...core.execution import Execution, Outcome
from ...core.job import Job
from ...core.registry import get_task
from .loop import BackgroundLoop


def run_attempt(execution: Execution, loop: BackgroundLoop, job: Job,
                started_at: float | None) -> Outcome:
    """Decode ``job``'s JSON payload, exactly as a worker does (the task gets fresh
    values, never the caller's objects, and the same types on both routes), then run
    it: a sync task in this thread, a coroutine task on ``loop`` while this thread
    waits. ``started_at``: when the limiter admitted it."""
    try:
        values = get_task(job.spec.name).validator.decode(job.payload)
    except TaskValidationError as exc:
        return execution.reject(job, exc)
    if not job.spec.is_async:
        return execution.run_sync(job, values, started_at)
    return asyncio.run_coroutine_threadsafe(
        execution.run_async(job, values, started_at), loop.get()).result()
