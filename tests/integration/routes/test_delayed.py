"""Delayed jobs on the Celery route wait in the dispatcher's delay store, not in a
worker, and are published once when due (the session worker's relay publishes them)."""

from __future__ import annotations

import statistics
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import redis
from fastapi import FastAPI
from fastapi.testclient import TestClient

from dispatcher import DispatcherSettings, configure
from dispatcher.fastapi import install
from dispatcher.routes.celery.backlog import read_queue_load
from dispatcher.routes.celery.protocol import queue_keys
from dispatcher.runtime.container import current
from dispatcher.store import keys
from dispatcher.store.embedded import EmbeddedRedis
from dispatcher.store.link import as_text
from tests.integration import sample_tasks as samples
from tests.support import wait_until


def test_an_eta_job_is_pending_with_its_eta_until_due_then_runs_once(broker: str) -> None:
    client = redis.Redis.from_url(broker)
    eta = datetime.now(UTC) + timedelta(hours=1)
    handle = samples.on_own_queue.options(eta=eta).dispatch(5)
    publish_id = f"{handle.id}:1"
    record = handle.record()
    assert record is not None and record["state"] == "PENDING"
    assert record["eta"] == eta.timestamp()
    assert client.zscore(keys.DELAYED, publish_id) == eta.timestamp()
    load = read_queue_load(client, ["samples-heavy"])
    assert load.depths == {"samples-heavy": 0} and load.delayed >= 1  # dispatch_delayed_jobs
    client.zadd(keys.DELAYED, {publish_id: time.time()}, xx=True)  # the hour has passed
    assert handle.get(timeout=30) == 10
    assert client.zscore(keys.DELAYED, publish_id) is None


def test_a_thousand_jobs_due_in_the_same_second_are_each_published_once(
    broker: str,
) -> None:
    """Published by the worker's relay into a queue nobody consumes, so each job's
    publication time stays readable (the in-flight index scores it by that time)."""
    client = redis.Redis.from_url(broker)
    queue = "delayed-probe"
    due = datetime.now(UTC) + timedelta(seconds=2)
    handles = samples.echo.options(route="celery", queue=queue, eta=due).dispatch_many(
        [({"n": n},) for n in range(1000)])
    lists = queue_keys(queue)
    try:
        wait_until(lambda: sum(client.llen(key) for key in lists) >= 1000,
                   "the relay to publish every due job")
        queued = [as_text(raw) for key in lists for raw in client.lrange(key, 0, -1)]
        ids = sorted(h.id for h in handles)
        assert sorted(m.split('"id": "')[1].split('"')[0] for m in queued) == ids
        scores = client.zmscore(keys.INFLIGHT, [f"{i}:1" for i in ids])
        lateness = sorted(float(s) - due.timestamp() for s in scores if s is not None)
        assert len(lateness) == 1000 and lateness[0] >= 0  # never early
        assert client.zmscore(keys.DELAYED, [f"{i}:1" for i in ids]) == [None] * 1000
        p99 = lateness[int(len(lateness) * 0.99) - 1]
        print(f"\n1,000 jobs due in the same second: published late by p50 "
              f"{statistics.median(lateness) * 1000:.0f} ms, p99 {p99 * 1000:.0f} ms, "
              f"max {lateness[-1] * 1000:.0f} ms")
    finally:  # nothing left for the worker's sweeper to find
        client.delete(*lists)
        client.zrem(keys.INFLIGHT, *[f"{h.id}:1" for h in handles])


def test_an_inline_delayed_job_moves_to_the_delay_store_at_shutdown(broker: str) -> None:
    """The shutdown does not wait out its grace for a job due later: it hands the job
    to the Celery route at once, where it waits in the delay store for its due time."""
    client = redis.Redis.from_url(broker)
    handle = samples.echo.options(countdown=7200).dispatch({"n": 7})
    assert handle.route == "inline"
    due = handle.record()["eta"]  # type: ignore[index]
    executor = current().inline.current_executor()
    assert executor is not None
    drained = threading.Thread(target=executor.drain, args=(3600,), daemon=True)
    drained.start()
    wait_until(lambda: not drained.is_alive(), "the drain, without waiting out its grace")
    publish_id = f"{handle.id}:1"
    assert client.zscore(keys.DELAYED, publish_id) == due
    client.zadd(keys.DELAYED, {publish_id: time.time()}, xx=True)  # now due
    assert handle.get(timeout=30) == {"n": 7}  # run by the worker


def test_an_api_process_relays_due_jobs_when_configured(tmp_path: Path) -> None:
    """No worker on this Redis: only the API's own relay can publish the due job."""
    with EmbeddedRedis() as server:
        configure(DispatcherSettings(  # type: ignore[call-arg]
            broker_url=server.url, relay_delayed_in_api=True, _env_file=None,
            spool_path=str(tmp_path / "spool.sqlite3")))
        client = redis.Redis.from_url(server.url)
        with TestClient(install(FastAPI())):
            handle = samples.on_own_queue.options(countdown=3600).dispatch(1)
            publish_id = f"{handle.id}:1"
            client.zadd(keys.DELAYED, {publish_id: time.time()}, xx=True)  # now due
            wait_until(lambda: any(client.llen(k) for k in queue_keys("samples-heavy")),
                       "the API's relay to publish the due job")
        assert client.zscore(keys.DELAYED, publish_id) is None
