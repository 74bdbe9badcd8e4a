"""A fleet at default settings: a worker killed for good (its host gone), the others
give back what it held once its heartbeat expires."""

from __future__ import annotations

import os
import random
import time
import uuid

import pytest

from dispatcher import get_settings
from tests.support import wait_until

from . import tasks
from .conftest import Cluster, report


@pytest.mark.parametrize("cluster", ["defaults"], indirect=True)
def test_a_dead_workers_jobs_come_back_through_another_worker(cluster: Cluster) -> None:
    """Two workers; one is SIGKILLed with its whole process group mid-run and never
    restarted. Its jobs (one attempt each: no retry policy) run on the other worker
    about ``DISPATCH_WORKER_DEAD_AFTER`` later, once each, not as poison."""
    settings = get_settings()
    assert settings.visibility_timeout == 3600 and settings.worker_dead_after == 30
    n = 20
    doomed, survivor = cluster.start_workers(["doomed@%h", "survivor@%h"])
    jobs = [f"fleet-{i}-{uuid.uuid4().hex[:6]}" for i in range(n)]
    for job in jobs:
        tasks.single.dispatch(job, random.randint(100, 300))
    # Kill once the doomed worker is running some of them.
    wait_until(lambda: any(_group(int(line.split()[2])) == doomed.pid
                           for line in _starts(cluster)),
               "a job running on the doomed worker")
    cluster.kill_worker(doomed)
    killed = time.monotonic()
    done = cluster.wait_done(set(jobs), timeout=240)
    recovered = time.monotonic() - killed
    completed = sum(1 for j in jobs if j in done)
    duplicates = sum(done[j] - 1 for j in jobs if done[j] > 1)
    survivor.wait_for_output("from a dead worker")
    report("worker killed for good (defaults)", n, completed, n - completed, duplicates,
           f"all done {recovered:.0f}s after the kill")
    assert completed == n, cluster.diagnose(set(jobs) - set(done))
    assert duplicates == 0
    assert '"reason": "crashed"' not in survivor.output()


def _starts(cluster: Cluster) -> list[str]:
    if not cluster.ledger.exists():
        return []
    return [ln for ln in cluster.ledger.read_text().splitlines() if ln.startswith("start ")]


def _group(pid: int) -> int | None:
    try:
        return os.getpgid(pid)
    except ProcessLookupError:  # already gone: it ran and its job ended
        return None
