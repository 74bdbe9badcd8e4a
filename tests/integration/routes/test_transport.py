"""The worker's transport (``routes.celery.transport``) on a real Redis: kombu's
unacknowledged-message bookkeeping, and ours folded into the same transaction."""

from __future__ import annotations

import contextlib
import json
import threading
import uuid
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

import pytest
import redis
from celery import Celery

from dispatcher import DispatcherSettings, configure
from dispatcher.core.job import Job, new_job_id
from dispatcher.routes.celery.app import create_celery_app
from dispatcher.routes.celery.delivery import DELIVERY_HEADER, uncount
from dispatcher.routes.celery.protocol import HEADER
from dispatcher.routes.celery.putback import PUT_BACKS, UnsentAcks, Untaken
from dispatcher.routes.celery.transport import DeliveryQoS, transport_for
from dispatcher.runtime.container import current
from dispatcher.store import keys
from dispatcher.store.embedded import EmbeddedRedis
from tests.integration import sample_tasks as samples
from tests.support import wait_until


@pytest.fixture
def queue(redis_server: EmbeddedRedis) -> Iterator[str]:
    """A queue of this test's own (no worker consumes it), on the suite's Redis."""
    configure(DispatcherSettings(broker_url=redis_server.url, _env_file=None))  # type: ignore[call-arg]
    yield f"transport-{uuid.uuid4().hex[:8]}"


def take(app: Celery, queue: str, connection: Any = None) -> tuple[Any, Any]:
    """Take one message from ``queue`` as a worker does (on ``connection``, or a new
    one); returns it and its channel."""
    connection = connection or app.connection_for_read()
    channel = connection.default_channel
    taken: list[Any] = []
    channel.basic_consume(queue, False, taken.append, f"test-{len(channel._consumers)}")
    while not taken:
        connection.drain_events(timeout=10)
    channel.basic_cancel(f"test-{len(channel._consumers) - 1}")
    return taken[0], channel


def written_down(client: redis.Redis, queue: str) -> list[Any]:
    """kombu's unacknowledged entries of ``queue``'s messages (the suite's worker beside
    this test may hold messages of its own queues, so the hash is not empty)."""
    entries = [json.loads(raw) for raw in client.hvals(keys.KOMBU_UNACKED)]
    return [entry for entry in entries if entry[2] == queue]


def waiting_on_brpop(client: redis.Redis, channel: Any) -> bool:
    """Whether ``channel`` is blocked on kombu's ``BRPOP`` (made before another thread
    asks: kombu's poller must not see a channel made meanwhile)."""
    polling = getattr(channel.client.connection, "_sock", None)
    if polling is None:
        return False
    host, port = polling.getsockname()[:2]
    return any(e["addr"] == f"{host}:{port}" and e["cmd"] == "brpop"
               for e in client.client_list())


def publish(queue: str, job_id: str | None = None) -> Job:
    job = Job(job_id or new_job_id(), samples.echo.spec, "celery", queue, 5,
              {"value": {"n": 1}})
    current().celery.publish(job)
    return job


def test_a_taken_job_is_counted_in_kombus_transaction(queue: str) -> None:
    app = create_celery_app(current().settings)
    client = redis.Redis.from_url(current().settings.broker_url or "")
    job = publish(queue)
    assert client.zscore(keys.INFLIGHT, job.publish_id) is not None
    message, channel = take(app, queue)
    assert isinstance(channel.qos, DeliveryQoS)
    assert channel.qos._link is None  # taken and written down in one step (lua/take.lua)
    # Counted, marked started, not cancelled: the pool process needs no round trip.
    assert message.headers[DELIVERY_HEADER] == [1, False]
    assert client.get(keys.runs(job.id)) == b"1"
    assert client.get(keys.marker(job.publish_id)) == b"1"
    assert client.zscore(keys.INFLIGHT, job.publish_id) is None
    # kombu's own bookkeeping, as kombu writes it: the message without our header.
    tag = message.delivery_tag
    stored = json.loads(client.hget(keys.KOMBU_UNACKED, tag) or b"null")
    assert stored[0]["headers"]["id"] == job.id and stored[2] == queue
    assert DELIVERY_HEADER not in stored[0]["headers"]
    assert written_down(client, queue) == [stored]
    assert client.zscore(keys.KOMBU_UNACKED_INDEX, tag) is not None
    message.ack()  # sent, its reply read later
    wait_until(lambda: client.hget(keys.KOMBU_UNACKED, tag) is None
               and client.zscore(keys.KOMBU_UNACKED_INDEX, tag) is None, "the ack")
    app.close()


