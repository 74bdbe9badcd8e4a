"""DISPATCH_NAMESPACE: two apps on one Redis database never see each other's jobs,
records, dead letters or workers."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from dispatcher import DispatcherSettings, configure
from dispatcher.routes.celery.liveness import live_workers
from dispatcher.store import keys
from dispatcher.store.embedded import EmbeddedRedis
from tests.integration.conftest import Process
from tests.integration.sample_tasks import always_fails, power
from tests.support import wait_until


@pytest.fixture
def namespaced(redis_server: EmbeddedRedis, service_env: dict[str, str], worker: Process,
               tmp_path: Path) -> Iterator[dict[str, Process]]:
    """One worker per namespace, beside the session's worker (no namespace)."""
    workers = {}
    try:
        for name in ("alpha", "beta"):
            process = Process([sys.executable, "-m", "worker", "--concurrency", "1",
                               "--hostname", f"{name}@%h"],
                              {**service_env, "DISPATCH_NAMESPACE": name},
                              tmp_path / f"{name}.log")
            process.wait_for_output(" ready.", timeout=60)
            workers[name] = process
        yield workers
    finally:
        for process in workers.values():
            process.stop()
        configure(DispatcherSettings(broker_url=redis_server.url, _env_file=None))  # type: ignore[call-arg]


def _as(namespace: str | None, url: str, spool: Path) -> None:
    configure(DispatcherSettings(broker_url=url, namespace=namespace, _env_file=None,  # type: ignore[call-arg]
                                 spool_path=str(spool / f"{namespace}.sqlite3")))


def test_two_namespaces_share_a_redis_without_meeting(
    redis_server: EmbeddedRedis, namespaced: dict[str, Process], worker: Process,
    tmp_path: Path
) -> None:
    client = redis.Redis.from_url(redis_server.url)
    _as("alpha", redis_server.url, tmp_path)
    ran = power.options(route="celery").dispatch(6)
    failed = always_fails.options(route="celery").dispatch(f"ns:{time.time()}")
    assert ran.get(timeout=60) == 36
    wait_until(lambda: client.hget(keys.DEAD_LETTERS, failed.id) is not None,
               "alpha's failed job dead-lettered")
    assert keys.DEAD_LETTERS == "alpha:dispatch:dead"
    # Every key these jobs left behind is alpha's.
    leftovers = [k.decode() for k in client.scan_iter(match=f"*{ran.id}*")]
    leftovers += [k.decode() for k in client.scan_iter(match=f"*{failed.id}*")]
    assert leftovers and all(k.startswith("alpha:") for k in leftovers), leftovers
    assert client.zscore("alpha:dispatch:jobs", ran.id) is not None
    assert client.zscore("dispatch:jobs", ran.id) is None
    assert client.hget("dispatch:dead", failed.id) is None
    # Run by alpha's worker only; beta's and the session's never saw them.
    for job in (ran, failed):
        assert job.id in namespaced["alpha"].output()
        assert job.id not in namespaced["beta"].output()
        assert job.id not in worker.output()
    # Each namespace sees its own workers.
    alpha_workers = set(live_workers(client))
    # (the node's Celery process and its direct consumers, ``alpha-direct<i>@host``)
    assert alpha_workers and all(name.startswith(("alpha@", "alpha-direct"))
                                 for name in alpha_workers), alpha_workers
    _as("beta", redis_server.url, tmp_path)
    assert client.get(keys.record(ran.id)) is None  # beta cannot read alpha's record
    assert all(name.startswith(("beta@", "beta-direct")) for name in live_workers(client))
    assert json.loads(client.get("alpha:" + "celery-task-meta-" + ran.id) or "{}")["status"] \
        == "SUCCESS"
