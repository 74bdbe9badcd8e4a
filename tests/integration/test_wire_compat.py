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

from .conftest import Process


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
