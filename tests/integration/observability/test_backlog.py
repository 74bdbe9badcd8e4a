"""``dispatch_backlog{queue}`` on ``/metrics``, against the suite's real Redis: jobs
waiting at several priorities plus jobs a kombu consumer holds without acknowledging
them, each counted once."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from fastapi import FastAPI
from fastapi.testclient import TestClient
from kombu import Connection
from prometheus_client.parser import text_string_to_metric_families

from dispatcher import DispatcherSettings, configure
from dispatcher.fastapi import metrics_router
from dispatcher.routes.celery import backlog
from dispatcher.routes.celery.backlog import read_queue_load
from dispatcher.routes.celery.protocol import queue_keys
from dispatcher.store import keys
from dispatcher.store.embedded import EmbeddedRedis
from tests.integration import sample_tasks as samples

#: Our priorities 9, 5 and 0 land in kombu's lists ``q``, ``q\x06\x163`` and
#: ``q\x06\x169``; kombu's own publish at its priority 6 in ``q\x06\x166``.
OUR_PRIORITIES = (9, 9, 5, 0, 0)
KOMBU_PRIORITY = 6


@pytest.fixture
def queue(redis_server: EmbeddedRedis, tmp_path: Path) -> Iterator[str]:
    """A queue of its own (no worker consumes it) as this process's default queue; its
    lists, markers and unacknowledged entries are removed afterwards."""
    name = f"backlog-{uuid.uuid4().hex[:8]}"
    configure(DispatcherSettings(  # type: ignore[call-arg]
        broker_url=redis_server.url, default_queue=name, _env_file=None,
        spool_path=str(tmp_path / "spool.sqlite3")))
    yield name
    client = redis.Redis.from_url(redis_server.url)
    tags = [json.loads(raw)["properties"]["delivery_tag"]
            for key in queue_keys(name) for raw in client.lrange(key, 0, -1)]
    held = [tag.decode() for tag, raw in client.hscan_iter(keys.KOMBU_UNACKED)
            if json.loads(raw)[2] == name]
    with client.pipeline() as pipe:
        pipe.delete(*queue_keys(name))
        for tag in [*tags, *held]:
            pipe.delete(keys.marker(tag))
            pipe.zrem(keys.INFLIGHT, tag)
        if held:
            pipe.hdel(keys.KOMBU_UNACKED, *held)
            pipe.zrem(keys.KOMBU_UNACKED_INDEX, *held)
        pipe.execute()


def scrape_gauges() -> dict[tuple[str, str], float]:
    app = FastAPI()
    app.include_router(metrics_router)
    with TestClient(app) as client:
        response = client.get("/metrics")
    assert response.status_code == 200
    return {(s.name, s.labels.get("queue", "")): s.value
            for family in text_string_to_metric_families(response.text)
            for s in family.samples}


def test_backlog_is_every_priority_list_plus_the_unacknowledged(
    redis_server: EmbeddedRedis, queue: str
) -> None:
    client = redis.Redis.from_url(redis_server.url)
    for n, priority in enumerate(OUR_PRIORITIES):
        handle = samples.echo.options(route="celery", priority=priority).dispatch({"n": n})
        assert (handle.route, handle.queue) == ("celery", queue)
    total = len(OUR_PRIORITIES) + 1
    with Connection(redis_server.url) as connection:
        channel = connection.default_channel
        producer = connection.Producer(channel)
        producer.publish({"n": -1}, exchange="", routing_key=queue, priority=KOMBU_PRIORITY,
                         serializer="json")
        lengths = [int(client.llen(key)) for key in queue_keys(queue)]
        assert lengths == [2, 1, 1, 2]  # every priority list of the queue is in use

        # A consumer takes two messages and holds them without acknowledging them:
        # kombu moves each into its ``unacked`` hash (the most urgent list first).
        held = [channel.basic_get(queue, no_ack=False) for _ in range(2)]
        assert all(message is not None for message in held)
        tags = {message.delivery_tag for message in held}
        assert all(client.hexists(keys.KOMBU_UNACKED, tag) for tag in tags)
        assert int(client.llen(queue)) == 0

        gauges = scrape_gauges()
        assert gauges[("dispatch_broker_up", "")] == 1
        assert gauges[("dispatch_queue_depth", queue)] == total - 2
        assert gauges[("dispatch_backlog", queue)] == total  # waiting + unacknowledged
        # The other queues' unacknowledged messages are not ours to count.
        load = read_queue_load(client, [queue, f"{queue}-other"])
        assert load.backlog == {queue: total, f"{queue}-other": 0}

    # Closing the connection hands the held messages back to their lists (kombu's
    # restore at shutdown): still counted once.
    assert not any(client.hexists(keys.KOMBU_UNACKED, tag) for tag in tags)
    gauges = scrape_gauges()
    assert gauges[("dispatch_queue_depth", queue)] == total
    assert gauges[("dispatch_backlog", queue)] == total


def _held_entry(client: redis.Redis, job_id: str) -> dict[str, Any] | None:
    for _tag, raw in client.hscan_iter(keys.KOMBU_UNACKED):
        message = json.loads(raw)[0]
        if message["headers"].get("id") == job_id:
            return dict(message)
    return None


def _wait_for(condition: Callable[[], Any], what: str, timeout: float = 30.0) -> Any:
    deadline = time.monotonic() + timeout
    while not (found := condition()):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)
    return found


def test_a_delayed_job_is_held_by_no_worker_until_due(broker: str) -> None:
    """A countdown waits in the delay store: not in the queue, not reserved by a worker
    (so not in the backlog), until it is due; then it runs once and leaves nothing."""
    client = redis.Redis.from_url(broker)
    queue = "samples-heavy"  # consumed by the session worker
    handle = samples.on_own_queue.options(countdown=3600).dispatch(21)
    publish_id = f"{handle.id}:1"
    assert client.zscore(keys.DELAYED, publish_id) is not None
    assert _held_entry(client, handle.id) is None
    load = read_queue_load(client, [queue])
    assert (load.depths, load.backlog) == ({queue: 0}, {queue: 0})
    client.zadd(keys.DELAYED, {publish_id: time.time()}, xx=True)  # now due
    assert handle.get(timeout=30) == 42
    assert client.zscore(keys.DELAYED, publish_id) is None
    _wait_for(lambda: read_queue_load(client, [queue]).backlog == {queue: 0},
              "the acknowledgement")


def test_jobs_held_in_a_delayed_set_are_counted_when_one_is_named(
    redis_server: EmbeddedRedis, queue: str
) -> None:
    client = redis.Redis.from_url(redis_server.url)
    samples.echo.options(route="celery").dispatch({"n": 1})
    delayed = f"{queue}:delayed"
    client.zadd(delayed, {"job-a": 1.0, "job-b": 2.0})
    try:
        load = read_queue_load(client, [queue], delayed=lambda name: f"{name}:delayed")
    finally:
        client.delete(delayed)
    assert load.depths == {queue: 1}
    assert load.backlog == {queue: 3}


class CountingRedis(redis.Redis):
    """A client that counts its HSCAN round trips."""

    scans = 0

    def hscan(self, *args: Any, **kwargs: Any) -> Any:
        self.scans += 1
        return super().hscan(*args, **kwargs)


def test_a_large_unacknowledged_hash_is_scanned_within_bounds(
    redis_server: EmbeddedRedis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Past the scan limit, the hash's exact length is split in the proportions read."""
    monkeypatch.setattr(backlog, "UNACKED_SCAN_COUNT", 50)
    spare_db = redis_server.url.rsplit("/", 1)[0] + "/9"  # no other test's messages
    exact, bounded = CountingRedis.from_url(spare_db), CountingRedis.from_url(spare_db)
    ours, other = "backlog-a", "backlog-b"
    entries = {f"tag-{i}": json.dumps([{"body": "x" * 100}, "", ours if i % 4 else other])
               for i in range(400)}
    exact.hset(keys.KOMBU_UNACKED, mapping=entries)
    try:
        whole = read_queue_load(exact, [ours, other])
        part = read_queue_load(bounded, [ours, other], scan_limit=100)
    finally:
        exact.delete(keys.KOMBU_UNACKED)
    assert whole.backlog == {ours: 300, other: 100}
    assert bounded.scans < exact.scans
    assert sum(part.backlog.values()) == pytest.approx(400, abs=2)
    assert part.backlog[ours] > part.backlog[other] > 0
