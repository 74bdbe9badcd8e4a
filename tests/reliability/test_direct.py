"""The direct consumer (``DISPATCH_WORKER_CONSUMER=direct``) against a real Redis and a
real ``dispatcher worker``: the same records, retries and hand-backs as Celery's
consumer, messages from a plain Celery client, and a warm shutdown. The fault
scenarios (kills, Redis restarts, poison and hostile messages) run on it in
``test_faults``."""

from __future__ import annotations

import signal
import threading
from datetime import UTC, datetime, timedelta

import pytest
import redis
from celery import Celery

from dispatcher.routes.celery.liveness import live_workers
from dispatcher.store import keys
from tests.support import wait_until

from . import tasks
from .conftest import Cluster


def _ledger_time(cluster: Cluster, event: str, job: str) -> float:
    for line in cluster.ledger.read_text().splitlines():
        parts = line.split()
        if parts[:2] == [event, job]:
            return float(parts[3])
    raise AssertionError(f"no {event} {job} in the ledger")


@pytest.mark.parametrize("cluster", ["direct"], indirect=True)
def test_direct_consumers_run_jobs_as_celerys_consumer_does(cluster: Cluster) -> None:
    worker = cluster.start_worker(2)
    client = redis.Redis.from_url(cluster.redis.url)
    wait_until(lambda: {n.split("@")[0] for n in live_workers(client)} >= {
        "dispatcher", "dispatcher-direct1", "dispatcher-direct2"},
        "the Celery process and both consumers beating", 60)

    # A retry: the failed attempt recorded, the job published again, the second one run.
    handle = tasks.fails_once.dispatch("retry-1")
    assert handle.get(timeout=60) == 2
    record = handle.record()
    assert record is not None
    assert (record["state"], record["attempt"]) == ("SUCCESS", 2)
    assert [h["state"] for h in record["history"]][-1] == "SUCCESS"
    assert "RETRY" in [h["state"] for h in record["history"]]

    # A plain Celery client's messages: positional arguments, and a countdown that
    # must not run before it is due.
    plain = Celery(broker=cluster.redis.url)
    plain.conf.task_serializer = "json"
    plain.send_task("rel.canary", args=["plain-1"])
    due = datetime.now(UTC) + timedelta(seconds=2)
    plain.send_task("rel.canary", args=["eta-1"], eta=due)
    assert set(cluster.wait_done({"plain-1", "eta-1"}, timeout=60)) >= {"plain-1", "eta-1"}
    assert _ledger_time(cluster, "done", "eta-1") >= due.timestamp() - 0.01

    # A task no worker has, within the grace: handed back, never run, never failed.
    unknown = plain.send_task("rel.elsewhere", args=["x"])
    worker.wait_for_output("does not have task rel.elsewhere", timeout=30)
    assert client.get(keys.record(unknown.id)) is None
    assert client.hget(keys.DEAD_LETTERS, unknown.id) is None
    waiting = b"".join(client.lrange("celery", 0, -1)) + b"".join(
        client.hvals(keys.KOMBU_UNACKED))
    assert unknown.id.encode() in waiting
    plain.close()


@pytest.mark.parametrize("cluster", ["direct"], indirect=True)
def test_direct_consumers_finish_their_jobs_on_sigterm(cluster: Cluster) -> None:
    worker = cluster.start_worker(2)
    client = redis.Redis.from_url(cluster.redis.url)
    tasks.single.dispatch("term-1", 1500)
    wait_until(lambda: tasks.seen("start", "term-1"), "the job started", 60)
    worker.stop(signal.SIGTERM, timeout=60)
    assert worker.popen.returncode == 0
    assert tasks.seen("done", "term-1")  # finished, not cut short
    # Acknowledged, and every consumer said it stopped (no heartbeat left to expire).
    assert client.hlen(keys.KOMBU_UNACKED) == 0
    assert not [n for n in live_workers(client) if "-direct" in n]
    assert not client.keys("dispatch:worker:*:holding")
    # Nothing of the job runs again once the worker is back.
    cluster.start_worker(1)
    canary = tasks.canary.dispatch("after-term")
    canary.get(timeout=60)
    assert cluster.events("done")["term-1"] == 1


