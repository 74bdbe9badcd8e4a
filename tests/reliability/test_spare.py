"""A worker holds jobs ahead while its jobs are short: Celery's consumer one beyond its
free pool processes (``routes/celery/spare.py``), a direct consumer those its take
brought after the first (``routes/celery/ahead.py``). A job held and never started is
not counted as a death when the worker dies; the job it was running is."""

from __future__ import annotations

import json
import os
import signal
import uuid
from collections.abc import Callable

import pytest
import redis

from dispatcher.routes.celery.direct_take import take_order
from dispatcher.runtime.handle import TaskHandle
from dispatcher.store import keys
from tests.support import Process, wait_until

from . import tasks
from .conftest import Cluster


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


def _direct_worker(cluster: Cluster) -> tuple[redis.Redis, Process, str]:
    """A Redis client, one direct consumer whose every job counts as short (it takes
    jobs ahead from its second take on), and a tag for this test's job names."""
    worker = cluster.start_worker(1, DISPATCH_WORKER_SPARE_BELOW="600")
    return redis.Redis.from_url(cluster.redis.url), worker, uuid.uuid4().hex[:6]


def _queued_behind_a_gate(tag: str, *later: Callable[[], TaskHandle]) -> list[TaskHandle]:
    """A gated job running, ``later`` dispatched behind it, then the gate opened: the
    consumer's next take finds them all queued (its jobs count as short)."""
    tasks.gated.dispatch(f"first-{tag}")
    wait_until(lambda: tasks.seen("start", f"first-{tag}"), "the first job running")
    handles = [dispatch() for dispatch in later]
    tasks.gate(f"first-{tag}").touch()
    return handles


def _running_with_held(client: redis.Redis, tag: str, n: int) -> tuple[TaskHandle,
                                                                       list[TaskHandle]]:
    """Gated job ``gated-<tag>`` running, with ``n`` jobs taken with it and held ahead."""
    running, *held = _queued_behind_a_gate(
        tag, lambda: tasks.gated.dispatch(f"gated-{tag}"),
        *(lambda i=i: tasks.work.dispatch(f"held-{i}-{tag}", 0) for i in range(n)))
    wait_until(lambda: tasks.seen("start", f"gated-{tag}"), "the gated job running")
    assert [client.get(keys.taken(h.id)) for h in held] == [b"1"] * n  # taken with it
    assert client.get(keys.taken(running.id)) is None  # started at once
    return running, held


@pytest.mark.parametrize("cluster", ["direct"], indirect=True)
def test_jobs_a_killed_direct_consumer_held_ahead_get_no_death(cluster: Cluster) -> None:
    client, worker, tag = _direct_worker(cluster)
    running, held = _running_with_held(client, tag, 3)

    cluster.kill_worker(worker)
    cluster.start_worker(1)
    tasks.gate(f"gated-{tag}").touch()
    jobs = {f"gated-{tag}", *(f"held-{i}-{tag}" for i in range(3))}
    assert jobs <= set(cluster.wait_done(jobs, timeout=120))
    assert [client.get(keys.runs(h.id)) for h in held] == [b"1"] * 3  # never started
    assert client.get(keys.runs(running.id)) == b"2"  # died running: one death


@pytest.mark.parametrize("cluster", ["direct"], indirect=True)
def test_a_job_started_from_ahead_that_kills_its_consumer_is_counted(
        cluster: Cluster) -> None:
    client, _, tag = _direct_worker(cluster)
    _, crasher = _queued_behind_a_gate(
        tag, lambda: tasks.work.dispatch(f"before-{tag}", 0),
        lambda: tasks.crash_once.dispatch(f"crash-{tag}"))
    assert f"crash-{tag}" in cluster.wait_done({f"crash-{tag}"}, timeout=120)
    assert cluster.events("start")[f"crash-{tag}"] == 1  # started once, then crashed
    assert client.get(keys.runs(crasher.id)) == b"2"  # that death counted
    assert crasher.record()["attempt"] == 1  # type: ignore[index]


@pytest.mark.parametrize("cluster", ["direct"], indirect=True)
def test_a_direct_consumer_stopping_gives_back_what_it_held_ahead(cluster: Cluster) -> None:
    client, worker, tag = _direct_worker(cluster)
    _, held = _running_with_held(client, tag, 2)

    os.kill(worker.pid, signal.SIGTERM)  # a warm stop: the running job finishes
    tasks.gate(f"gated-{tag}").touch()
    worker.popen.wait(timeout=60)
    assert not any(tasks.seen("start", f"held-{i}-{tag}") for i in range(2))
    assert {h.id for h in held} <= {json.loads(m)["headers"]["id"]
                                    for key in take_order([held[0].queue or "celery"])
                                    for m in client.lrange(key, 0, -1)}  # back in the queue
    cluster.start_worker(1)
    jobs = {f"held-{i}-{tag}" for i in range(2)}
    assert jobs <= set(cluster.wait_done(jobs, timeout=120))
    assert [client.get(keys.runs(h.id)) for h in held] == [b"1"] * 2  # no death


@pytest.mark.parametrize("cluster", ["direct"], indirect=True)
def test_a_job_cancelled_while_held_ahead_does_not_start(cluster: Cluster) -> None:
    client, _, tag = _direct_worker(cluster)
    _, (held,) = _running_with_held(client, tag, 1)
    assert held.cancel() is True  # taken by a worker: it will not start, or is told
    tasks.gate(f"gated-{tag}").touch()
    wait_until(lambda: (held.record() or {}).get("state") == "REVOKED", "held job revoked")
    assert f"gated-{tag}" in cluster.wait_done({f"gated-{tag}"}, timeout=60)
    assert not tasks.seen("done", f"held-0-{tag}")


@pytest.mark.parametrize("cluster", ["direct"], indirect=True)
def test_a_job_taken_as_held_that_starts_first_is_counted(cluster: Cluster) -> None:
    # The take's first message cannot be read (refused), so the one marked as held
    # behind it starts first: its taken mark must go, or its death would not count.
    client, _, tag = _direct_worker(cluster)
    first_list = take_order(["celery"])[0]
    _, crasher = _queued_behind_a_gate(
        tag, lambda: client.lpush(first_list, "not a task message"),  # type: ignore[arg-type, return-value]
        lambda: tasks.crash_once.dispatch(f"crash-{tag}"))
    assert f"crash-{tag}" in cluster.wait_done({f"crash-{tag}"}, timeout=120)
    assert client.get(keys.runs(crasher.id)) == b"2"  # its death counted
