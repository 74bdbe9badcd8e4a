"""Pipelined publication against a real Redis: batches confirmed in order, the script
loaded on first use, and a broker that stops answering mid-``dispatch_many`` loses and
duplicates nothing (unconfirmed batches go to the spool; the markers skip re-sends)."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from dispatcher import DispatcherSettings, configure, task
from dispatcher.routes.celery import route as celery_route
from dispatcher.routes.celery.protocol import queue_key
from dispatcher.routes.celery.publisher import Publisher
from dispatcher.runtime.container import current
from dispatcher.store.embedded import EmbeddedRedis, free_port


@task(name="it.stream.job", weight=9, queue="stream")
def stream_job(n: int) -> None:  # never consumed here: the tests read the queue
    raise AssertionError("must not run")


@pytest.fixture
def own_redis() -> Iterator[EmbeddedRedis]:
    """A Redis of this test's own, so pausing it disturbs no other test."""
    with EmbeddedRedis() as server:
        yield server


def _items(prefix: str, count: int) -> list[tuple[str, str, str, str | None, None]]:
    key = queue_key("stream", 5)
    return [(f"{prefix}-{i}:1", key, json.dumps({"n": i, "p": prefix}), None, None)
            for i in range(count)]


def _queued(client: redis.Redis) -> list[Any]:
    return [json.loads(m) for m in reversed(client.lrange(queue_key("stream", 5), 0, -1))]


def test_stream_confirms_batches_in_order_and_resends_are_skipped(
    own_redis: EmbeddedRedis,
) -> None:
    client = redis.Redis.from_url(own_redis.url)
    publisher = Publisher(client, 60, 60)
    batches = [_items(f"b{b}", 50) for b in range(6)]
    client.script_flush()  # first use on this Redis: the stream loads the script itself
    stream = publisher.stream()
    confirmed = []
    try:
        for tag, batch in enumerate(batches):
            stream.send(tag, batch)
            if len(stream) > 2:
                confirmed.append(stream.receive())
        while len(stream):
            confirmed.append(stream.receive())
    finally:
        stream.close()
    assert confirmed == [(tag, 50) for tag in range(6)]
    assert _queued(client) == [json.loads(m) for b in batches for _, _, m, _, _ in b]
    assert publisher.publish(batches[2] + _items("late", 3)) == 3  # only the new ones
    assert len(_queued(client)) == 303


def test_stream_error_leaves_the_unconfirmed_batches_to_the_caller(
    own_redis: EmbeddedRedis,
) -> None:
    client = redis.Redis.from_url(own_redis.url, socket_timeout=0.5)
    publisher = Publisher(client, 60, 60)
    publisher.publish(_items("warm", 1))
    stream = publisher.stream()
    stream.send("first", _items("x", 10))
    assert stream.receive() == ("first", 10)
    own_redis.pause()
    try:
        stream.send("second", _items("y", 10))
        stream.send("third", _items("z", 10))
        with pytest.raises((redis.RedisError, OSError)):
            stream.receive()
        assert stream.abandon() == ["second", "third"]
        assert len(stream) == 0
    finally:
        own_redis.resume()
        stream.close()
    # Re-sending what was not confirmed is safe: whatever Redis ran late is skipped.
    publisher.publish(_items("y", 10) + _items("z", 10))
    ids = [m["p"] + str(m["n"]) for m in _queued(client)]
    assert sorted(ids) == sorted(["warm0", *(f"{p}{i}" for p in "xyz" for i in range(10))])


def test_a_batch_that_cannot_be_sent_is_not_confirmed() -> None:
    dead = redis.Redis.from_url(f"redis://127.0.0.1:{free_port()}/0", socket_timeout=0.5)
    stream = Publisher(dead, 60, 60).stream()
    with pytest.raises(redis.ConnectionError):
        stream.send("only", _items("dead", 3))
    assert stream.abandon() == ["only"]
    stream.close()


