"""Nothing accepted is lost: worker kills, Redis restarts and pauses, poison jobs,
API shutdown and hostile messages, each against real processes."""

from __future__ import annotations

import base64
import json
import os
import pickle
import random
import signal
import time
import uuid

import httpx
import pytest
import redis

from dispatcher import TaskHandle, get_settings
from dispatcher.routes.celery.protocol import PRIORITY_STEPS, QUEUE_SEP
from dispatcher.store.keys import DEAD_LETTERS as HASH
from dispatcher.store.keys import KOMBU_UNACKED_INDEX as UNACKED_INDEX
from tests.support import wait_until

from . import tasks
from .conftest import FULL, Cluster, on, report, scale


def _ids(prefix: str, n: int) -> list[str]:
    return [f"{prefix}-{i}-{uuid.uuid4().hex[:6]}" for i in range(n)]


# Celery's consumer at default timeouts waits out a heartbeat (about 30 s): that row runs
# at full scale (`make reliability`); `make test` keeps the default consumer at defaults.
@pytest.mark.parametrize("cluster", ["celery-short", "defaults"]
                         + (["celery-defaults"] if FULL else []), indirect=True)
def test_worker_sigkill_loses_nothing(cluster: Cluster) -> None:
    """The whole process group is killed (an OOM kill, a lost container) and a new
    worker started; at default settings the dead worker's jobs come back at once (the
    direct consumers, started again) or through its expired heartbeat (Celery's
    consumer), not after the hour-long visibility timeout."""
    n, concurrency, kills = scale(1000, 60), 2, 2
    low, high = (100, 300) if FULL or not cluster.short else (30, 90)
    client = redis.Redis.from_url(cluster.redis.url)
    worker = cluster.start_worker(concurrency)
    jobs = _ids("kill", n)
    for job in jobs:
        tasks.work.dispatch(job, random.randint(low, high))
    recoveries = []
    for k in range(kills):
        target = n * (k + 1) // (kills + 1)
        while sum(1 for j in jobs if j in cluster.events()) < target:
            time.sleep(0.1)
        cluster.kill_worker(worker)
        killed, killed_at = time.monotonic(), time.time()
        held = [tag for tag, at in client.zrange(UNACKED_INDEX, 0, -1, withscores=True)
                if at < killed_at]  # the dead worker's: taken, never acknowledged
        # Direct consumers started again under the same node name give back at once
        # what they held (a host that never comes back: test_fleet).
        worker = cluster.start_worker(concurrency)
        if not cluster.short and held:  # back without waiting for the visibility timeout
            wait_until(lambda held=held, at=killed_at: all(  # type: ignore[misc]
                (client.zscore(UNACKED_INDEX, tag) or at + 1) >= at for tag in held),
                       "the dead worker's jobs back in their queue", scale(600, 180))
            recoveries.append(time.monotonic() - killed)
            worker.wait_for_output("from a dead worker" if cluster.consumer == "celery"
                                   else "are back in their queues")
    done = cluster.wait_done(set(jobs), timeout=scale(600, 180))
    completed = sum(1 for j in jobs if j in done)
    duplicates = sum(done[j] - 1 for j in jobs if done[j] > 1)
    settings = "short timeouts" if cluster.short else "defaults"
    back = ", back after " + ", ".join(f"{r:.0f}s" for r in recoveries) if recoveries else ""
    report(on(cluster, f"worker SIGKILL x2 ({settings})"), n, completed, n - completed, duplicates,
           f"dup limit {2 * concurrency * kills}{back}")
    assert completed == n, cluster.diagnose(set(jobs) - set(done))
    assert duplicates <= 2 * concurrency * kills


@pytest.mark.parametrize("cluster", ["celery-short", "short"], indirect=True)
def test_redis_restarts_while_consuming(cluster: Cluster) -> None:
    n = scale(2000, 200)
    jobs = _ids("restart", n)
    # Ready first, then the jobs: direct consumers run jobs before the node's Celery
    # process (whose " ready." line start_worker waits for) has started, and at small
    # scale they could finish most of them before the first outage.
    cluster.start_worker(2)
    for job in jobs:
        tasks.work.dispatch(job, 5)
    resumes, outage = [], scale(5, 2)
    for _ in range(2):
        while sum(1 for j in jobs if j in cluster.events()) < len(resumes) * n // 3 + n // 6:
            time.sleep(0.05)
        cluster.redis.shutdown_nosave()
        time.sleep(outage)  # the outage itself: Redis stays away this long
        cluster.redis.start()
        restarted, before = time.monotonic(), len(cluster.events())
        while len(cluster.events()) == before:
            assert time.monotonic() - restarted < 30, "consumption did not resume"
            time.sleep(0.1)
        resumes.append(time.monotonic() - restarted)
    done = cluster.wait_done(set(jobs), timeout=scale(300, 90))
    completed = sum(1 for j in jobs if j in done)
    duplicates = sum(done[j] - 1 for j in jobs if done[j] > 1)
    report(on(cluster, f"Redis stopped {outage} s x2"), n, completed, n - completed, duplicates,
           "resumed after " + ", ".join(f"{r:.1f}s" for r in resumes))
    assert completed == n, cluster.diagnose(set(jobs) - set(done))
    assert max(resumes) <= 30