@pytest.mark.parametrize("cluster", ["direct"], indirect=True)
def test_direct_consumers_answer_celerys_tools(cluster: Cluster) -> None:
    """Task events (what Flower shows) once switched on by remote control, as Flower
    does, and ``inspect active`` / ``active_queues`` listing a job a direct consumer
    runs and the queue it consumes."""
    cluster.start_worker(2)
    plain = Celery(broker=cluster.redis.url)
    client = redis.Redis.from_url(cluster.redis.url)
    events: list[dict[str, object]] = []
    connection = plain.connection_for_read()
    receiver = plain.events.Receiver(connection, handlers={"*": events.append})
    capture = threading.Thread(target=receiver.capture,
                               kwargs={"limit": None, "timeout": None}, daemon=True)
    capture.start()
    try:
        wait_until(lambda: bool(plain.control.enable_events(reply=True, timeout=1)),
                   "the worker's Celery process answering enable_events", 60)
        # Each consumer follows its node's switch at its next heartbeat.
        probes: list[str] = []

        def probe_seen() -> bool:
            probes.append(tasks.canary.dispatch(f"probe-{len(probes)}").id)
            return any(e.get("type") == "task-succeeded" and e.get("uuid") in probes
                       for e in list(events))

        wait_until(probe_seen, "task events from the direct consumers", 60, every=0.5)
        ok, failing = tasks.canary.dispatch("evented"), tasks.fails_once.dispatch("evented-f")
        failing.get(timeout=60)

        def kinds(task_id: str) -> list[str]:
            return [str(e["type"]) for e in list(events) if e.get("uuid") == task_id]

        wait_until(lambda: "task-succeeded" in kinds(ok.id)
                   and kinds(failing.id).count("task-succeeded") == 1,
                   "the jobs' events", 60)
        assert kinds(ok.id) == ["task-received", "task-started", "task-succeeded"]
        assert kinds(failing.id) == ["task-received", "task-started", "task-retried",
                                     "task-received", "task-started", "task-succeeded"]
        mine = [e for e in list(events) if e.get("uuid") == ok.id]
        assert all("-direct" in str(e["hostname"]) for e in mine), mine
        retried = next(e for e in events if e.get("uuid") == failing.id
                       and e["type"] == "task-retried")
        assert "first attempt fails" in str(retried["traceback"])

        # inspect active: the Celery process answers for its consumers.
        running = tasks.single.dispatch("inspected", 3000)
        wait_until(lambda: tasks.seen("start", "inspected"), "the job started", 60)
        replies = plain.control.inspect(timeout=3).active() or {}
        listed = [job for jobs in replies.values() for job in jobs]
        job = next((j for j in listed if j["id"] == running.id), None)
        assert job is not None, replies
        assert job["name"] == "rel.single" and "-direct" in job["hostname"]
        assert job["time_start"] is not None
        queues = plain.control.inspect(timeout=3).active_queues() or {}
        assert "celery" in {q["name"] for qs in queues.values() for q in qs}, queues
        running.get(timeout=60)
        assert client.exists("dispatch:worker:dispatcher@" + job["hostname"].split("@")[1]
                             + ":events")
    finally:
        receiver.should_stop = True
        capture.join(timeout=10)
        connection.release()
        plain.close()


def _idle_consumers(client: redis.Redis) -> list[str]:
    """The direct consumers idling now (each may be handed a job at publish)."""
    return [host for host in live_workers(client)
            if "-direct" in host and client.exists(keys.idle(host))]


@pytest.mark.parametrize("cluster", ["direct"], indirect=True)
def test_an_idle_consumer_is_handed_its_job_at_publish(cluster: Cluster) -> None:
    """A job published while a consumer idles is written down for it and handed to it:
    never queued, held (for the rescue) until the consumer's next take."""
    cluster.start_worker(2)
    client = redis.Redis.from_url(cluster.redis.url)
    wait_until(lambda: len(_idle_consumers(client)) == 2, "both consumers idling", 60)
    consumers = _idle_consumers(client)
    handle = tasks.gated.dispatch("handed-1")
    wait_until(lambda: tasks.seen("start", "handed-1"), "the job started", 60)
    tag = f"{handle.id}:1"
    [holder] = [host for host in consumers if client.sismember(keys.handed(host), tag)]
    tasks.gate("handed-1").touch()
    assert handle.get(timeout=60) is None
    assert cluster.wait_done({"handed-1"}, timeout=60)["handed-1"] == 1
    wait_until(lambda: not client.exists(keys.handed(holder)), "the handed set emptied "
               "by the consumer's next take", 60)
    assert not client.hexists(keys.KOMBU_UNACKED, tag)  # acknowledged


@pytest.mark.parametrize("cluster", ["direct"], indirect=True)
def test_jobs_handed_to_consumers_killed_while_idle_run_once(cluster: Cluster) -> None:
    """Killed while idle, the consumers' idle keys live on for a few seconds: jobs
    published meanwhile are handed to dead consumers. Started again, the consumers give
    them back at once (their holding keys); each runs exactly once."""
    worker = cluster.start_worker(2)
    client = redis.Redis.from_url(cluster.redis.url)
    wait_until(lambda: len(_idle_consumers(client)) == 2, "both consumers idling", 60)
    consumers = _idle_consumers(client)
    cluster.kill_worker(worker)
    jobs: list[str] = []
    while any(client.exists(keys.idle(host)) for host in consumers):  # each takes one
        jobs.append(f"idle-kill-{len(jobs)}")
        tasks.canary.dispatch(jobs[-1])
    # Written down for them (a dying consumer's BRPOP may still empty its inbox).
    handed = sum(int(client.scard(keys.handed(host))) for host in consumers)  # type: ignore[misc]
    assert handed >= 1, "no job handed before the dead consumers' idle keys lapsed"
    cluster.start_worker(2)
    done = cluster.wait_done(set(jobs), timeout=120)
    assert set(jobs) <= set(done), cluster.diagnose(set(jobs) - set(done))
    wait_until(lambda: not client.hlen(keys.KOMBU_UNACKED), "every job acknowledged", 60)
    done = cluster.events()
    assert {job: done[job] for job in jobs} == {job: 1 for job in jobs}
