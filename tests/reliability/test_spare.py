"""A worker holds one job ahead of its free pool processes while its jobs are short
(``routes/celery/spare.py``). A job it held and never started is not counted as a death
when the worker dies; the job it was running is."""

from __future__ import annotations

import uuid

import pytest
import redis

from dispatcher.store import keys
from tests.support import wait_until

from . import tasks
from .conftest import Cluster


# The spare is Celery's consumer's (the direct consumer takes no job ahead).
@pytest.mark.parametrize("cluster", ["celery-short"], indirect=True)
def test_a_job_held_ahead_by_a_killed_worker_gets_no_death(cluster: Cluster) -> None:
    client = redis.Redis.from_url(cluster.redis.url)
    worker = cluster.start_worker(1)
    tag = uuid.uuid4().hex[:6]
    warm = {f"warm-{i}-{tag}" for i in range(10)}
    for job in warm:  # short jobs: the worker may hold a spare from now on
        tasks.work.dispatch(job, 0)
    assert warm <= set(cluster.wait_done(warm, timeout=60))
    running = tasks.gated.dispatch(f"gated-{tag}")
    wait_until(lambda: tasks.seen("start", f"gated-{tag}"), "the gated job running")
    held = tasks.work.dispatch(f"held-{tag}", 0)
    wait_until(lambda: client.get(keys.taken(held.id)) == b"1", "the next job held ahead")
    assert client.get(keys.runs(held.id)) == b"1"
    wait_until(lambda: client.get(keys.taken(running.id)) is None,
               "the running job's taken mark cleared as it started")

    cluster.kill_worker(worker)
    cluster.start_worker(1)
    tasks.gate(f"gated-{tag}").touch()
    both = {f"gated-{tag}", f"held-{tag}"}
    assert both <= set(cluster.wait_done(both, timeout=120))
    assert client.get(keys.runs(held.id)) == b"1"  # never started: no death
    assert client.get(keys.runs(running.id)) == b"2"  # died running: one death
    assert held.record()["attempt"] == running.record()["attempt"] == 1  # type: ignore[index]