def test_broker_stalling_mid_dispatch_many_spools_the_rest_exactly_once(
    own_redis: EmbeddedRedis, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    configure(DispatcherSettings(  # type: ignore[call-arg]
        broker_url=own_redis.url, publish_timeout=0.5, spool_path=str(tmp_path / "spool.db"),
        _env_file=None))
    route = current().celery
    real_preparer = celery_route.preparer

    def stall_after_first_batch(*args: Any) -> Callable[[int, int], Any]:
        prepare = real_preparer(*args)

        def prepare_then_stall(start: int, stop: int) -> Any:
            # Batch 0 is confirmed by now, batch 1 sent and not yet confirmed.
            if start == 2 * celery_route.PUBLISH_BATCH:
                own_redis.pause()
            return prepare(start, stop)

        return prepare_then_stall

    monkeypatch.setattr(celery_route, "preparer", stall_after_first_batch)
    spooled: list[str] = []
    records: set[str | None] = set()
    real_put = route.monitor.spool.put
    monkeypatch.setattr(route.monitor.spool, "put", lambda job: (
        spooled.append(job.job_id), records.add(job.record and json.loads(job.record)["status"]),
        real_put(job))[2])
    total = celery_route.PUBLISH_BATCH * 4
    started = time.monotonic()
    try:
        handles = stream_job.dispatch_many([(n,) for n in range(total)])
    finally:
        stalled_for = time.monotonic() - started
        own_redis.resume()
    assert [h.route for h in handles] == ["celery"] * total
    assert stalled_for < 10  # bounded by the publish timeout, not by the outage
    # Batches 2 and 3 were sent to a stopped Redis; batch 1 may have landed just before.
    assert len(spooled) in (2 * celery_route.PUBLISH_BATCH, 3 * celery_route.PUBLISH_BATCH)
    # Spooled with their PENDING records: a release that leaves none to the take may
    # relay the spool.
    assert records == {"PENDING"}
    monitor = route.monitor
    deadline = time.monotonic() + 30
    while monitor.spool.depth() or not monitor.healthy:
        assert time.monotonic() < deadline, monitor.status()
        time.sleep(0.1)
    client = redis.Redis.from_url(own_redis.url)
    queued = [m["headers"]["id"] for m in _queued(client)]
    assert sorted(queued) == sorted(h.id for h in handles)  # each exactly once


def test_broker_found_down_while_a_batch_is_in_flight_loses_nothing(
    own_redis: EmbeddedRedis, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Another thread marks the broker down after batch 0 was sent and before its answer
    was read: batch 0 still gets its answer, the rest go to the spool, and each job
    lands in the queue exactly once."""
    configure(DispatcherSettings(  # type: ignore[call-arg]
        broker_url=own_redis.url, spool_path=str(tmp_path / "spool.db"), _env_file=None))
    route = current().celery
    real_preparer = celery_route.preparer

    def down_after_first_send(*args: Any) -> Callable[[int, int], Any]:
        prepare = real_preparer(*args)

        def prepare_then_mark_down(start: int, stop: int) -> Any:
            if start == celery_route.PUBLISH_BATCH:  # batch 0 sent, its answer unread
                route.monitor.mark_down(RuntimeError("another thread saw an error"))
            return prepare(start, stop)

        return prepare_then_mark_down

    monkeypatch.setattr(celery_route, "preparer", down_after_first_send)
    total = celery_route.PUBLISH_BATCH * 2
    handles = stream_job.dispatch_many([(n,) for n in range(total)])
    assert [h.route for h in handles] == ["celery"] * total
    monitor = route.monitor
    deadline = time.monotonic() + 30
    while monitor.spool.depth() or not monitor.healthy:
        assert time.monotonic() < deadline, monitor.status()
        time.sleep(0.1)
    queued = [m["headers"]["id"] for m in _queued(redis.Redis.from_url(own_redis.url))]
    assert sorted(queued) == sorted(h.id for h in handles)


def test_dispatch_many_leaves_each_jobs_pending_record_to_the_take(
    own_redis: EmbeddedRedis, tmp_path: Path
) -> None:
    """A batch's publish writes no record (one write fewer per job, in Redis, which sets
    the batch's pace): readers tell each job's PENDING record from its publish marker
    until a worker's take writes it. Both are the record a publish would have written."""
    from dispatcher.core.job import Job
    from dispatcher.core.record import make_record
    from dispatcher.routes.celery.direct_take import take_command, take_order
    from dispatcher.store.keys import RECORD_PREFIX as KEY_PREFIX
    from dispatcher.store.scripts import TAKE

    configure(DispatcherSettings(  # type: ignore[call-arg]
        broker_url=own_redis.url, spool_path=str(tmp_path / "spool.db"), _env_file=None))
    handles = stream_job.dispatch_many([(n,) for n in range(celery_route.PUBLISH_BATCH + 3)])
    ids = [h.id for h in handles]
    client = redis.Redis.from_url(own_redis.url, decode_responses=True)
    assert client.mget([KEY_PREFIX + i for i in ids]) == [None] * len(ids)
    records = current().records.load_many(ids)
    first = records[0]
    assert first is not None
    job = Job(ids[0], stream_job.spec, "celery", "stream", first["priority"], {"n": 0}, 1,
              None, first["dispatched_at"])
    assert first == make_record(job, "PENDING")
    assert [r and r["task_id"] for r in records] == ids
    assert {json.dumps({**r, "task_id": None}, sort_keys=True) for r in records if r} \
        == {json.dumps({**first, "task_id": None}, sort_keys=True)}  # differ by id alone
    assert current().records.load(ids[-1]) == {**first, "task_id": ids[-1]}

    # A worker's take writes each taken job's record, the same; the others still wait.
    take = take_command(take_order(["stream"]), "it-take@host", (0, 600), time.time(), 8)
    client.script_load(TAKE.source)
    taken = client.execute_command(*take)
    assert len(taken) == 8
    stored = [json.loads(raw) for raw in client.mget([KEY_PREFIX + i for i in ids[:8]])]
    assert stored == records[:8]
    assert 0 < client.ttl(KEY_PREFIX + ids[0]) <= 600
    assert client.get(KEY_PREFIX + ids[8]) is None
    assert current().records.load_many(ids) == records


