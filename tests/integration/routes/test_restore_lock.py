"""A worker killed while it held kombu's restore lock must not stop the fleet from
restoring the jobs that dead workers had reserved: kombu keeps that lock 300 s unless
told otherwise, and our workers take it for ``RESTORE_LOCK_SECONDS``."""

from __future__ import annotations

import json
import time

import redis

from dispatcher import TaskHandle
from dispatcher.core.job import Job, new_job_id
from dispatcher.routes.celery.app import RESTORE_LOCK_SECONDS
from dispatcher.routes.celery.protocol import task_message
from dispatcher.store import keys
from tests.integration import sample_tasks as samples


def test_workers_take_the_restore_lock_for_seconds(broker: str) -> None:
    """Watch the session worker's next restore pass lock (Redis MONITOR)."""
    client = redis.Redis.from_url(broker)
    deadline = time.monotonic() + 60
    with client.monitor() as monitor:
        for command in monitor.listen():
            text = command["command"]
            if text.startswith(f"SET {keys.KOMBU_UNACKED_MUTEX} "):
                break
            assert time.monotonic() < deadline, "no restore pass took the lock"
    assert f"PX {RESTORE_LOCK_SECONDS * 1000}" in text, text


def test_reserved_jobs_of_a_dead_worker_run_once_its_lock_expires(broker: str) -> None:
    client = redis.Redis.from_url(broker)
    job = Job(new_job_id(), samples.echo.spec, "celery", "celery", 5, {"value": {"n": 7}})
    message = task_message(job)
    tag = message["properties"]["delivery_tag"]
    # What a worker that died inside a restore pass leaves behind: the lock, as our
    # workers take it, and a message it had reserved, long past the visibility timeout.
    client.set(keys.KOMBU_UNACKED_MUTEX, "a-dead-worker", ex=RESTORE_LOCK_SECONDS)
    with client.pipeline(transaction=True) as pipe:
        pipe.hset(keys.KOMBU_UNACKED, tag, json.dumps([message, "", "celery"]))
        pipe.zadd(keys.KOMBU_UNACKED_INDEX, {tag: time.time() - 2 * 86_400})
        pipe.execute()
    # Recovered by the session worker's restore pass once the lock has expired; with
    # kombu's default (300 s) this would wait five minutes.
    assert TaskHandle(job.id, "samples.echo", "celery").get(timeout=120) == {"n": 7}