def _queued_ids(client: redis.Redis, queue: str = "celery") -> list[str]:
    ids = []
    for step in PRIORITY_STEPS:
        key = queue if step == 0 else f"{queue}{QUEUE_SEP}{step}"
        for raw in client.lrange(key, 0, -1):
            ids.append(json.loads(raw)["headers"]["id"])
    return ids


def test_dispatch_during_broker_outage_is_bounded_and_lossless(cluster: Cluster) -> None:
    n = scale(200, 40)
    cluster.start_api()
    jobs = _ids("outage", n)
    latencies, accepted, task_ids = [], 0, []
    with httpx.Client(timeout=10) as client:
        for phase, job in enumerate(jobs):
            if phase == 0:
                cluster.redis.shutdown_nosave()          # refused connections
            if phase == n // 2:
                cluster.redis.start()
                while not client.get(f"{cluster.api_url}/healthz").json()["broker"]["reachable"]:
                    time.sleep(0.1)                      # the API sees it back ...
                cluster.redis.pause()                    # ... then it hangs, unannounced
            started = time.monotonic()
            response = client.post(f"{cluster.api_url}/tasks/rel.work",
                                   json={"job": job, "ms": 1})
            latencies.append(time.monotonic() - started)
            if response.status_code == 202:
                accepted += 1
                task_ids.append(response.json()["task_id"])
            time.sleep(max(0.0, 0.05 - latencies[-1]))  # 20 requests/s
        health_started = time.monotonic()
        health = client.get(f"{cluster.api_url}/healthz").json()
        health_ms = (time.monotonic() - health_started) * 1000
        assert health["broker"]["reachable"] is False
        assert health["broker"]["spool_depth"] > 0
        cluster.redis.resume()
        recovered = time.monotonic()
        while client.get(f"{cluster.api_url}/healthz").json()["broker"]["spool_depth"]:
            assert time.monotonic() - recovered < 30, "spool not drained"
            time.sleep(0.2)
        drained = time.monotonic() - recovered
    queued = _queued_ids(redis.Redis.from_url(cluster.redis.url))
    in_queue_dups = len(queued) - len(set(queued))
    cluster.start_worker(2)
    done = cluster.wait_done(set(jobs), timeout=scale(120, 60))
    completed = sum(1 for j in jobs if j in done)
    report("API dispatch, Redis down/paused", n, completed, n - completed, in_queue_dups,
           f"max latency {max(latencies):.2f}s, spool drained {drained:.1f}s, "
           f"healthz {health_ms:.0f}ms")
    assert accepted == n
    assert max(latencies) <= 2.5
    assert sorted(queued) == sorted(task_ids)
    assert in_queue_dups == 0
    assert completed == n


@pytest.mark.parametrize("cluster", ["celery-short", "short"], indirect=True)
def test_poison_jobs_are_dead_lettered_and_crashers_rerun(cluster: Cluster) -> None:
    n = scale(50, 8)
    cluster.start_worker(2)
    jobs = _ids("crash", n)
    handles = [tasks.crash_once.dispatch(job) for job in jobs]
    poison = tasks.always_crash.dispatch("poison")
    done = cluster.wait_done(set(jobs), timeout=scale(240, 90))
    client = redis.Redis.from_url(cluster.redis.url)
    deadline = time.monotonic() + 60
    while client.hget(HASH, poison.id) is None:
        assert time.monotonic() < deadline, "poison job never dead-lettered"
        time.sleep(0.2)
    dead = json.loads(client.hget(HASH, poison.id))  # type: ignore[arg-type]
    canary = tasks.canary.dispatch("after-poison")
    cluster.wait_done({"after-poison"}, timeout=30)
    attempts = [h.record()["attempt"] for h in handles]  # type: ignore[index]
    completed = sum(1 for j in jobs if j in done)
    report(on(cluster, "self-SIGKILL jobs + 1 poison"), n + 1, completed, n - completed,
           sum(done[j] - 1 for j in jobs if done[j] > 1),
           f"poison runs {cluster.events('start')['poison']}, dead-lettered")
    assert completed == n
    assert set(attempts) == {1}  # a death is not a failed attempt
    assert cluster.events("start")["poison"] == get_settings().max_crashes
    assert (dead["reason"], dead["task_name"]) == ("crashed", "rel.always_crash")
    assert TaskHandle(canary.id, "rel.canary", "celery").get(timeout=10) is None


