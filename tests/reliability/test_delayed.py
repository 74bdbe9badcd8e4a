"""Delayed jobs outlast the visibility timeout: a countdown longer than it runs once,
with two workers (each with a relay), because no worker holds the job while it waits."""

from __future__ import annotations

import time
import uuid

import redis

from dispatcher.routes.celery.protocol import queue_keys
from dispatcher.store import keys
from tests.support import wait_until

from . import tasks
from .conftest import Cluster, report


def test_a_countdown_past_the_visibility_timeout_runs_once(cluster: Cluster) -> None:
    assert cluster.short  # visibility timeout 10 s: a Celery eta would be redelivered
    client = redis.Redis.from_url(cluster.redis.url)
    cluster.start_worker(2)
    cluster.start_worker(2, hostname="second@%h")
    jobs = [f"delayed-{i}-{uuid.uuid4().hex[:6]}" for i in range(20)]
    countdown = 10 + 5
    dispatched_at = time.time()
    handles = [tasks.work.options(countdown=countdown).dispatch(job, 10) for job in jobs]
    held = {f"{h.id}:1" for h in handles}
    # While they wait: all in the delay store, none in a queue or reserved by a worker.
    assert set(client.zrangebyscore(keys.DELAYED, "-inf", "+inf")) >= {p.encode() for p in held}
    assert not client.hlen(keys.KOMBU_UNACKED)
    done = cluster.wait_done(set(jobs), timeout=120)
    assert all(done[j] for j in jobs), cluster.diagnose(set(jobs) - set(done))
    for handle in handles:
        record = handle.record()
        assert record is not None and record["started_at"] >= dispatched_at + countdown
    # Nothing of them is left anywhere a second run could come from.
    wait_until(lambda: not client.hlen(keys.KOMBU_UNACKED), "every acknowledgement")
    assert client.zmscore(keys.DELAYED, list(held)) == [None] * len(held)
    assert not any(client.llen(key) for key in queue_keys("celery"))
    duplicates = sum(done[j] - 1 for j in jobs)
    report("countdown 15 s > visibility 10 s, 2 workers", len(jobs),
           sum(1 for j in jobs if done[j]), 0, duplicates, "each run once, none held")
    assert duplicates == 0
