"""``put_back.lua`` on a real Redis: a message the worker took off its queue and could
not write down goes back to the head of its queue only where it is nowhere else."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator

import pytest
import redis

from dispatcher import DispatcherSettings, configure
from dispatcher.core.job import Job, new_job_id
from dispatcher.routes.celery.delivery import delivery_commands
from dispatcher.routes.celery.putback import Untaken, put_back
from dispatcher.runtime.container import current
from dispatcher.store import keys
from dispatcher.store.embedded import EmbeddedRedis
from tests.integration import sample_tasks as samples


@pytest.fixture
def client(redis_server: EmbeddedRedis) -> Iterator[redis.Redis]:
    configure(DispatcherSettings(broker_url=redis_server.url, _env_file=None))  # type: ignore[call-arg]
    connection = redis.Redis.from_url(redis_server.url)
    yield connection
    connection.close()


def taken(client: redis.Redis, *, ours: bool = True) -> tuple[Job, Untaken]:
    """A job published on a queue of its own and popped as kombu's BRPOP pops it."""
    queue = f"putback-{uuid.uuid4().hex[:8]}"
    job = Job(new_job_id(), samples.echo.spec, "celery", queue, 5, {"value": {"n": 1}})
    current().celery.publish(job)
    (key,) = client.scan_iter(match=f"{queue}*")
    item = client.rpop(key)
    assert isinstance(item, bytes)
    tag = json.loads(item)["properties"]["delivery_tag"]
    return job, Untaken(key.decode(), item.decode(), tag, keys.KOMBU_UNACKED,
                        keys.KOMBU_UNACKED_INDEX, time.time(),
                        job.publish_id if ours else None, ours)


def queued(client: redis.Redis, message: Untaken) -> list[bytes]:
    return client.lrange(message.queue_key, 0, -1)  # type: ignore[return-value]


def test_a_message_written_down_nowhere_goes_to_the_head_of_its_queue(
        client: redis.Redis) -> None:
    _, message = taken(client)
    client.lpush(message.queue_key, "a later message")
    assert put_back(client, message) is True
    assert client.lindex(message.queue_key, -1) == message.item.encode()  # taken next
    assert len(queued(client, message)) == 2
    _, foreign = taken(client, ours=False)
    assert put_back(client, foreign) is True
    assert queued(client, foreign) == [foreign.item.encode()]


def test_a_message_still_queued_is_not_doubled(client: redis.Redis) -> None:
    """The pop never reached this server (a failover undid it)."""
    _, message = taken(client)
    client.rpush(message.queue_key, message.item)
    assert put_back(client, message) is False
    assert queued(client, message) == [message.item.encode()]


def test_a_write_down_that_landed_after_all_is_taken_back(client: redis.Redis) -> None:
    """The transaction ran but its reply was lost: the entry this worker wrote is
    removed, the publication watched again and the run uncounted."""
    job, message = taken(client)
    client.incr(keys.runs(job.id))  # an earlier delivery that died
    with client.pipeline() as pipe:
        pipe.zadd(message.unacked_index_key, {message.tag: message.written_at})
        pipe.hset(message.unacked_key, message.tag, "[]")
        for command in delivery_commands(job.publish_id, 60, held=True):
            pipe.execute_command(*command)
        pipe.execute()
    assert client.get(keys.runs(job.id)) == b"2"
    assert client.get(keys.taken(job.id)) == b"1"
    assert client.get(keys.marker(job.publish_id)) == b"1"
    assert put_back(client, message) is True
    assert queued(client, message) == [message.item.encode()]
    assert not client.hexists(message.unacked_key, message.tag)
    assert client.zscore(message.unacked_index_key, message.tag) is None
    assert client.get(keys.runs(job.id)) == b"1"
    assert client.get(keys.taken(job.id)) is None  # the next delivery counts afresh
    held = f"{message.queue_key}\n{message.item}".encode()
    assert client.get(keys.marker(job.publish_id)) == held  # the sweeper's to re-queue
    assert client.zscore(keys.INFLIGHT, job.publish_id) is not None


def test_a_message_another_worker_holds_or_started_stays_there(client: redis.Redis) -> None:
    """The sweeper re-queued it meanwhile and another worker took it: that worker's
    entry is left alone, and so is a job started since."""
    job, message = taken(client)
    client.zadd(message.unacked_index_key, {message.tag: message.written_at + 30})
    client.hset(message.unacked_key, message.tag, "[]")
    assert put_back(client, message) is False
    assert client.hexists(message.unacked_key, message.tag)
    assert queued(client, message) == []
    client.zrem(message.unacked_index_key, message.tag)
    client.hdel(message.unacked_key, message.tag)
    client.set(keys.marker(job.publish_id), "1", xx=True, keepttl=True)  # acked since
    assert put_back(client, message) is False
    assert queued(client, message) == []