def test_a_connection_lost_between_jobs_is_replaced(queue: str) -> None:
    """Redis restarted (or dropped the connection) since the last job, replies of acks
    still unread on it: the next delivery is written down on a new connection."""
    app = create_celery_app(current().settings)
    client = redis.Redis.from_url(current().settings.broker_url or "")
    connection = app.connection_for_read()
    publish(queue)
    first, _ = take(app, queue, connection)
    first.ack()
    # The transport's connection is among those whose last command was EXEC.
    killed = [entry["id"] for entry in client.client_list() if entry["cmd"] == "exec"]
    assert killed
    for found in killed:
        client.client_kill_filter(_id=found)
    job = publish(queue)
    second, _ = take(app, queue, connection)
    assert second.headers["id"] == job.id and second.headers[DELIVERY_HEADER] == [1, False]
    assert client.hget(keys.KOMBU_UNACKED, second.delivery_tag) is not None
    second.ack()
    wait_until(lambda: client.hget(keys.KOMBU_UNACKED, second.delivery_tag) is None, "the ack")
    app.close()


def test_a_redelivery_counts_once_started_and_sees_the_cancel_mark(queue: str) -> None:
    """A delivery is counted as it is taken and marked taken until a pool process
    accepts it: one that never started (its worker stopped or died holding it) gives
    its count over to the next delivery, one that started counts as a death."""
    app = create_celery_app(current().settings)
    client = redis.Redis.from_url(current().settings.broker_url or "")
    job = publish(queue)
    message, _ = take(app, queue)
    assert client.get(keys.taken(job.id)) == b"1"
    message.reject(requeue=True)  # back to its queue unstarted, as kombu restores it
    again, channel = take(app, queue)
    assert again.headers["id"] == job.id
    assert again.headers[DELIVERY_HEADER] == [1, False]  # its count taken over: no death
    channel.qos.started(again.delivery_tag, job.id)  # a pool process accepted it
    wait_until(lambda: client.get(keys.taken(job.id)) is None, "the taken mark cleared")
    again.reject(requeue=True)  # as after its process died
    client.set(keys.cancel(job.id), "1")
    third, _ = take(app, queue)
    assert third.headers[DELIVERY_HEADER] == [2, True]
    # Handed back for another worker (an unknown task): the delivery is not a run.
    uncount(client, job.id, third)
    assert client.get(keys.runs(job.id)) == b"1" and client.get(keys.taken(job.id)) is None
    third.ack()
    app.close()


def test_a_sender_cannot_set_the_count(queue: str) -> None:
    """The header is ours: one a message arrives with is replaced, or dropped for a
    message that is not ours to count."""
    app = create_celery_app(current().settings)
    publisher = Celery("plain", broker=current().settings.broker_url)
    publisher.conf.update(task_serializer="json", accept_content=["json"])
    publisher.send_task("samples.echo", kwargs={"value": 1}, queue=queue,
                        headers={DELIVERY_HEADER: [0, False]})
    message, _ = take(app, queue)
    assert HEADER not in message.headers and DELIVERY_HEADER not in message.headers
    message.ack()
    job_id = new_job_id()
    client = redis.Redis.from_url(current().settings.broker_url or "")
    client.set(keys.runs(job_id), 5)
    publish(queue, job_id)
    ours, _ = take(app, queue)
    assert ours.headers[DELIVERY_HEADER] == [6, False]
    ours.ack()
    publisher.close()
    app.close()


@pytest.mark.parametrize(("url", "ours"), [
    ("redis://127.0.0.1:6379/0", True),
    ("sentinel://127.0.0.1:26379", True),
    ("rediss://127.0.0.1:6380/0", False),
    ("unix:///tmp/redis.sock", False),
])
def test_the_transport_is_ours_where_kombu_picks_by_url_alone(url: str, ours: bool) -> None:
    assert (transport_for(url) is not None) is ours


def test_a_message_that_comes_while_the_worker_waits_is_written_down_too(queue: str) -> None:
    """An idle worker blocks on kombu's BRPOP; what it gets is written down with our
    bookkeeping in kombu's second round trip, as when it takes from a backlog."""
    app = create_celery_app(current().settings)
    client = redis.Redis.from_url(current().settings.broker_url or "")
    connection = app.connection_for_read()
    channel = connection.default_channel
    published: list[Job] = []

    def publish_once_waiting() -> None:
        wait_until(lambda: waiting_on_brpop(client, channel), "the worker waiting on BRPOP")
        published.append(publish(queue))

    sender = threading.Thread(target=publish_once_waiting)
    sender.start()
    message, _ = take(app, queue, connection)
    sender.join()
    assert message.headers["id"] == published[0].id
    assert message.headers[DELIVERY_HEADER] == [1, False]
    assert client.hget(keys.KOMBU_UNACKED, message.delivery_tag) is not None
    assert channel.qos._link is not None  # written down in the second round trip
    message.ack()
    wait_until(lambda: client.hget(keys.KOMBU_UNACKED, message.delivery_tag) is None, "the ack")
    app.close()


