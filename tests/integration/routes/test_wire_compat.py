"""Messages published by the dispatcher (one by one and by dispatch_many) are consumed
by a stock ``celery worker`` with Celery's default settings."""

from __future__ import annotations

import sys
import time
import uuid
from pathlib import Path

import pytest
import redis

from dispatcher import task
from tests.integration.conftest import Process


@task(name="stock.echo", weight=8, queue="stock")
def echo(key: str, value: int) -> None:  # runs on the stock worker, not here
    raise AssertionError("must not run in the dispatching process")


@pytest.fixture
def stock_worker(broker: str, service_env: dict[str, str], tmp_path: Path) -> Process:
    worker = Process([sys.executable, "-m", "celery", "-A", "tests.integration.stock_app",
                      "worker", "-Q", "stock", "--concurrency", "1", "--loglevel", "INFO"],
                     service_env, tmp_path / "stock.log")
    worker.wait_for_output(" ready.", timeout=60)
    yield worker  # type: ignore[misc]
    worker.stop()


def test_stock_celery_worker_consumes_dispatch_and_dispatch_many(
    broker: str, stock_worker: Process
) -> None:
    key = f"stock:{uuid.uuid4()}"
    echo.dispatch(key, 0)
    for priority in ("low", "normal", "high"):
        echo.options(priority=priority).dispatch_many(
            [{"key": key, "value": v} for v in range(1, 11)]
        )
    client = redis.Redis.from_url(broker)
    deadline = time.monotonic() + 60
    while client.llen(key) < 31:
        assert time.monotonic() < deadline, stock_worker.output()[-3000:]
        time.sleep(0.1)
    values = sorted(int(v) for v in client.lrange(key, 0, -1))
    assert values == sorted([0, *range(1, 11), *range(1, 11), *range(1, 11)])
    assert "stock.echo" in stock_worker.output()


@pytest.fixture
def quick_sweeper(service_env: dict[str, str], worker: Process, tmp_path: Path) -> Process:
    """One of our workers that looks for lost jobs every second."""
    env = {**service_env, "DISPATCH_REQUEUE_LOST_AFTER": "1"}
    process = Process([sys.executable, "-m", "worker", "--concurrency", "1",
                       "--hostname", "sweeper@%h"], env, tmp_path / "sweeper.log")
    process.wait_for_output(" ready.", timeout=60)
    yield process  # type: ignore[misc]
    process.stop()


def test_jobs_a_stock_worker_ran_are_never_taken_for_lost(
    broker: str, stock_worker: Process, quick_sweeper: Process
) -> None:
    """A mixed fleet (say, mid-migration): a stock worker runs our messages without the
    start mark our workers leave, and our sweeper must not run them again."""
    from dispatcher.routes.celery.fleet import Fleet
    from dispatcher.store.keys import INFLIGHT

    key = f"stock:{uuid.uuid4()}"
    handles = [echo.dispatch(key, value) for value in range(5)]
    client = redis.Redis.from_url(broker)
    watched = [f"{handle.id}:1" for handle in handles]
    deadline = time.monotonic() + 60
    # Dropped from the watch once a sweep finds them gone from the queue; run by then.
    while (client.llen(key) < 5
           or any(client.zscore(INFLIGHT, mark) is not None for mark in watched)):
        assert time.monotonic() < deadline, quick_sweeper.output()[-3000:]
        time.sleep(0.1)
    assert sorted(int(v) for v in client.lrange(key, 0, -1)) == list(range(5))  # once each
    # The sweeper logs after its Redis calls, so a line may lag them: wait for it.
    for line in ("presumed run by the other Celery workers",
                 "other than the dispatcher's consume stock"):
        quick_sweeper.wait_for_output(line, timeout=30)
    # Our two workers (announced) are not foreign; the stock one is, with its queue.
    from dispatcher import get_settings
    from dispatcher.routes.celery.app import create_celery_app
    from dispatcher.store.keys import FLEET_ASKING as ASKING_KEY
    from dispatcher.store.keys import FOREIGN_WORKERS

    # Workers that tests running beside this one start and stop on the shared Redis may
    # be seen too while they are not announced yet: look again (a fresh memory each
    # time) until only the steady fleet is seen. Ours never leave, so a wrong verdict
    # on them never clears.
    deadline = time.monotonic() + 120
    while True:
        fleet = Fleet(create_celery_app(get_settings()), client, "test-process", every=1,
                      memory=60)
        # This process's turn, with nothing remembered: the sightings of a look are
        # kept while looks go on, so a worker seen once would be seen for good.
        client.delete(ASKING_KEY, FOREIGN_WORKERS)
        asked_at = time.time()
        fleet.observe()
        observed_at, until = fleet.sightings()
        assert observed_at >= asked_at
        if set(until) == {"stock"} or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert set(until) == {"stock"} and until["stock"] >= asked_at + 1
