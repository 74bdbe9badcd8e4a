"""The jobs of the HTTP scenarios' apps (``bench.apps``), importable by a worker too:
a job spilled over to Celery runs there and is counted in Redis."""

from __future__ import annotations

import os
import threading
import time

import redis

from dispatcher import task

_count = 0
#: Sleeping jobs running now, and the most seen at once (the executor's bound).
_running = 0
_max_running = 0
_lock = threading.Lock()
#: Jobs spilled over to Celery run in a worker process, which counts them in Redis.
COUNTER = "bench:apps:done-on-worker"
_IN_WORKER = os.environ.get("BENCH_APPS_IN_WORKER") == "1"
#: The bench's Redis (the broker), shared by the apps' threads.
broker = redis.Redis.from_url(os.environ.get("DISPATCH_BROKER_URL") or "redis://127.0.0.1:6379")


def done() -> None:
    global _count
    if _IN_WORKER:
        broker.incr(COUNTER)
        return
    with _lock:
        _count += 1


def _sleep(ms: float) -> None:
    global _running, _max_running
    with _lock:
        _running += 1
        _max_running = max(_max_running, _running)
    try:
        time.sleep(ms / 1000)
    finally:
        with _lock:
            _running -= 1
    done()


def noop_job() -> None:
    done()


def sleep_job(ms: float) -> None:
    _sleep(ms)


@task(name="bench.noop", weight=1)
def noop_task() -> None:
    done()


@task(name="bench.sleep", weight=1)
def sleep_task(ms: float) -> None:
    _sleep(ms)


def counts() -> tuple[int, int, int]:
    """(done in this process, done on workers, most sleeping jobs running at once here)."""
    return _count, int(broker.get(COUNTER) or 0), _max_running