def test_a_queue_consumed_without_acks_is_not_written_down(queue: str) -> None:
    """Replies to ``inspect`` are consumed without acknowledgements: nothing of them
    may stay in kombu's unacked hash (nobody would ever acknowledge it)."""
    app = create_celery_app(current().settings)
    client = redis.Redis.from_url(current().settings.broker_url or "")
    publish(queue)
    connection = app.connection_for_read()
    channel = connection.default_channel
    taken: list[Any] = []
    channel.basic_consume(queue, no_ack=True, callback=taken.append, consumer_tag="no-ack")
    while not taken:
        connection.drain_events(timeout=10)
    assert taken[0].headers[HEADER]
    assert not written_down(client, queue)
    app.close()


@contextlib.contextmanager
def user_without(client: redis.Redis, *commands: str) -> Iterator[tuple[str, str]]:
    """A Redis user of this test's own that may run every command but ``commands``:
    its broker URL and name."""
    name, password = f"refused-{uuid.uuid4().hex[:8]}", uuid.uuid4().hex
    client.execute_command("ACL", "SETUSER", name, "on", f">{password}", "~*", "&*",
                           "+@all", *(f"-{command}" for command in commands))
    parts = urlsplit(current().settings.broker_url or "")
    try:
        yield parts._replace(netloc=f"{name}:{password}@{parts.hostname}:{parts.port}"
                             ).geturl(), name
    finally:
        client.execute_command("ACL", "DELUSER", name)


def queue_list(client: redis.Redis, queue: str) -> bytes:
    """The name of the one list of ``queue`` that holds messages now."""
    (found,) = client.scan_iter(match=f"{queue}*")
    return found


def test_a_message_that_cannot_be_written_down_goes_back_to_its_queue(queue: str) -> None:
    """kombu's BRPOP took the message off its queue, and writing it down is refused
    (here by an ACL; in production by the old master during a Sentinel failover): the
    message goes back to the head of its queue once Redis takes it, once."""
    client = redis.Redis.from_url(current().settings.broker_url or "")
    job = publish(queue)
    key = queue_list(client, queue)
    item = client.lindex(key, -1)
    with user_without(client, "zadd", "evalsha", "eval") as (url, name):
        app = create_celery_app(current().settings.model_copy(update={"broker_url": url}))
        # The script refused, then BRPOP took it: a connection error, which Celery
        # reconnects after (a channel error would stop the worker).
        with pytest.raises(redis.ConnectionError, match="no permissions"):
            take(app, queue)
        assert client.llen(key) == 0  # taken, and not written down
        assert not written_down(client, queue)
        (untaken,) = PUT_BACKS.pending()  # Redis refuses its scripts: kept, tried again
        assert isinstance(untaken, Untaken)
        assert untaken.item == (item or b"").decode() and untaken.publication == job.publish_id
        client.execute_command("ACL", "SETUSER", name, "+evalsha", "+eval")
        wait_until(lambda: not PUT_BACKS.pending(), "the message put back")
        app.close()
    assert client.lrange(key, 0, -1) == [item]
    again, _ = take(create_celery_app(current().settings), queue)
    assert again.headers["id"] == job.id
    assert again.headers[DELIVERY_HEADER] == [1, False]  # the refused delivery never counted
    again.ack()


def test_a_refused_acknowledgement_is_sent_again_and_replies_stay_in_step(queue: str) -> None:
    """Redis refused an acknowledgement (here every write, with min-replicas-to-write
    above the replicas there are): its four replies are all read, and the ack is kept
    and sent again, not dropped (the job would run again an hour later)."""
    app = create_celery_app(current().settings)
    client = redis.Redis.from_url(current().settings.broker_url or "")
    connection = app.connection_for_read()
    publish(queue)
    publish(queue)
    first, channel = take(app, queue, connection)
    second, _ = take(app, queue, connection)
    client.config_set("min-replicas-to-write", 1)
    try:
        first.ack()  # sent, refused
        wait_until(lambda: channel.qos._link.has_data(), "the refusal")
    finally:
        client.config_set("min-replicas-to-write", 0)
    second.ack()  # reads the refusal first, sends both again on a new connection
    wait_until(lambda: not client.hexists(keys.KOMBU_UNACKED, first.delivery_tag)
               and not client.hexists(keys.KOMBU_UNACKED, second.delivery_tag), "both acks")
    job = publish(queue)  # the connection's replies are in step: a delivery reads its own
    third, _ = take(app, queue, connection)
    assert third.headers["id"] == job.id and third.headers[DELIVERY_HEADER] == [1, False]
    third.ack()
    app.close()


