"""Cancellation against real Redis and the session worker: a job that has not started
never starts, a running one is told, on both routes; REVOKED is final."""

from __future__ import annotations

import threading
import time

import httpx
import pytest
import redis
from fastapi import FastAPI
from fastapi.testclient import TestClient

from dispatcher import TaskCancelled, TaskHandle, UnknownJobError, cancel, task
from dispatcher.fastapi import install, jobs_router
from dispatcher.routes.celery.protocol import queue_keys
from dispatcher.runtime.container import current
from dispatcher.store import keys
from tests.integration import sample_tasks as samples
from tests.support import wait_until

GATE = threading.Event()
RAN: list[str] = []


@task(name="tests.cancel.gated", weight=1)
def gated() -> None:
    GATE.wait(120)


@task(name="tests.cancel.noted", weight=1)
def noted(mark: str) -> None:
    RAN.append(mark)


def _stopped_within(handle: TaskHandle) -> float:
    """Cancel a running job; how long it took to end REVOKED (printed, not asserted)."""
    wait_until(lambda: handle.state() == "STARTED", "the job running")
    told = time.monotonic()
    assert handle.cancel() is True
    with pytest.raises(TaskCancelled):
        handle.get(timeout=30)
    return time.monotonic() - told


def test_a_delayed_celery_job_cancelled_never_starts(broker: str) -> None:
    client = redis.Redis.from_url(broker)
    handle = samples.on_own_queue.options(countdown=3600).dispatch(3)
    publish_id = f"{handle.id}:1"
    assert cancel(handle.id) is True
    assert handle.state() == "REVOKED"  # at once: it was waiting
    # Withdrawn from the delay store at once: its delay may outlast the cancel mark.
    assert client.zscore(keys.DELAYED, publish_id) is None
    queued = [m for k in queue_keys("samples-heavy") for m in client.lrange(k, 0, -1)]
    assert not [m for m in queued if handle.id.encode() in m]  # dropped, never pushed
    assert handle.state() == "REVOKED"
    assert cancel(handle.id) is False  # finished: nothing changes


def test_running_jobs_are_told_on_the_worker_sync_and_async(broker: str) -> None:
    sync = _stopped_within(samples.until_cancelled.dispatch(60))
    coroutine = _stopped_within(samples.async_until_cancelled.dispatch(60))
    print(f"\ncancel to REVOKED on the worker: sync {sync:.2f} s, async {coroutine:.2f} s")


def test_inline_jobs_cancelled_before_and_while_running(broker: str) -> None:
    GATE.clear()
    executor_full = current().settings.inline_concurrency
    try:
        blockers = [gated.dispatch() for _ in range(executor_full)]
        wait_until(lambda: current().inline_load()[0] == executor_full, "every slot taken")
        waiting = noted.dispatch("cancelled")
        after = noted.dispatch("after")
        assert waiting.route == after.route == "inline"
        assert cancel(waiting.id) is True
        assert waiting.state() == "REVOKED"
    finally:
        GATE.set()
    assert after.get(timeout=30) is None
    for blocker in blockers:
        blocker.get(timeout=30)
    assert RAN.count("cancelled") == 0 and RAN.count("after") == 1
    took = _stopped_within(samples.until_cancelled.options(route="inline").dispatch(60))
    print(f"\ncancel to REVOKED inline: {took:.2f} s")


def test_the_cancel_endpoint_answers_202_409_and_404(broker: str) -> None:
    app = install(FastAPI())
    app.include_router(jobs_router)
    with TestClient(app) as client:
        handle = samples.on_own_queue.options(countdown=3600).dispatch(4)
        first = client.post(f"/tasks/{handle.id}/cancel")
        assert first.status_code == 202 and first.json()["state"] == "REVOKED"
        again = client.post(f"/tasks/{handle.id}/cancel")
        assert again.status_code == 409 and again.json()["detail"]["state"] == "REVOKED"
        missing = client.post("/tasks/no-such-job/cancel")
        assert missing.status_code == httpx.codes.NOT_FOUND
    with pytest.raises(UnknownJobError):
        cancel("no-such-job")
