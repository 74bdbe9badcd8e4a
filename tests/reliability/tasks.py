"""Tasks for the fault-injection suite. Every execution is written to a ledger file
outside Redis (``RELIABILITY_LEDGER``), so losing Redis cannot hide a lost job."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

from dispatcher import RetryPolicy, current_job, task

POLICY = RetryPolicy(max_attempts=3, base_delay=0.2, max_delay=2.0, jitter=False)


def _ledger() -> Path:
    return Path(os.environ["RELIABILITY_LEDGER"])


def note(event: str, job: str) -> None:
    """Append one line; O_APPEND writes this small are atomic across processes."""
    fd = os.open(_ledger(), os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, f"{event} {job} {os.getpid()} {time.time():.3f}\n".encode())
    finally:
        os.close(fd)


def seen(event: str, job: str) -> bool:
    path = _ledger()
    if not path.exists():
        return False
    needle = f"{event} {job} "
    return any(line.startswith(needle) for line in path.read_text().splitlines())


@task(name="rel.work", weight=8, retry=POLICY)
def work(job: str, ms: int) -> None:
    time.sleep(ms / 1000)
    note("done", job)


@task(name="rel.crash_once", weight=8, retry=POLICY)
def crash_once(job: str) -> None:
    if not seen("start", job):
        note("start", job)
        os.kill(os.getpid(), signal.SIGKILL)
    note("done", job)


@task(name="rel.always_crash", weight=8, retry=POLICY)
def always_crash(job: str) -> None:
    note("start", job)
    os.kill(os.getpid(), signal.SIGKILL)


@task(name="rel.inline_slow", weight=1)
def inline_slow(job: str, seconds: float) -> None:
    time.sleep(seconds)
    note("done", job)


@task(name="rel.canary", weight=8)
def canary(job: str) -> None:
    note("done", job)


@task(name="rel.single", weight=8, retry=RetryPolicy(max_attempts=1))
def single(job: str, ms: int) -> None:
    """One attempt only: a death of its worker must not make it poison."""
    note("start", job)
    time.sleep(ms / 1000)
    note("done", job)


@task(name="rel.tick", weight=8, retry=POLICY)
def tick() -> None:
    """Run by DISPATCH_SCHEDULES in the scheduler test; each run is one ledger line."""
    job = current_job()
    note("tick", job.id if job is not None else "?")


PACED_PER_SECOND = 10


@task(name="rel.paced", weight=1, rate_limit=f"{PACED_PER_SECOND}/s")
def paced(job: str) -> None:
    """Rate-limited across the fleet; routed inline or to Celery by each call."""
    note("done", job)


@task(name="rel.one_slot", weight=8, concurrency=1)
def one_slot(job: str, ms: int) -> None:
    """One job at a time across the fleet."""
    note("start", job)
    time.sleep(ms / 1000)
    note("done", job)


def gate(job: str) -> Path:
    """The file that lets ``rel.gated`` ``job`` finish."""
    return _ledger().parent / f"gate-{job}"


@task(name="rel.gated", weight=8, retry=POLICY)
def gated(job: str) -> None:
    """Runs until the test opens its gate (a file): a job known to be running."""
    note("start", job)
    while not gate(job).exists():
        time.sleep(0.02)
    note("done", job)


@task(name="rel.fails_once", weight=8, retry=POLICY)
def fails_once(job: str) -> int:
    """Fails its first attempt, then succeeds: a retry, recorded."""
    if not seen("fail", job):
        note("fail", job)
        raise RuntimeError("first attempt fails")
    note("done", job)
    return current_job().attempt  # type: ignore[union-attr]
