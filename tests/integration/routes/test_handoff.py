"""A job handed at publish to an idle direct consumer (``routes/celery/handoff.py``), on
a real Redis: the take that finds nothing says the consumer idles, the one-by-one
publish writes the job down for it and pushes it to its inbox (never to the queue),
the consumer's next take (or its ``BRPOP``) brings it, and a consumer that stops or
starts again gives it back. The consumer's own ``BRPOP`` path runs in a real worker
in ``tests/reliability/test_direct.py``."""

from __future__ import annotations

import time
import uuid

import pytest
import redis

from dispatcher.core.job import Job, new_job_id
from dispatcher.routes.celery.direct_take import (
    give_back_held,
    read_taken,
    take_command,
    take_order,
)
from dispatcher.routes.celery.handoff import (
    Handed,
    forget_handed,
    give_back_inbox,
    idle_args,
)
from dispatcher.routes.celery.liveness import held_by
from dispatcher.routes.celery.protocol import queue_key
from dispatcher.routes.celery.taken import TakenMessage
from dispatcher.runtime.container import current
from dispatcher.store import keys
from tests.integration import sample_tasks as samples

RUNS_TTL = 600


def fresh() -> tuple[str, str]:
    """A queue and a consumer of their own (the suite shares one Redis)."""
    tag = uuid.uuid4().hex[:8]
    return f"handoff-{tag}", f"handoff-{tag}@test"


def publish(queue: str) -> Job:
    job = Job(new_job_id(), samples.echo.spec, "celery", queue, 5, {"value": {"n": 1}})
    current().celery.dispatch(job, None)
    return job


def take(client: redis.Redis, queue: str, host: str) -> list[TakenMessage]:
    """The direct consumer's take, as it sends it (it may be handed jobs)."""
    command = take_command(take_order([queue]), host, (RUNS_TTL, RUNS_TTL), time.time(), 1,
                           idle=idle_args(host, take_order([queue]), RUNS_TTL,
                                          keys.events_switch(host)))
    owed: list[str] = []
    taken = read_taken(client.execute_command(*command) or [], owed.append)
    assert owed == []
    return taken


def queued(client: redis.Redis, queue: str) -> int:
    return sum(int(client.llen(key)) for key in take_order([queue]))  # type: ignore[arg-type]


def inbox(client: redis.Redis, host: str) -> list[Handed]:
    return [Handed(entry) for entry in client.lrange(keys.inbox(host), 0, -1)]


def idles(client: redis.Redis, queue: str, host: str) -> bool:
    """Whether ``host`` idles on ``queue``: its idle key, and an entry in its idle set."""
    return bool(client.exists(keys.idle(host))) and client.zscore(
        keys.idle_set(keys.queue_list(queue)), keys.idle(host)) is not None


def test_a_job_published_to_an_idle_consumer_is_written_down_and_handed_to_it(
        client: redis.Redis) -> None:
    queue, host = fresh()
    assert take(client, queue, host) == []
    assert idles(client, queue, host)

    job = publish(queue)
    assert queued(client, queue) == 0  # never queued
    [handed] = inbox(client, host)
    message = handed.message()
    assert (message.id, message.task, message.kwargs) == (job.id, job.spec.name, job.payload)
    assert message.dispatch_delivery == [1, False]  # counted, not cancelled
    assert handed.events == 0  # its node's switch, read at the hand-off: off
    # Written down for the consumer as its own take would, held for the rescue.
    assert client.hexists(keys.KOMBU_UNACKED, handed.tag)
    assert client.zscore(keys.KOMBU_UNACKED_INDEX, handed.tag) is not None
    assert client.get(keys.marker(job.publish_id)) == b"1"
    assert client.get(keys.runs(job.id)) == b"1"
    assert client.get(keys.taken(job.id)) is None  # counted as starting at once
    assert client.smembers(keys.handed(host)) == {handed.tag.encode()}
    assert handed.tag in held_by(client, [host])
    holding = client.get(keys.holding(host))
    assert holding is not None and holding.decode().split("\n")[1:] == [handed.queue_key,
                                                                        handed.tag]
    assert not idles(client, queue, host) and not client.exists(keys.idle(host))
    # One job per time it idles: the next one is queued.
    second = publish(queue)
    assert queued(client, queue) == 1 and len(inbox(client, host)) == 1

    # The next take brings the handed job first, no longer in the handed set (the
    # consumer holds it now) and written down as taken now; then the queued one.
    before = time.time()
    [first] = take(client, queue, host)
    assert client.zscore(keys.KOMBU_UNACKED_INDEX, handed.tag) >= before  # type: ignore[operator]
    assert first.id == job.id and first.dispatch_delivery == [1, False]
    assert client.get(keys.runs(job.id)) == b"1"  # counted once
    assert not client.exists(keys.handed(host)) and not client.exists(keys.inbox(host))
    [then] = take(client, queue, host)
    assert then.id == second.id
    assert not client.exists(keys.idle(host))  # it took something: not idle


