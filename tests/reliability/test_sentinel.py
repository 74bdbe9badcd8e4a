"""Redis Sentinel: a failover forced under load, against Debian's redis-server and
redis-sentinel (a master, a replica, three Sentinels on 127.0.0.1) and a real worker,
every setting of the dispatcher at its default.

Dispatch stays bounded while no server takes writes (the spool takes the gap), the
worker finds the new master by itself, and every accepted job runs (the ledger is a
file, outside the Redis that fails over).
"""

from __future__ import annotations

import itertools
import logging
import math
import os
import sys
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from dispatcher import DispatcherSettings, TaskHandle, configure
from dispatcher.core.job import Job, new_job_id
from dispatcher.routes.celery.monitor import BrokerMonitor
from dispatcher.routes.celery.prepare import prepared
from dispatcher.runtime.container import current
from dispatcher.store.scripts import PUBLISH
from tests.sentinel_harness import SentinelSet, require_debian_redis
from tests.support import Process, wait_until

from . import tasks
from .conftest import CONSUMER, FULL, report

RATE = 25          # dispatches per second
BEFORE = 2.0       # seconds of load before the failover
AFTER = 3.0        # ... and after the new master takes writes again


@pytest.fixture
def sentinels(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[SentinelSet]:
    """``indirect`` parameter: how many replicas (one unless told)."""
    require_debian_redis()
    folder = tmp_path / "redis"
    folder.mkdir()
    with SentinelSet(folder, replicas=getattr(request, "param", 1)) as servers:
        yield servers


class Spooled(logging.Handler):
    """Times and task ids of this process's ``task.dispatched`` events with reason
    ``spooled``."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.times: list[float] = []
        self.ids: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        fields = getattr(record, "dispatch", None) or {}
        if fields.get("event") == "task.dispatched" and fields.get("reason") == "spooled":
            self.times.append(time.monotonic())
            self.ids.append(str(fields["task_id"]))


@pytest.fixture
def spooled() -> Iterator[Spooled]:
    logger = logging.getLogger("dispatcher")
    handler, level = Spooled(), logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


def _relayed(monitor: BrokerMonitor) -> bool:
    return monitor.healthy and monitor.spool.depth() == 0


def _done(ledger: Path) -> tuple[Counter[str], list[float]]:
    """How often each job ran, and when (wall clock) each run ended."""
    if not ledger.exists():
        return Counter(), []
    runs = [line.split() for line in ledger.read_text().splitlines() if line.startswith("done ")]
    return Counter(run[1] for run in runs), sorted(float(run[3]) for run in runs)


@pytest.mark.parametrize("sentinels", [1, 2] if FULL else [1], indirect=True)
def test_failover_under_load_is_bounded_and_lossless(
        sentinels: SentinelSet, spooled: Spooled, tmp_path: Path) -> None:
    ledger = tmp_path / "ledger.txt"
    env = {k: v for k, v in os.environ.items()
           if not (k.startswith("DISPATCH_") or k == "REDIS_URL")}
    env.update(sentinels.env(), DISPATCH_TASK_MODULES="tests.reliability.tasks",
               DISPATCH_SPOOL_PATH=str(tmp_path / "worker-spool.sqlite3"),
               DISPATCH_LOG_FORMAT="json", DISPATCH_METRICS_PORT="0",
               RELIABILITY_LEDGER=str(ledger), PYTHONUNBUFFERED="1",
               DISPATCH_WORKER_CONSUMER=CONSUMER)
    worker = Process([sys.executable, "-m", "worker", "--concurrency", "2"], env,
                     tmp_path / "worker.log")
    try:
        worker.wait_for_output(" ready.", timeout=60)
        configure(DispatcherSettings(  # type: ignore[call-arg]
            broker_url=sentinels.url, sentinel_master=sentinels.master_name,
            sentinel_password=sentinels.sentinel_password,
            spool_path=str(tmp_path / "test-spool.sqlite3"), _env_file=None))
        monitor = current().celery.monitor

        jobs: list[str] = []
        handles: list[TaskHandle] = []
        latencies: list[float] = []
        failover_at = writable_at = writable_wall = drained_at = end_at = None
        old = new = 0
        started = time.monotonic()
        while end_at is None or time.monotonic() < end_at:
            now = time.monotonic()
            if failover_at is None and now - started >= BEFORE:
                old, failover_at = sentinels.failover(), time.monotonic()
            elif (failover_at is not None and writable_at is None
                  and (promoted := sentinels.promoted(old)) and sentinels.takes_writes(promoted)):
                new, writable_at, writable_wall = promoted, now, time.time()
                end_at = writable_at + AFTER
            if writable_at is not None and drained_at is None and _relayed(monitor):
                drained_at = now
            assert now - started < 60, "the failover did not complete"
            job = f"sentinel-{len(jobs)}-{uuid.uuid4().hex[:6]}"
            begun = time.monotonic()
            handle = tasks.work.dispatch(job, 5)  # raises if not accepted
            latencies.append(time.monotonic() - begun)
            assert handle.route == "celery"
            jobs.append(job)
            handles.append(handle)
            time.sleep(max(0.0, 1 / RATE - latencies[-1]))
        assert failover_at is not None and writable_at is not None and writable_wall

        deadline = time.monotonic() + 60
        while drained_at is None:
            assert time.monotonic() < deadline, "the spool was not relayed"
            time.sleep(0.05)
            drained_at = time.monotonic() if _relayed(monitor) else None
        done, ends = _done(ledger)
        while not set(jobs) <= set(done) and time.monotonic() < deadline:
            time.sleep(0.2)
            done, ends = _done(ledger)
    finally:
        worker.stop()
    lost = [job for job in jobs if job not in done]
    duplicates = sum(done[job] - 1 for job in jobs if done[job] > 1)
    stall = max((later - earlier for earlier, later in itertools.pairwise(ends)), default=0.0)
    degraded = (max(spooled.times) - min(spooled.times)) if spooled.times else 0.0
    resumed = min((end for end in ends if end > writable_wall), default=math.inf)
    replicas = len(sentinels.data_ports) - 1
    report(f"Sentinel failover, {replicas} replica{'s' if replicas > 1 else ''}", len(jobs),
           len(jobs) - len(lost), len(lost), duplicates,
           f"no writes {writable_at - failover_at:.1f}s, {len(spooled.times)} spooled over "
           f"{degraded:.1f}s (relayed {drained_at - writable_at:.1f}s after), max dispatch "
           f"{max(latencies):.2f}s, worker back {resumed - writable_wall:.1f}s after "
           f"(stall {stall:.1f}s)")
    assert "starting it again" not in worker.output()  # resumed without a restart
    secrets = (sentinels.password, sentinels.sentinel_password)
    assert not [s for s in secrets if s in worker.output()], "a password reached the log"
    assert new != old
    assert lost == [], f"{len(lost)} lost:\n{worker.output()[-3000:]}"
    assert max(latencies) <= 2.5
    assert spooled.times, "no dispatch met the failover: the spool took nothing"
    by_id = {handle.id: handle for handle in handles}
    deadline = time.monotonic() + 10
    for task_id in spooled.ids[:: max(1, len(spooled.ids) // 5)]:  # records of spooled jobs
        while by_id[task_id].state() != "SUCCESS":
            assert time.monotonic() < deadline, f"{task_id}: {by_id[task_id].record()}"
            time.sleep(0.1)
    # This process's clients, made before the failover, found the new master by themselves.
    for client in (monitor.publisher.client, current().redis):
        assert client is not None
        assert client.connection_pool.master_address == ("127.0.0.1", new)


def test_a_job_taken_as_the_master_stops_taking_writes_is_put_back(
        sentinels: SentinelSet, tmp_path: Path) -> None:
    """The old master refuses writes (its replica was promoted) between an idle
    worker's ``BRPOP`` and the worker writing the job down. Forced here: one
    transaction pushes the job and raises ``min-replicas-to-write`` past the replicas
    there are. The worker keeps the job and puts it back once the master takes writes
    again; it runs once."""
    ledger = tmp_path / "ledger.txt"
    env = {k: v for k, v in os.environ.items()
           if not (k.startswith("DISPATCH_") or k == "REDIS_URL")}
    env.update(sentinels.env(), DISPATCH_TASK_MODULES="tests.reliability.tasks",
               DISPATCH_SPOOL_PATH=str(tmp_path / "worker-spool.sqlite3"),
               DISPATCH_METRICS_PORT="0", RELIABILITY_LEDGER=str(ledger),
               PYTHONUNBUFFERED="1", DISPATCH_WORKER_CONSUMER=CONSUMER)
    worker = Process([sys.executable, "-m", "worker", "--concurrency", "1"], env,
                     tmp_path / "worker.log")
    master_port = sentinels.master_port()
    try:
        worker.wait_for_output(" ready.", timeout=60)
        settings = DispatcherSettings(  # type: ignore[call-arg]
            broker_url=sentinels.url, sentinel_master=sentinels.master_name,
            sentinel_password=sentinels.sentinel_password,
            spool_path=str(tmp_path / "test-spool.sqlite3"), _env_file=None)
        configure(settings)
        name = f"put-back-{uuid.uuid4().hex[:6]}"
        job = Job(new_job_id(), tasks.work.spec, "celery", settings.default_queue, 5,
                  {"job": name, "ms": 5})
        key, message, record, _ = prepared(settings, job, fresh=True)
        publisher = current().celery.monitor.publisher
        with sentinels.server(master_port) as master:
            wait_until(lambda: any(client["cmd"] == "brpop" for client in master.client_list()),
                       "the worker waiting on BRPOP")
            master.script_load(PUBLISH.source)
            with master.pipeline(transaction=True) as both:
                both.execute_command(*publisher.command([(job.publish_id, key, message,
                                                          record, None)]))
                both.config_set("min-replicas-to-write", sentinels.replicas + 1)
                both.execute()
            try:
                wait_until(lambda: "NOREPLICAS" in worker.output(),
                           "the worker refused its write-down")
                assert master.llen(key) == 0 and name not in _done(ledger)[0]
            finally:
                master.config_set("min-replicas-to-write", sentinels.replicas)
        wait_until(lambda: name in _done(ledger)[0], "the job put back and run")
        wait_until(lambda: "back at the head of its queue" in worker.output(), "the log")
    finally:
        worker.stop()
    assert _done(ledger)[0][name] == 1
