"""Taking several messages at once (``lua/take.lua`` with a most, the direct
consumer's take while its jobs are short) on a real Redis: each written down, the ones
after the first marked as held ahead, all listed in the holding key; a restart gives
back those not acknowledged; acknowledgements sent without waiting are answered by the
next take (``direct_take.Owed``)."""

from __future__ import annotations

import time
import uuid

import redis

from dispatcher.core.job import Job, new_job_id
from dispatcher.routes.celery.ahead import Ahead
from dispatcher.routes.celery.direct_take import (
    Owed,
    give_back_held,
    hand_back,
    read_taken,
    take_command,
    take_order,
)
from dispatcher.routes.celery.taken import TakenMessage
from dispatcher.runtime.container import current
from dispatcher.store import keys
from dispatcher.store.link import Link, as_text
from tests.integration import sample_tasks as samples

RUNS_TTL = 600


def queued_jobs(n: int) -> tuple[str, list[Job]]:
    """``n`` jobs published, in order, on a queue of their own."""
    queue = f"ahead-{uuid.uuid4().hex[:8]}"
    jobs = [Job(new_job_id(), samples.echo.spec, "celery", queue, 5, {"value": {"n": i}})
            for i in range(n)]
    for job in jobs:
        current().celery.publish(job)
    return queue, jobs


def take(client: redis.Redis, queue: str, host: str, most: int) -> list[TakenMessage]:
    command = take_command(take_order([queue]), host, (RUNS_TTL, RUNS_TTL), time.time(), most)
    replies = client.execute_command(*command)
    owed: list[str] = []
    taken = read_taken(replies or [], owed.append)
    assert owed == []  # nothing refused
    return taken


def queue_length(client: redis.Redis, queue: str) -> int:
    return sum(int(client.llen(key)) for key in take_order([queue]))  # type: ignore[arg-type]


def test_a_take_brings_up_to_its_most_and_marks_all_but_the_first_as_held_ahead(
        client: redis.Redis) -> None:
    queue, jobs = queued_jobs(5)
    host = f"ahead-{uuid.uuid4().hex[:6]}@test"
    taken = take(client, queue, host, most=3)
    assert [m.id for m in taken] == [job.id for job in jobs[:3]]  # in publication order
    assert queue_length(client, queue) == 2
    for message in taken:
        assert client.hexists(keys.KOMBU_UNACKED, message.tag)
        assert client.get(keys.runs(message.id)) == b"1"
    assert client.get(keys.taken(taken[0].id)) is None  # starts at once
    assert [client.get(keys.taken(m.id)) for m in taken[1:]] == [b"1", b"1"]
    taken_at, *holding = as_text(client.get(keys.holding(host))).split("\n")
    assert holding[1::2] == [m.tag for m in taken]
    assert set(holding[::2]) == {taken[0].queue_key}
    assert float(taken_at) == client.zscore(keys.KOMBU_UNACKED_INDEX, taken[0].tag)
    # The rest, and then nothing: a take of an empty queue says so.
    assert [m.id for m in take(client, queue, host, most=8)] == [j.id for j in jobs[3:]]
    assert take(client, queue, host, most=8) == []


def test_a_consumer_started_again_gives_back_what_it_held_and_did_not_acknowledge(
        client: redis.Redis) -> None:
    queue, jobs = queued_jobs(4)
    host = f"ahead-{uuid.uuid4().hex[:6]}@test"
    first, done, *ahead = take(client, queue, host, most=4)
    owed = Owed(None, 1.0)
    owed.owe(first.tag)
    owed.send(Link(client))  # the first one ran and was acknowledged
    assert not client.hexists(keys.KOMBU_UNACKED, first.tag)
    current().execution.record(jobs[1], "SUCCESS")  # finished, not acknowledged yet
    current().records.flush()

    back = give_back_held(client, host)
    assert back == [m.tag for m in ahead]
    assert queue_length(client, queue) == 2  # the finished one is not queued again
    assert client.get(keys.holding(host)) is None
    for message in (done, *ahead):
        assert not client.hexists(keys.KOMBU_UNACKED, message.tag)
    for message in ahead:
        assert client.get(keys.taken(message.id)) == b"1"  # the next delivery takes over
    assert give_back_held(client, host) == []  # once only


def test_a_message_given_back_and_taken_by_another_consumer_stays_with_it(
        client: redis.Redis) -> None:
    queue, _ = queued_jobs(2)
    host, other = (f"ahead-{uuid.uuid4().hex[:6]}@test" for _ in range(2))
    first, second = take(client, queue, host, most=2)
    hand_back(client, second, first=True)  # a long job: what was held behind it goes back
    time.sleep(0.002)  # (the clock moves on: the other take has a time of its own)
    (again,) = take(client, queue, other, most=1)
    assert again.tag == second.tag  # byte for byte the same entry, taken at another time

    assert give_back_held(client, host) == [first.tag]  # not the other consumer's
    assert client.hexists(keys.KOMBU_UNACKED, second.tag)
    assert queue_length(client, queue) == 1


def test_replies_not_waited_for_are_read_before_the_next_send(client: redis.Redis) -> None:
    queue, _ = queued_jobs(3)
    host = f"ahead-{uuid.uuid4().hex[:6]}@test"
    first, second, third = take(client, queue, host, most=3)
    link, owed = Link(client), Owed(None, 1.0)
    owed.owe(first.tag)
    owed.send_later(link, ("DEL", keys.taken(second.id)))
    assert owed.tags == [first.tag]  # acknowledged with its records, by the next send
    client.set("ahead-not-a-number", "x")
    owed.send_later(link, ("INCR", "ahead-not-a-number"))  # an error reply, read and dropped
    owed.send(link, ("PING",))  # a take, in the consumer: sent, then its reply read
    assert link.read() in (b"PONG", "PONG", True)
    assert (owed.tags, link.unread) == ([], 0)
    assert not client.hexists(keys.KOMBU_UNACKED, first.tag)
    assert client.get(keys.taken(second.id)) is None

    owed.send_later(link, ("DEL", keys.taken(third.id)))
    link.drop()  # lost with its reply unread: the next send does not wait for it
    owed.send(link, ("PING",))
    assert link.read() in (b"PONG", "PONG", True)
    link.close()


def test_jobs_are_taken_ahead_only_while_they_are_short() -> None:
    ahead = Ahead(short_below=0.05)
    assert ahead.most() == 1  # not timed yet
    assert ahead.timed(0.001) is False
    assert ahead.most() == 8
    message = TakenMessage("queue", "{}", "tag-1", "id-1", "task", {}, None, None)
    ahead.hold([message])
    assert ahead.tags() == ["tag-1"]  # in the heartbeat's list
    assert ahead.timed(0.01) is False  # short: keep what is held
    assert ahead.timed(0.5) is True  # a long job: give back what waited behind it
    assert ahead.most() == 1  # the average is long now
    assert ahead.release() == [message]
    assert (ahead.next(), ahead.tags()) == (None, [])
    never = Ahead(short_below=0)  # 0: never ahead
    never.timed(0.0)
    assert never.most() == 1