def test_no_hand_off_to_a_consumer_that_stopped_idling_nor_past_a_queued_job(
        client: redis.Redis) -> None:
    queue, host = fresh()
    take(client, queue, host)
    client.delete(keys.idle(host))  # its idle key lapsed (a consumer that died idle)
    publish(queue)
    assert queued(client, queue) == 1 and inbox(client, host) == []
    assert client.zcard(keys.idle_set(keys.queue_list(queue))) == 0  # dropped on the way

    other_queue, other = fresh()
    take(client, other_queue, other)
    client.lpush(queue_key(other_queue, 5), "older")  # an older job waits in its list
    publish(other_queue)
    assert queued(client, other_queue) == 2 and inbox(client, other) == []
    assert idles(client, other_queue, other)

    # A batch is never handed; the take that brings it says the consumer stopped idling.
    batch_queue, busy = fresh()
    take(client, batch_queue, busy)
    job = Job(new_job_id(), samples.echo.spec, "celery", batch_queue, 5, {"value": {}})
    current().celery.dispatch_many([job], None)
    assert queued(client, batch_queue) == 1 and inbox(client, busy) == []
    [taken] = take(client, batch_queue, busy)
    assert taken.id == job.id and not client.exists(keys.idle(busy))
    assert client.zcard(keys.idle_set(keys.queue_list(batch_queue))) == 0


def test_a_stopping_consumer_gives_back_what_it_was_handed_without_a_death(
        client: redis.Redis) -> None:
    queue, host = fresh()
    take(client, queue, host)
    job = publish(queue)
    [handed] = inbox(client, host)

    assert give_back_inbox(client, host) == [handed.tag]
    assert queued(client, queue) == 1
    assert not client.hexists(keys.KOMBU_UNACKED, handed.tag)
    assert not client.exists(keys.idle(host), keys.inbox(host), keys.handed(host))
    # Its count taken back: taken by another consumer, it counts no death.
    assert client.get(keys.runs(job.id)) == b"0"
    [again] = take(client, queue, f"other-{host}")
    assert again.id == job.id and again.dispatch_delivery == [1, False]


def test_a_restarted_consumer_gives_back_its_handed_job_once(client: redis.Redis) -> None:
    queue, host = fresh()
    take(client, queue, host)
    job = publish(queue)
    [handed] = inbox(client, host)

    forget_handed(client, host)  # what a consumer does as it starts again
    assert give_back_held(client, host) == [handed.tag]
    assert not client.exists(keys.inbox(host), keys.handed(host), keys.idle(host))
    assert queued(client, queue) == 1
    assert give_back_held(client, host) == []  # never twice
    [again] = take(client, queue, host)  # a death counted, as for a first job taken
    assert again.id == job.id and again.dispatch_delivery == [2, False]


def test_an_unreadable_inbox_entry_is_left_to_the_rescue(client: redis.Redis) -> None:
    """An entry this release cannot read (another release's, say) is never run or
    pushed anywhere by the stopping consumer: its job stays written down, for the rescue."""
    queue, host = fresh()
    take(client, queue, host)
    client.lpush(keys.inbox(host), "not\nan entry")
    with pytest.raises(ValueError):
        Handed("not\nan entry")
    assert give_back_inbox(client, host) == []
    assert queued(client, queue) == 0 and not client.exists(keys.inbox(host))


def test_a_handed_job_left_in_the_inbox_reads_its_cancel_mark_as_it_is_taken(
        client: redis.Redis) -> None:
    queue, host = fresh()
    take(client, queue, host)
    job = publish(queue)
    client.set(keys.cancel(job.id), "1", ex=60)  # cancelled after the hand-off
    [taken] = take(client, queue, host)
    assert taken.id == job.id and taken.dispatch_delivery == [1, True]  # never started


def test_a_handed_job_goes_back_when_the_consumers_brpop_brought_another_first(
        client: redis.Redis) -> None:
    """The consumer's BRPOP brought a queued job just before a publish handed it one:
    the write-down of the first puts the handed one back in its queue, unstarted."""
    queue, host = fresh()
    take(client, queue, host)
    first = Job(new_job_id(), samples.echo.spec, "celery", queue, 5, {"value": {}})
    current().celery.dispatch_many([first], None)  # queued (a batch is never handed)
    key = queue_key(queue, 5)
    item = client.rpop(key)  # what the consumer's BRPOP brought
    assert isinstance(item, bytes)
    handed_job = publish(queue)  # the list is empty, the consumer still idles: handed
    [handed] = inbox(client, host)

    command = take_command(take_order([queue]), host, (RUNS_TTL, RUNS_TTL), time.time(), 1,
                           brought=(item.decode(), key),
                           idle=idle_args(host, take_order([queue]), RUNS_TTL, None))
    owed: list[str] = []
    [written] = read_taken([client.execute_command(*command)[0]], owed.append)
    assert written.id == first.id and owed == []
    assert inbox(client, host) == [] and not client.exists(keys.handed(host))
    assert client.lrange(key, 0, -1) == [handed.item.encode()]  # taken next
    assert not client.hexists(keys.KOMBU_UNACKED, handed.tag)
    assert client.get(keys.runs(handed_job.id)) == b"0"  # its count taken back
    holding = client.get(keys.holding(host))
    assert holding is not None and holding.decode().split("\n")[2] == written.tag


def test_an_idle_key_of_another_format_is_passed_over(client: redis.Redis) -> None:
    """An idler that says it otherwise (another release's idle key) is never handed a
    job, and the publish still succeeds: the job is queued."""
    queue, host = fresh()
    take(client, queue, host)
    client.set(keys.idle(host), "600\nsomething else", ex=60)
    job = publish(queue)
    assert queued(client, queue) == 1 and inbox(client, host) == []
    assert client.zcard(keys.idle_set(keys.queue_list(queue))) == 0
    [taken] = take(client, queue, host)
    assert taken.id == job.id
