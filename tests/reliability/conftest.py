"""Fault-injection harness: a real Redis (append-only, fsync always), real worker and
API processes in their own process groups, faults by signal, and a ledger file.

``RELIABILITY_SCALE=full`` (``make reliability``) runs the issue's full numbers;
the default small scale runs inside ``make test``. Each scenario adds one row to
the table printed at the end of the session.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from dispatcher import DispatcherSettings, configure
from dispatcher.store.embedded import EmbeddedRedis, free_port
from tests import summary
from tests.support import Process, wait_http

FULL = os.environ.get("RELIABILITY_SCALE", "small") == "full"
#: The workers' consumer in every scenario that does not choose one itself (the
#: product's default, ``direct``, unless ``RELIABILITY_CONSUMER`` names another).
CONSUMER = os.environ.get("RELIABILITY_CONSUMER", "direct")


def scale(full: int, small: int) -> int:
    return full if FULL else small


@dataclass
class Cluster:
    """Redis + worker + API for one scenario, all stopped at the end by pid."""

    root: Path
    #: The suite's short timeouts (visibility 10 s, lost-job requeue 5 s); False: every
    #: setting at its default, as users run it.
    short: bool = True
    #: ``DISPATCH_WORKER_CONSUMER`` of the workers it starts (``RELIABILITY_CONSUMER``
    #: runs every scenario on another one: ``RELIABILITY_CONSUMER=celery make reliability``).
    consumer: str = CONSUMER
    redis: EmbeddedRedis = field(init=False)
    workers: list[Process] = field(default_factory=list)
    apis: list[Process] = field(default_factory=list)
    api_url: str = ""

    def __post_init__(self) -> None:
        self.redis = EmbeddedRedis(fsync="always").start()
        self.use_broker({"DISPATCH_BROKER_URL": self.redis.url}, broker_url=self.redis.url)

    def use_broker(self, env: dict[str, str], **settings: Any) -> None:
        """The processes' environment, with the broker's variables ``env``, and this
        process's settings, with the broker's ``settings`` (a subclass on another kind of
        Redis calls this instead of starting the embedded server)."""
        self.ledger = self.root / "ledger.txt"
        self.env = {k: v for k, v in os.environ.items()
                    if not (k.startswith("DISPATCH_") or k == "REDIS_URL")}
        self.env.update(
            env,
            DISPATCH_TASK_MODULES="tests.reliability.tasks",
            DISPATCH_SPOOL_PATH=str(self.root / "spool.sqlite3"),
            DISPATCH_LOG_FORMAT="json",
            DISPATCH_METRICS_PORT="0",
            RELIABILITY_LEDGER=str(self.ledger),
            PYTHONUNBUFFERED="1",
        )
        if self.short:
            self.env.update(DISPATCH_VISIBILITY_TIMEOUT="10", DISPATCH_REQUEUE_LOST_AFTER="5")
        os.environ["RELIABILITY_LEDGER"] = str(self.ledger)
        configure(DispatcherSettings(
            **settings, visibility_timeout=10 if self.short else 3600,
            spool_path=str(self.root / "test-spool.sqlite3"), _env_file=None,
        ))  # type: ignore[call-arg]

    def start_worker(self, concurrency: int = 2, hostname: str | None = None,
                     **env: str) -> Process:
        return self.start_workers([hostname], concurrency, **env)[0]

    def start_workers(self, hostnames: list[str | None], concurrency: int = 2,
                      **env: str) -> list[Process]:
        """One worker per hostname (None: Celery's default), started side by side and
        each waited for until ready."""
        started = []
        for hostname in hostnames:
            log = self.root / f"worker{len(self.workers)}.log"
            name = ["--hostname", hostname] if hostname else []
            worker = Process([sys.executable, "-m", "worker", "--concurrency",
                              str(concurrency), *name],
                             {**self.env, "DISPATCH_WORKER_CONSUMER": self.consumer, **env}, log)
            self.workers.append(worker)  # stopped by close() even if it never gets ready
            started.append(worker)
        for worker in started:
            worker.wait_for_output(" ready.", timeout=60)
        return started

    def kill_worker(self, worker: Process) -> None:
        """SIGKILL the worker's whole process group: parent and pool children at once."""
        os.killpg(worker.pid, signal.SIGKILL)
        worker.popen.wait()

    def start_api(self, port: int | None = None, app: str = "api.main:app",
                  **env: str) -> Process:
        """An API process serving ``app`` on ``port`` (default: a free one); its address
        is ``api.url`` (and ``api_url``, the last one started)."""
        if self.short:
            # The API also loads the example tasks (timeouts up to 60 s); the short
            # visibility timeout only matters to consumers, so the API keeps a longer one.
            env = {"DISPATCH_VISIBILITY_TIMEOUT": "120", **env}
        port = port or free_port()
        api = Process(
            [sys.executable, "-m", "uvicorn", app, "--host", "127.0.0.1",
             "--port", str(port)],
            {**self.env, **env}, self.root / f"api{len(self.apis)}.log",
        )
        api.url = self.api_url = f"http://127.0.0.1:{port}"
        self.apis.append(api)  # stopped by close() even if it never answers
        wait_http(f"{self.api_url}/healthz")
        # Ours answered, not another server that took the port meanwhile.
        api.wait_for_output("Uvicorn running on", timeout=30)
        return api

    def events(self, kind: str = "done") -> Counter[str]:
        if not self.ledger.exists():
            return Counter()
        return Counter(line.split()[1] for line in self.ledger.read_text().splitlines()
                       if line.startswith(kind + " "))

    def wait_done(self, jobs: set[str], timeout: float) -> Counter[str]:
        deadline = time.monotonic() + timeout
        while True:
            done = self.events()
            if jobs <= set(done) or time.monotonic() > deadline:
                return done
            time.sleep(0.2)

    def diagnose(self, missing: set[str]) -> str:
        """What Redis and the logs say about jobs that did not complete."""
        import json as _json

        import redis as _redis

        lines = [f"missing: {sorted(missing)}"]
        try:
            client = _redis.Redis.from_url(self.redis.url, socket_timeout=2)
            for raw in client.hvals("dispatch:dead"):
                entry = _json.loads(raw)
                if entry.get("arguments", {}).get("job") in missing:
                    lines.append(f"dead letter: {entry['reason']} {entry['error']} "
                                 f"attempts={entry['attempts']}")
        except Exception as exc:
            lines.append(f"(redis: {exc})")
        for process in self.workers + self.apis:
            errors = [ln for ln in process.output().splitlines()
                      if "ERROR" in ln or "WARNING" in ln or "Traceback" in ln]
            lines.append(f"{process.log.name}: {len(errors)} warnings/errors")
            lines += errors[-15:]
        return "\n".join(lines)

    def close(self) -> None:
        for process in self.workers + self.apis:
            if process.popen.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
                process.popen.wait()
        self.redis.resume()
        self.redis.close()


@pytest.fixture
def cluster(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Cluster]:
    """A cluster with the suite's short timeouts; ``indirect`` parameter "defaults":
    every setting at its default; "<consumer>-short" or "<consumer>-defaults": the same,
    with workers on that consumer (``DISPATCH_WORKER_CONSUMER``); "direct": direct
    consumers with short timeouts."""
    param = getattr(request, "param", "short")
    consumer, _, timeouts = param.rpartition("-") if "-" in param else ("", "", param)
    if param == "direct":
        consumer, timeouts = "direct", "short"
    c = Cluster(tmp_path, short=timeouts == "short",
                consumer=consumer or CONSUMER)
    try:
        yield c
    finally:
        c.close()


def on(cluster: Cluster, scenario: str) -> str:
    """``scenario``, naming Celery's consumer when the cluster's workers run on it."""
    return f"{scenario} [Celery's consumer]" if cluster.consumer == "celery" else scenario


def report(scenario: str, accepted: int, completed: int, lost: int, duplicates: int,
           note: str = "") -> None:
    summary.add("reliability", {"scenario": scenario, "accepted": accepted,
                                "completed": completed, "lost": lost,
                                "duplicates": duplicates, "note": note})
