"""Tasks used by the integration tests; imported by the test process and the worker.

Each run appends to a Redis list (the ledger) named by its ``key`` argument, so a
test can count attempts and read their timing from any process.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from functools import cache

import redis
from pydantic import SecretStr

from dispatcher import RetryPolicy, current_job, progress, task

NO_JITTER = RetryPolicy(max_attempts=3, base_delay=0.3, multiplier=2.0, max_delay=5.0,
                        jitter=False)


@cache
def _ledger(url: str) -> redis.Redis:
    return redis.Redis.from_url(url)


def ledger() -> redis.Redis:
    from dispatcher import get_settings

    url = get_settings().broker_url or os.environ["DISPATCH_BROKER_URL"]
    return _ledger(url)


def note(key: str, **fields: object) -> int:
    entry = {"t": time.time(), "pid": os.getpid(), **fields}
    return int(ledger().rpush(key, json.dumps(entry)))


def entries(key: str) -> list[dict[str, object]]:
    return [json.loads(raw) for raw in ledger().lrange(key, 0, -1)]


@task(name="samples.always_fails", retry=NO_JITTER)
def always_fails(key: str) -> None:
    note(key)
    raise RuntimeError("boom")


@task(name="samples.flaky", retry=RetryPolicy(max_attempts=4, base_delay=0.1, jitter=False,
                                               retry_on=(ConnectionError,)))
def flaky(key: str, fail_times: int) -> int:
    count = note(key)
    if count <= fail_times:
        raise ConnectionError(f"transient failure {count}")
    return count


@task(name="samples.sleepy", timeout=0.5,
      retry=RetryPolicy(max_attempts=2, base_delay=0.1, jitter=False))
def sleepy(key: str, seconds: float) -> str:
    note(key)
    time.sleep(seconds)
    return "woke"


@task(name="samples.async_sleepy", timeout=0.5,
      retry=RetryPolicy(max_attempts=2, base_delay=0.1, jitter=False))
async def async_sleepy(key: str, seconds: float) -> str:
    note(key)
    await asyncio.sleep(seconds)
    return "woke"


@task(name="samples.record_order", weight=8)
def record_order(key: str, label: str, pause: float = 0.05) -> None:
    time.sleep(pause)
    note(key, label=label)


@task(name="samples.loop_identity", weight=8)
async def loop_identity() -> list[int]:
    await asyncio.sleep(0.01)
    return [os.getpid(), id(asyncio.get_running_loop())]


@task(name="samples.slow_inline", weight=1)
def slow_inline(key: str, seconds: float) -> None:
    time.sleep(seconds)
    note(key, label="done")


@task(name="samples.echo", weight=1)
def echo(value: dict[str, int]) -> dict[str, int]:
    return value


@task(name="samples.on_own_queue", weight=5, queue="samples-heavy")
def on_own_queue(value: int) -> int:
    return value * 2


@task(name="samples.charge", weight=8, retry=RetryPolicy(max_attempts=1))
def charge(account: str, card_token: SecretStr, pin: str = "0000") -> None:
    raise PermissionError(f"card declined for {account}")


def _steps(steps: int, pause: float, hold: float) -> int:
    for done in range(1, steps + 1):
        time.sleep(pause)
        progress(done, steps, f"step {done} of {steps}")
    time.sleep(hold)  # stays at 100 % a moment before it ends, so watchers see it there
    return steps


@task(name="samples.progress_steps", weight=8)
def progress_steps(steps: int = 10, pause: float = 0.3, hold: float = 1.0) -> int:
    """Reports its progress in ``steps`` steps up to 100 % (Celery route)."""
    return _steps(steps, pause, hold)


@task(name="samples.progress_steps_inline", weight=1)
def progress_steps_inline(steps: int = 10, pause: float = 0.3, hold: float = 1.0) -> int:
    """The same on the inline route."""
    return _steps(steps, pause, hold)


@task(name="samples.fails_first_time", weight=8, retry=RetryPolicy(max_attempts=1))
def fails_first_time(key: str) -> int:
    """Fails its first run (so it is dead-lettered) and succeeds when dispatched again."""
    count = note(key)
    if count == 1:
        raise RuntimeError("first run fails on purpose")
    return count


@task(name="samples.auto_sleep", weight="auto")
def auto_sleep(key: str, seconds: float) -> str:
    """Routed by its measured run time (adaptive routing); notes where it ran."""
    time.sleep(seconds)
    note(key, seconds=seconds)
    return "slept"


@task(name="samples.whoami", weight=1,
      retry=RetryPolicy(max_attempts=2, base_delay=0.1, max_delay=0.1, jitter=False))
def whoami(key: str) -> dict[str, object]:
    """Fails its first attempt, then answers with what ``current_job()`` says."""
    job = current_job()
    assert job is not None
    if note(key) == 1:
        raise RuntimeError("first attempt fails on purpose")
    return job._asdict()



@task(name="samples.power", weight=8, retry=RetryPolicy(max_attempts=1))
def power(base: int, exponent: int = 2) -> int:
    """Called by plain Celery clients (``send_task``) with positional arguments."""
    if base < 0:
        raise ValueError(f"negative base {base}")
    return int(base ** exponent)


@task(name="samples.hold_inline", weight=1)
def hold_inline(key: str, limit: float = 120.0) -> None:
    """Runs inline until the test sets ``<key>:release`` (at most ``limit`` seconds)."""
    deadline = time.monotonic() + limit
    while ledger().get(f"{key}:release") is None and time.monotonic() < deadline:
        time.sleep(0.05)
    note(key, label="released")


@task(name="samples.until_cancelled", weight=8)
def until_cancelled(seconds: float = 60) -> str:
    """Reports progress until told to stop (``progress()`` raises ``TaskCancelled``)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        progress(1)
        time.sleep(0.02)
    return "not told"


@task(name="samples.async_until_cancelled", weight=8)
async def async_until_cancelled(seconds: float = 60) -> str:
    """Sleeps on its loop: cancelled there once its job is cancelled."""
    await asyncio.sleep(seconds)
    return "not told"


@task(name="samples.rate_limited", weight=1, rate_limit="20/s")
def rate_limited(key: str) -> None:
    """Notes when it ran, and where (the limit holds across routes and processes)."""
    info = current_job()
    note(key, job=info.id if info else None, route=info.route if info else None)


@task(name="samples.per_customer", weight=1, concurrency=2, concurrency_key="customer")
def per_customer(key: str, customer: str, hold: float = 0.2) -> int:
    """Counts how many jobs of its customer run at once, itself included (the count it
    saw goes in the ledger): never more than the limit."""
    running = ledger().incr(f"{key}:running:{customer}")
    everyone = ledger().incr(f"{key}:running")
    try:
        note(key, customer=customer, running=running, everyone=everyone)
        time.sleep(hold)
    finally:
        ledger().decr(f"{key}:running:{customer}")
        ledger().decr(f"{key}:running")
    return int(running)



@task(name="samples.hourly", weight=1, rate_limit="1/h")
def hourly(n: int) -> int:
    """Once an hour: a second job waits (in the delay store, on Celery)."""
    return n


@task(name="samples.hangs_once", weight=8, timeout=0.5, concurrency=1,
      retry=RetryPolicy(max_attempts=2, base_delay=0.1, jitter=False,
                        retry_on=(Exception,)))
def hangs_once(key: str) -> None:
    """The first attempt outlives its timeout (Python cannot stop it) and is retried;
    the ledger tells when each attempt began and when the hung call really ended."""
    attempt = note(key, label="start")
    if attempt == 1:
        time.sleep(2.0)
        note(key, label="hung call ended")
