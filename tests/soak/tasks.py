"""Tasks of the chaos soak. Every run appends one line to the ledger file outside Redis
(``RELIABILITY_LEDGER``, as the fault-injection suite's tasks do):
``done <job> <task id> <route it ran on> <pid> <time>``."""

from __future__ import annotations

import os
import time

from dispatcher import current_job, task


def _note(job: str) -> None:
    """One line per run; O_APPEND writes this small are atomic across processes."""
    info = current_job()
    task_id, route = (info.id, info.route) if info else ("-", "-")
    line = f"done {job} {task_id} {route} {os.getpid()} {time.time():.3f}\n"
    fd = os.open(os.environ["RELIABILITY_LEDGER"], os.O_WRONLY | os.O_APPEND | os.O_CREAT,
                 0o644)
    try:
        os.write(fd, line.encode())
    finally:
        os.close(fd)


@task(name="soak.inline", weight=1)
def inline_job(job: str, ms: int) -> None:
    """Light: runs in the API process after the response."""
    time.sleep(ms / 1000)
    _note(job)


@task(name="soak.celery", weight=8)
def celery_job(job: str, ms: int) -> None:
    """Heavy: goes to a worker through Redis."""
    time.sleep(ms / 1000)
    _note(job)
