"""Time and flow control against real workers: a countdown longer than the visibility
timeout runs once with two workers (each with a relay), because no worker holds the job
while it waits; jobs cancelled while no worker is up never run once one starts; a
schedule dispatches each tick once through a worker kill and a Redis restart."""

from __future__ import annotations

import time
import uuid

import redis

from dispatcher import cancel
from dispatcher.routes.celery.protocol import queue_keys
from dispatcher.runtime.scheduler import LATE
from dispatcher.store import keys
from tests.support import wait_until

from . import tasks
from .conftest import Cluster, report, scale


def test_a_countdown_past_the_visibility_timeout_runs_once(cluster: Cluster) -> None:
    assert cluster.short  # visibility timeout 10 s: a Celery eta would be redelivered
    client = redis.Redis.from_url(cluster.redis.url)
    cluster.start_workers([None, "second@%h"])
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


def test_jobs_cancelled_while_no_worker_is_up_never_run(cluster: Cluster) -> None:
    client = redis.Redis.from_url(cluster.redis.url)
    jobs = [f"cancel-{i}-{uuid.uuid4().hex[:6]}" for i in range(6)]
    handles = [tasks.work.dispatch(job, 10) for job in jobs]  # queued: no worker yet
    for handle in handles[:3]:
        assert cancel(handle.id) is True
    cluster.start_worker(2)
    done = cluster.wait_done(set(jobs[3:]), timeout=120)
    wait_until(lambda: not any(client.llen(k) for k in queue_keys("celery"))
               and not client.hlen(keys.KOMBU_UNACKED), "the worker to take every job")
    assert [done[j] for j in jobs] == [0, 0, 0, 1, 1, 1]
    assert [h.state() for h in handles[:3]] == ["REVOKED"] * 3
    report("cancelled while no worker was up", 6, 3, 0, 0, "3 cancelled: 0 runs")


def test_three_workers_dispatch_each_tick_once_through_a_kill_and_a_redis_restart(
        cluster: Cluster) -> None:
    """A 1-second schedule on 3 workers; a third of the way one is SIGKILLed and
    restarted, two thirds of the way Redis restarts (its data kept on disk)."""
    seconds = scale(30, 12)
    schedules = '[{"task": "rel.tick", "every": 1}]'
    workers = cluster.start_workers([f"tick{i}@%h" for i in range(3)], 1,
                                    DISPATCH_SCHEDULES=schedules)
    begin = time.time()
    wait_until(lambda: time.time() > begin + seconds / 3, "a third of the run", seconds)
    cluster.kill_worker(workers[0])
    workers.append(cluster.start_worker(1, hostname="tick0@%h", DISPATCH_SCHEDULES=schedules))
    wait_until(lambda: time.time() > begin + 2 * seconds / 3, "two thirds", seconds)
    down_at = time.time()
    cluster.redis.shutdown_nosave()
    cluster.redis.start()
    up_at = time.time()
    wait_until(lambda: time.time() > max(begin + seconds, up_at + LATE + 2), "the whole run",
               seconds + LATE + 60)
    for worker in workers[1:]:
        worker.stop()  # no tick after this
    # Each claimed tick (a key per tick) must have become exactly one job: the jobs are
    # told apart by id in the ledger (a job run twice after the kill is still one job).
    client = redis.Redis.from_url(cluster.redis.url)
    claims = sorted(float(k.rsplit(b":", 1)[1])
                    for k in client.scan_iter(match=keys.SCHEDULE_PREFIX + "*:tick:*"))
    expected = [claims[0] + n for n in range(int(claims[-1] - claims[0]) + 1)]
    cluster.start_worker(2)  # runs what the stopped workers left queued
    wait_until(lambda: len(cluster.events("tick")) >= len(claims), "every tick's job run")
    jobs = len(cluster.events("tick"))
    # Ticks may only be missing if Redis was away longer than a scheduler's lateness
    # allowance (then catch-up "latest" runs one of them), and only from that outage. A
    # tick due up to one period (1 s) before Redis went away waits that much longer: on
    # a loaded machine the restart alone can take ~LATE seconds.
    missing = sorted(set(expected) - set(claims))
    outage = up_at - down_at
    report(f"1 s schedule, 3 workers, {seconds} s, SIGKILL x1, Redis restart "
           f"({outage:.1f} s)", len(expected), jobs, len(missing), jobs - len(claims),
           "one job per tick")
    if outage + 1 <= LATE:
        assert missing == []
    assert all(down_at - 1 <= tick <= up_at + LATE for tick in missing)
    assert jobs == len(claims)  # one job per tick, none twice
    assert len(expected) >= seconds - 2
