"""A direct consumer's records written with the acknowledgement of their job's message,
in one script call, against a real Redis: both land, or neither (and nothing is lost)."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest
import redis

from dispatcher import task
from dispatcher.core.job import Job, new_job_id
from dispatcher.core.record import make_record
from dispatcher.routes.celery.direct_take import Owed
from dispatcher.store import keys
from dispatcher.store.link import Link
from dispatcher.store.records import RedisRecordStore

pytestmark = pytest.mark.integration


@task(name="it.records.acked")
def acked(n: int) -> None: ...


def _written_down(client: redis.Redis, tag: str) -> None:
    """A taken message, as kombu's transport notes it."""
    client.hset(keys.KOMBU_UNACKED, tag, json.dumps([{"body": "..."}, "", "celery"]))
    client.zadd(keys.KOMBU_UNACKED_INDEX, {tag: time.time()})


def _finished(store: RedisRecordStore) -> Job:
    job = Job(id=new_job_id(), spec=acked.spec, route="celery", queue="celery", priority=5,
              payload={"n": 1}, dispatched_at=time.time())
    store.save(make_record(job, "STARTED"))
    store.save(make_record(job, "SUCCESS"))
    return job


def _acknowledged(client: redis.Redis, tag: str) -> bool:
    return (client.hget(keys.KOMBU_UNACKED, tag) is None
            and client.zscore(keys.KOMBU_UNACKED_INDEX, tag) is None)


def test_records_and_acknowledgement_land_in_one_call(redis_server: Any) -> None:
    client = redis.Redis.from_url(redis_server.url)
    store = RedisRecordStore(client, ttl=60, interval=10.0)  # no write of its own
    job = _finished(store)
    _written_down(client, "tag-1")
    owed = Owed(store, timeout=5.0)
    owed.prepare(client)  # as a consumer does at start
    owed.owe("tag-1")
    link = Link(client)
    owed.send(link, ("PING",))  # as a take rides behind it
    assert link.read() in (b"PONG", "PONG", True)
    assert owed.tags == []
    record = json.loads(client.get(keys.RECORD_PREFIX + job.id))
    assert record["status"] == "SUCCESS"
    assert [json.loads(e)["state"] for e in client.lrange(keys.HISTORY_PREFIX + job.id,
                                                          0, -1)] == ["STARTED", "SUCCESS"]
    assert _acknowledged(client, "tag-1")
    assert store.flush()  # the write lock was given back


def test_a_script_redis_forgot_leaves_both_owed_then_both_land(redis_server: Any) -> None:
    """After a Redis restart (here SCRIPT FLUSH) the first call is refused: the record
    stays in the buffer (still read by this process), the message unacknowledged; the
    next send loads the script and writes both."""
    client = redis.Redis.from_url(redis_server.url)
    store = RedisRecordStore(client, ttl=60, interval=10.0)
    job = _finished(store)
    _written_down(client, "tag-2")
    owed = Owed(store, timeout=5.0)
    owed.owe("tag-2")
    link = Link(client)
    client.script_flush()
    owed.send(link)
    assert owed.tags == ["tag-2"]
    assert client.get(keys.RECORD_PREFIX + job.id) is None
    assert not _acknowledged(client, "tag-2")
    assert store.load(job.id)["status"] == "SUCCESS"  # type: ignore[index]
    owed.send(link)
    assert owed.tags == []
    assert json.loads(client.get(keys.RECORD_PREFIX + job.id))["status"] == "SUCCESS"
    assert _acknowledged(client, "tag-2")


def test_without_a_records_store_only_the_acknowledgements_are_sent(redis_server: Any
                                                                      ) -> None:
    """Records kept apart from the broker were flushed before: each owed message is
    acknowledged as kombu does, older ones too."""
    client = redis.Redis.from_url(redis_server.url)
    for tag in ("tag-3", "tag-4"):
        _written_down(client, tag)
    owed = Owed(None, timeout=5.0)
    assert not owed.with_records
    owed.owe("tag-3")
    owed.owe("tag-4")
    owed.send(Link(client))
    assert owed.tags == []
    assert _acknowledged(client, "tag-3") and _acknowledged(client, "tag-4")


def test_a_command_that_cannot_be_built_gives_everything_back(
        redis_server: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """Nothing sent: the records stay in the buffer and its write lock is free."""
    import dispatcher.store.records as records

    client = redis.Redis.from_url(redis_server.url)
    store = RedisRecordStore(client, ttl=60, interval=10.0)
    job = _finished(store)

    def refuse(*_: object, **__: object) -> tuple[object, ...]:
        raise ValueError("a field holds a NUL character")

    monkeypatch.setattr(records, "records_command", refuse)
    with pytest.raises(ValueError):
        store.write_with_ack("tag-5", timeout=1.0)
    monkeypatch.undo()
    assert store.load(job.id)["status"] == "SUCCESS"  # type: ignore[index]
    assert store.flush(timeout=1.0)
    assert json.loads(client.get(keys.RECORD_PREFIX + job.id))["status"] == "SUCCESS"