def test_a_take_refused_for_now_is_a_connection_error_not_the_end_of_the_script(
        queue: str) -> None:
    """A Redis that takes no writes for a while (here min-replicas-to-write above the
    replicas there are): Celery is told the connection failed, and reconnects with its
    backoff; the one-round-trip take stays on for when Redis takes writes again."""
    app = create_celery_app(current().settings)
    client = redis.Redis.from_url(current().settings.broker_url or "")
    job = publish(queue)
    connection = app.connection_for_read()
    client.config_set("min-replicas-to-write", 1)
    try:
        with pytest.raises(redis.ConnectionError, match="NOREPLICAS"):
            take(app, queue, connection)
    finally:
        client.config_set("min-replicas-to-write", 0)
    channel = connection.default_channel
    assert not channel._take_off
    message, channel = take(app, queue, app.connection_for_read())
    assert message.headers["id"] == job.id
    assert channel.qos._link is None  # taken and written down by the script
    message.ack()
    app.close()


def test_acknowledgements_still_refused_at_close_are_sent_by_the_put_back_thread(
        queue: str) -> None:
    """The channel closes (Celery reconnecting) while Redis still refuses writes: the
    unconfirmed acks are not dropped (their jobs would run again once kombu restores
    them, an hour later) but sent by the put-back thread once Redis takes writes."""
    app = create_celery_app(current().settings)
    client = redis.Redis.from_url(current().settings.broker_url or "")
    publish(queue)
    message, channel = take(app, queue)
    client.config_set("min-replicas-to-write", 1)
    try:
        message.ack()  # sent, refused
        wait_until(lambda: channel.qos._link.has_data(), "the refusal")
        channel.qos.close_link()
        (owed,) = PUT_BACKS.pending()
        assert isinstance(owed, UnsentAcks) and owed.tags == (message.delivery_tag,)
        assert client.hexists(keys.KOMBU_UNACKED, message.delivery_tag)
    finally:
        client.config_set("min-replicas-to-write", 0)
    wait_until(lambda: not PUT_BACKS.pending(), "the acknowledgement sent late")
    assert not client.hexists(keys.KOMBU_UNACKED, message.delivery_tag)
    assert client.zscore(keys.KOMBU_UNACKED_INDEX, message.delivery_tag) is None
    app.close()


def _batch(queue: str, count: int = 2) -> list[Job]:
    """``count`` jobs published as ``dispatch_many`` publishes them: their PENDING
    records left to the take (``lua/take_one.lua``, or kombu's write-down here)."""
    jobs = [Job(new_job_id(), samples.echo.spec, "celery", queue, 5, {"value": {"n": n}},
                dispatched_at=1_700_000_000.123456) for n in range(count)]
    current().celery.dispatch_many(jobs, None)
    return jobs


@pytest.mark.parametrize("waiting", [False, True])
def test_a_batch_jobs_pending_record_is_written_as_it_is_taken(queue: str,
                                                               waiting: bool) -> None:
    """Taken from a backlog (the take script) or while the worker waits (kombu's BRPOP,
    then our write-down): the job's PENDING record is written in the same step, as
    the publish would have written it; its batch neighbour still has none."""
    from dispatcher.core.record import make_record

    app = create_celery_app(current().settings)
    client = redis.Redis.from_url(current().settings.broker_url or "")
    connection = app.connection_for_read()
    if waiting:
        channel = connection.default_channel

        def publish_once_waiting() -> None:
            wait_until(lambda: waiting_on_brpop(client, channel), "the worker waiting on BRPOP")
            published.extend(_batch(queue))

        published: list[Job] = []
        sender = threading.Thread(target=publish_once_waiting)
        sender.start()
        message, channel = take(app, queue, connection)
        sender.join()
        assert channel.qos._link is not None  # written down in kombu's second round trip
    else:
        published = _batch(queue)
        assert client.get(keys.record(published[0].id)) is None
        message, channel = take(app, queue, connection)
    first, second = published
    assert message.headers["id"] == first.id
    record = client.get(keys.record(first.id))
    assert record is not None
    assert json.loads(record) == make_record(first, "PENDING")
    assert client.ttl(keys.record(first.id)) > 0
    assert client.get(keys.record(second.id)) is None
    assert current().records.load(second.id) == make_record(second, "PENDING")
    message.ack()
    app.close()