def test_api_sigterm_hands_inline_jobs_over(cluster: Cluster) -> None:
    n, seconds = scale(50, 12), (5.0 if FULL else 2.0)
    cluster.start_worker(4)
    api = cluster.start_api(DISPATCH_SHUTDOWN_GRACE="2")
    jobs = _ids("sigterm", n)
    with httpx.Client() as client:
        for job in jobs:
            body = client.post(f"{cluster.api_url}/tasks/rel.inline_slow",
                               json={"job": job, "seconds": seconds}).json()
            assert body["route"] == "inline"
    api.stop(signal.SIGTERM, timeout=30)
    done = cluster.wait_done(set(jobs), timeout=scale(240, 60))
    completed = sum(1 for j in jobs if j in done)
    report("API SIGTERM, inline jobs, grace 2 s", n, completed, n - completed,
           sum(done[j] - 1 for j in jobs if done[j] > 1), "handed over to Celery")
    assert completed == n, cluster.diagnose(set(jobs) - set(done))


@pytest.mark.parametrize("cluster", ["celery-short", "short"], indirect=True)
def test_hostile_messages_are_refused_without_running(cluster: Cluster, tmp_path) -> None:  # type: ignore[no-untyped-def]
    # No grace for unknown tasks: refused at once, not handed back for another worker.
    worker = cluster.start_worker(2, DISPATCH_UNKNOWN_TASK_GRACE="0")
    marker = tmp_path / "pwned"

    class Exploit:
        def __reduce__(self):  # type: ignore[no-untyped-def]
            return (os.system, (f"touch {marker}",))

    def envelope(task: str, body: bytes, content_type: str) -> str:
        task_id = str(uuid.uuid4())
        return json.dumps({
            "body": base64.b64encode(body).decode(), "content-encoding": "binary",
            "content-type": content_type,
            "headers": {"lang": "py", "task": task, "id": task_id, "retries": 0,
                        "root_id": task_id, "parent_id": None, "group": None},
            "properties": {"correlation_id": task_id, "delivery_mode": 2, "priority": 0,
                           "delivery_info": {"exchange": "", "routing_key": "celery"},
                           "body_encoding": "base64", "delivery_tag": str(uuid.uuid4())},
        })

    client = redis.Redis.from_url(cluster.redis.url)
    client.lpush("celery", envelope("rel.canary", pickle.dumps(Exploit()),
                                    "application/x-python-serialize"))
    client.lpush("celery", envelope("rel.canary", b"{not json", "application/json"))
    client.lpush("celery", envelope("os.system", json.dumps(
        [[f"touch {marker}"], {}, {}]).encode(), "application/json"))
    canary = tasks.canary.dispatch("after-hostile")
    assert cluster.wait_done({"after-hostile"}, timeout=30)["after-hostile"] == 1
    TaskHandle(canary.id, "rel.canary", "celery").get(timeout=10)

    def refused() -> list[str]:
        return [line for line in worker.output().splitlines()
                if '"level": "ERROR"' in line and "refused" in line]

    deadline = time.monotonic() + 30  # the log lines may trail the canary's result
    while len(refused()) < 3 and time.monotonic() < deadline:
        time.sleep(0.05)
    refusals = refused()
    pickle_errors = [e for e in refusals if "pickle" in e]
    decode_errors = [e for e in refusals if "cannot be decoded" in e and "pickle" not in e]
    unregistered = [e for e in refusals if "no worker has" in e]
    executions = sum(cluster.events().values()) - 1
    report(on(cluster, "hostile messages (pickle, bad JSON, unknown)"), 3, 0, 0, executions,
           f"ERROR logs: pickle {len(pickle_errors)}, decode {len(decode_errors)}, "
           f"unregistered {len(unregistered)}; worker alive")
    assert not marker.exists()
    assert executions == 0
    assert worker.popen.poll() is None
    assert len(refusals) == 3, refusals  # one ERROR line per refused message
    assert (len(pickle_errors), len(decode_errors), len(unregistered)) == (1, 1, 1)
