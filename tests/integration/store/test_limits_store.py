"""The Redis limiter itself, against the session's Redis: leases are renewed while
held, a freed slot pushes the Celery publication that waited longest for it, and a
refused job comes back at the time it was told (spread, not all at once)."""

from __future__ import annotations

import itertools
import uuid

import redis

from dispatcher import task
from dispatcher.core.job import Job
from dispatcher.core.spec import TaskSpec
from dispatcher.store import keys
from dispatcher.store.embedded import EmbeddedRedis
from dispatcher.store.limits import RedisLimits
from tests.support import wait_until


@task(name="tests.limits_store.slotted", concurrency=1)
def slotted(n: int) -> None:
    """Declared for its spec: one slot."""


@task(name="tests.limits_store.paced", rate_limit="2/m")
def paced(n: int) -> None:
    """Declared for its spec: two starts a minute."""


def _job(spec: TaskSpec, n: int) -> Job:
    return Job(id=f"{uuid.uuid4()}", spec=spec, route="celery", queue=None, priority=5,
               payload={"n": n})


def _fresh(client: redis.Redis, spec: TaskSpec) -> None:
    client.delete(keys.slots(spec.name), keys.slot_waiters(spec.name), keys.rate(spec.name),
                  keys.rate_waiting(spec.name))


def test_a_held_lease_is_renewed_and_a_released_slot_is_free(
        redis_server: EmbeddedRedis) -> None:
    client = redis.Redis.from_url(redis_server.url)
    spec = slotted.spec
    _fresh(client, spec)
    limits = RedisLimits(redis.Redis.from_url(redis_server.url), lease=1.5)
    holder = _job(spec, 1)
    held = limits.admit(holder)
    assert held.granted and held.slot == spec.name
    first = client.zscore(keys.slots(spec.name), holder.id)
    assert first is not None
    # The renewer pushes the expiry forward every third of the lease.
    wait_until(lambda: (client.zscore(keys.slots(spec.name), holder.id) or 0) > first + 0.2,
               "the lease renewed")
    refused = limits.admit(_job(spec, 2))
    assert not refused.granted and refused.reason == "concurrency"
    assert 0 < refused.wait <= 1.5
    limits.release(holder, held)
    assert client.zcard(keys.slots(spec.name)) == 0
    assert limits.held() == 0
    assert limits.admit(_job(spec, 2)).granted


def test_a_freed_slot_pushes_the_longest_waiting_publication_at_once(
        redis_server: EmbeddedRedis) -> None:
    client = redis.Redis.from_url(redis_server.url)
    spec = slotted.spec
    _fresh(client, spec)
    limits = RedisLimits(client, lease=30)
    holder = _job(spec, 1)
    held = limits.admit(holder)
    queue = f"tests-limits-{uuid.uuid4().hex}"
    waiting = [_job(spec, n) for n in (2, 3)]
    for job in waiting:  # refused, and filed in the delay store as a worker does
        assert not limits.admit(job, waiter=job.publish_id).granted
        client.set(keys.marker(job.publish_id), f"{queue}\nmessage-{job.id}")
        client.zadd(keys.DELAYED, {job.publish_id: 9e9})
    limits.release(holder, held)
    assert client.lrange(queue, 0, -1) == [f"message-{waiting[0].id}".encode()]
    assert client.zscore(keys.DELAYED, waiting[0].publish_id) is None
    assert client.zscore(keys.DELAYED, waiting[1].publish_id) == 9e9  # still waiting
    client.zrem(keys.DELAYED, waiting[1].publish_id)
    client.delete(queue, *(keys.marker(j.publish_id) for j in waiting))


def test_jobs_told_to_wait_come_back_spread_and_keep_their_time(
        redis_server: EmbeddedRedis) -> None:
    client = redis.Redis.from_url(redis_server.url)
    spec = paced.spec
    _fresh(client, spec)
    limits = RedisLimits(client, lease=10)
    assert all(limits.admit(_job(spec, n)).granted for n in range(2))
    late = [_job(spec, n) for n in range(2, 5)]
    waits = [limits.admit(job).wait for job in late]
    # The window frees in about a minute; then one every 30 s (the window / the limit).
    assert 59 < waits[0] <= 60
    assert [round(b - a) for a, b in itertools.pairwise(waits)] == [30, 30]
    again = limits.admit(late[2])  # asking again early: the same time, not a later one
    assert waits[2] - 1.0 < again.wait <= waits[2]
    _fresh(client, spec)
