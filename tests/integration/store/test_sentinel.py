"""Every Redis client of the dispatcher through real Sentinels (Debian's redis-server and
redis-sentinel on 127.0.0.1): the stores, ``Link``, the publisher and the sweeper, and
Celery's broker and result backend. The failover itself is in
tests/reliability/test_sentinel.py."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from pydantic import SecretStr
from redis.sentinel import SentinelConnectionPool

from dispatcher import DispatcherSettings, configure
from dispatcher.core.redis_url import SentinelOptions
from dispatcher.routes.celery.app import create_celery_app
from dispatcher.routes.celery.protocol import queue_key
from dispatcher.routes.celery.recovery import Sweeper
from dispatcher.runtime.container import current
from dispatcher.store.client import redis_client
from dispatcher.store.link import Link
from tests.integration import sample_tasks as samples
from tests.sentinel_harness import SentinelSet, require_debian_redis


@pytest.fixture(scope="module")
def sentinels(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SentinelSet]:
    require_debian_redis()
    with SentinelSet(tmp_path_factory.mktemp("sentinels")) as servers:
        yield servers


@pytest.fixture
def client(sentinels: SentinelSet) -> redis.Redis:
    options = SentinelOptions(sentinels.master_name, SecretStr(sentinels.sentinel_password))
    return redis_client(sentinels.url, 2.0, options)


@pytest.fixture
def sentinel_settings(sentinels: SentinelSet, tmp_path_factory: pytest.TempPathFactory
                      ) -> DispatcherSettings:
    settings = DispatcherSettings(  # type: ignore[call-arg]
        broker_url=sentinels.url, sentinel_master=sentinels.master_name,
        sentinel_password=sentinels.sentinel_password, _env_file=None,
        spool_path=str(tmp_path_factory.mktemp("spool") / "spool.sqlite3"))
    configure(settings)
    return settings


def test_clients_and_links_reach_the_master_the_sentinels_name(
        sentinels: SentinelSet, client: redis.Redis) -> None:
    key = f"sentinel-{uuid.uuid4().hex[:8]}"
    assert client.set(key, "1")
    link = Link(client)
    assert link.call("INCR", key) == 2
    link.send([("INCR", key), ("GET", key)])
    assert (link.read(), link.read()) == (3, b"3")
    link.close()
    with sentinels.server(sentinels.master_port()) as master:
        assert master.get(key) == b"3"


def test_a_master_refusing_writes_drops_the_connection_at_once(
        sentinels: SentinelSet, client: redis.Redis) -> None:
    """What the old master does the moment its replica is promoted (it has no replica
    left to write with): the call fails as a connection error, without waiting, and
    the connection is dropped, so the next one asks the Sentinels again."""
    link = Link(client)
    assert link.call("PING") == b"PONG"
    with sentinels.server(sentinels.master_port()) as master:
        master.config_set("min-replicas-to-write", sentinels.replicas + 1)  # too few
        try:
            for call in (lambda: client.set("refused", "1"),
                         lambda: link.call("SET", "refused", "1")):
                started = time.monotonic()
                with pytest.raises(redis.ConnectionError, match="NOREPLICAS"):
                    call()
                assert time.monotonic() - started < 0.5
            assert link._connection is None  # dropped
            assert client.ping()  # reads still work
        finally:
            master.config_set("min-replicas-to-write", sentinels.replicas)
    assert link.call("SET", "accepted", "1") == b"OK"
    link.close()


def test_the_sentinels_password_is_needed_and_never_shown(sentinels: SentinelSet) -> None:
    wrong = redis_client(sentinels.url, 1.0, SentinelOptions(sentinels.master_name, None))
    with pytest.raises(redis.ConnectionError) as caught:
        wrong.ping()
    assert sentinels.password not in str(caught.value)
    assert sentinels.sentinel_password not in str(caught.value)


def test_the_runtime_stores_live_on_the_master(
        sentinels: SentinelSet, sentinel_settings: DispatcherSettings) -> None:
    runtime = current()
    assert runtime.redis is not None
    assert isinstance(runtime.redis.connection_pool, SentinelConnectionPool)
    parked = samples.echo.options(route="celery", queue=f"parked-{uuid.uuid4().hex[:8]}")
    handle = parked.options(idempotency_key="once").dispatch({"n": 1})
    again = parked.options(idempotency_key="once").dispatch({"n": 1})
    assert again.id == handle.id  # the idempotency store
    assert handle.state() == "PENDING"  # the records store
    assert runtime.celery.monitor.check_now()  # the publisher's client answers
    with sentinels.server(sentinels.master_port()) as master:
        assert master.llen(queue_key(str(handle.queue), 5)) == 1


def test_the_sweeper_requeues_through_the_sentinels(
        sentinels: SentinelSet, sentinel_settings: DispatcherSettings) -> None:
    queue = f"parked-{uuid.uuid4().hex[:8]}"
    lost = samples.echo.options(route="celery", queue=queue).dispatch({"n": 2})
    client = current().celery.monitor.publisher.client
    key = queue_key(queue, 5)
    assert client.rpop(key) is not None  # popped, then Redis "forgot" the rest
    assert Sweeper(client, after=0).sweep() == 1
    assert [json.loads(raw)["headers"]["id"] for raw in client.lrange(key, 0, -1)] == [lost.id]
    client.delete(key)


def test_celery_broker_and_result_backend_through_the_sentinels(
        sentinels: SentinelSet, sentinel_settings: DispatcherSettings) -> None:
    app = create_celery_app(sentinel_settings)
    queue = f"kombu-{uuid.uuid4().hex[:8]}"
    with app.connection_for_write() as connection:
        connection.ensure_connection(max_retries=1)
        simple = connection.SimpleQueue(queue)
        simple.put({"hello": "sentinel"})
        message = simple.get(timeout=5)
        assert message.payload == {"hello": "sentinel"}
        message.ack()
        simple.close()
    backend: Any = app.backend
    assert type(backend).__name__ == "SentinelBackend"
    backend.set("celery-sentinel-check", "1")
    assert backend.get("celery-sentinel-check") == b"1"
    with sentinels.server(sentinels.master_port()) as master:
        assert master.get("celery-sentinel-check") == b"1"
