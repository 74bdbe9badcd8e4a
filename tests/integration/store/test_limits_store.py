"""The Redis limiter itself, against the session's Redis: leases are renewed while
held, a freed slot pushes the Celery publication that waited longest for it (or the
one refused just before it freed), and a refused job comes back at the time it was
told (spread, not all at once)."""

from __future__ import annotations

import itertools
import json
import uuid
from typing import Any, NamedTuple

import pytest
import redis

from dispatcher import DispatcherSettings, task
from dispatcher.core.job import Job
from dispatcher.core.limits import Admission, release
from dispatcher.core.spec import TaskSpec
from dispatcher.routes.celery.defer import defer
from dispatcher.routes.celery.protocol import queue_keys
from dispatcher.store import keys
from dispatcher.store.embedded import EmbeddedRedis, free_port
from dispatcher.store.limits import RedisLimits
from tests.support import wait_until


@task(name="tests.limits_store.slotted", concurrency=1)
def slotted(n: int) -> None:
    """Declared for its spec: one slot."""


@task(name="tests.limits_store.paced", rate_limit="2/m")
def paced(n: int) -> None:
    """Declared for its spec: two starts a minute."""


SETTINGS = DispatcherSettings(_env_file=None)  # type: ignore[call-arg]


def _job(spec: TaskSpec, n: int, queue: str | None = None) -> Job:
    return Job(id=f"{uuid.uuid4()}", spec=spec, route="celery", queue=queue, priority=5,
               payload={"n": n})


def _fresh(client: redis.Redis, spec: TaskSpec) -> None:
    client.delete(keys.slots(spec.name), keys.slot_waiters(spec.name), keys.rate(spec.name),
                  keys.rate_waiting(spec.name))


def test_a_held_lease_is_renewed_and_a_released_slot_is_free(
        redis_server: EmbeddedRedis) -> None:
    client = redis.Redis.from_url(redis_server.url)
    spec = slotted.spec
    _fresh(client, spec)
    limits = RedisLimits(redis.Redis.from_url(redis_server.url), lease=6)
    holder = _job(spec, 1)
    held = limits.admit(holder)
    assert held.granted and held.slot == spec.name
    first = client.zscore(keys.slots(spec.name), holder.publish_id)
    assert first is not None
    # The renewer pushes the expiry forward every third of the lease.
    wait_until(lambda: (client.zscore(keys.slots(spec.name), holder.publish_id) or 0) > first + 0.2,
               "the lease renewed")
    refused = limits.admit(_job(spec, 2))
    assert not refused.granted and refused.reason == "concurrency"
    assert 0 < refused.wait <= 6
    limits.release(holder, held)
    assert client.zcard(keys.slots(spec.name)) == 0
    assert limits.held() == 0
    second = _job(spec, 2)
    taken = limits.admit(second)
    assert taken.granted
    limits.release(second, taken)
    # With nothing left to renew, the renewer ends (a later slot starts another).
    assert limits.renewing()
    wait_until(lambda: not limits.renewing(), "the renewer ended")


def _deferred(client: redis.Redis, limits: RedisLimits, job: Job) -> None:
    """Refused, and filed back in the delay store as a worker does."""
    refused = limits.admit(job)
    assert not refused.granted and refused.reason == "concurrency"
    assert defer(client, SETTINGS, job, refused)


def _queued(client: redis.Redis, queue: str) -> list[dict[str, Any]]:
    return [json.loads(raw) for key in queue_keys(queue) for raw in client.lrange(key, 0, -1)]


class SlotTaken(NamedTuple):
    """A fresh slot key, its one slot held, and a queue of this test's own."""

    client: redis.Redis
    limits: RedisLimits
    holder: Job
    held: Admission
    queue: str


@pytest.fixture
def slot_taken(redis_server: EmbeddedRedis) -> SlotTaken:
    client = redis.Redis.from_url(redis_server.url)
    _fresh(client, slotted.spec)
    limits = RedisLimits(client, lease=30)
    holder = _job(slotted.spec, 1)
    return SlotTaken(client, limits, holder, limits.admit(holder),
                     f"tests-limits-{uuid.uuid4().hex}")


def test_a_freed_slot_pushes_the_longest_waiting_publication_at_once(
        slot_taken: SlotTaken) -> None:
    client, limits, holder, held, queue = slot_taken
    waiting = [_job(slotted.spec, n, queue) for n in (2, 3)]
    for job in waiting:
        _deferred(client, limits, job)
        assert client.zscore(keys.DELAYED, job.publish_id) is not None
    assert _queued(client, queue) == []
    limits.release(holder, held)
    pushed = _queued(client, queue)
    assert [m["headers"]["id"] for m in pushed] == [waiting[0].id]
    # A fresh delivery tag: the refused delivery's acknowledgement must not name it.
    tag = pushed[0]["properties"]["delivery_tag"]
    assert tag != waiting[0].publish_id and tag.startswith(waiting[0].publish_id + "~")
    assert client.zscore(keys.DELAYED, waiting[0].publish_id) is None
    assert client.zscore(keys.DELAYED, waiting[1].publish_id) is not None  # still waits
    client.zrem(keys.DELAYED, waiting[1].publish_id)
    client.delete(*queue_keys(queue), *(keys.marker(j.publish_id) for j in waiting))


def test_a_slot_freed_between_refusal_and_filing_queues_the_job_at_once(
        slot_taken: SlotTaken) -> None:
    client, limits, holder, held, queue = slot_taken
    late = _job(slotted.spec, 2, queue)
    refused = limits.admit(late)
    assert not refused.granted
    limits.release(holder, held)  # before the refused job is filed: no waiter to push
    assert defer(client, SETTINGS, late, refused)
    assert [m["headers"]["id"] for m in _queued(client, queue)] == [late.id]
    assert client.zscore(keys.DELAYED, late.publish_id) is None
    client.delete(*queue_keys(queue), keys.marker(late.publish_id))


def test_jobs_told_to_wait_come_back_spread_and_keep_their_time(
        redis_server: EmbeddedRedis) -> None:
    client = redis.Redis.from_url(redis_server.url)
    spec = paced.spec
    _fresh(client, spec)
    limits = RedisLimits(client, lease=10)
    first = limits.admit(_job(spec, 0))
    assert first.granted and first.at is not None
    assert limits.admit(_job(spec, 1)).granted
    late = [_job(spec, n) for n in range(2, 5)]
    told = [limits.admit(job) for job in late]
    back = [a.at + a.wait for a in told if a.at is not None]  # when each was told to return
    # The window frees when the first admission leaves it; then one every 30 s (the
    # window / the limit), on the limiter's clock.
    assert abs(back[0] - (first.at + 60)) < 1e-3
    assert [round(b - a, 3) for a, b in itertools.pairwise(back)] == [30.0, 30.0]
    again = limits.admit(late[2])  # asking again early: the same time, not a later one
    assert again.at is not None and abs(again.at + again.wait - back[2]) < 1e-3
    _fresh(client, spec)


def test_while_redis_cannot_be_asked_the_limits_hold_per_process() -> None:
    down = redis.Redis(port=free_port(), socket_connect_timeout=0.5, socket_timeout=0.5)
    limits = RedisLimits(down, lease=10)
    spec = slotted.spec
    first = _job(spec, 1)
    held = limits.admit(first)
    assert held.granted and held.local  # answered here: Redis refused the connection
    refused = limits.admit(_job(spec, 2))  # asked locally, without waiting for Redis
    assert not refused.granted and refused.local and refused.reason == "concurrency"
    limits.release(first, held)
    assert limits.admit(_job(spec, 2)).granted


def test_the_per_process_stand_in_counts_the_slots_held_from_redis() -> None:
    """``concurrency=1`` used as a mutex holds through a Redis outage: the job admitted
    by Redis still runs, so the stand-in refuses a second one."""
    with EmbeddedRedis() as server:
        limits = RedisLimits(redis.Redis.from_url(server.url, socket_timeout=2), lease=10)
        spec = slotted.spec
        holder = _job(spec, 1)
        held = limits.admit(holder)
        assert held.granted and not held.local
        server.stop()
        second = limits.admit(_job(spec, 2))
        assert second.local and not second.granted and second.reason == "concurrency"
        release(limits, holder, held)  # Redis is gone: it expires with its lease there
        third = limits.admit(_job(spec, 3))
        assert third.local and third.granted
