"""Real parts for the integration tests: a Redis server, a Celery worker process and
an API process, all started here on 127.0.0.1 and stopped by pid."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from dispatcher import DispatcherSettings, configure
from dispatcher.store.embedded import EmbeddedRedis, free_port
from tests.support import ROOT, Process, poll_state, wait_http

__all__ = ["ROOT", "Process", "poll_state", "wait_http"]

TASK_MODULES = "api.tasks,tests.integration.sample_tasks"


@pytest.fixture(scope="session")
def redis_server() -> Iterator[EmbeddedRedis]:
    with EmbeddedRedis() as server:
        yield server


@pytest.fixture(scope="session")
def service_env(redis_server: EmbeddedRedis, tmp_path_factory: pytest.TempPathFactory
                ) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not (k.startswith("DISPATCH_") or k == "REDIS_URL")}
    env.update(
        DISPATCH_BROKER_URL=redis_server.url,
        DISPATCH_TASK_MODULES=TASK_MODULES,
        DISPATCH_LOG_FORMAT="json",
        PYTHONUNBUFFERED="1",
        API_DATA_DIR=str(tmp_path_factory.mktemp("api-data")),
        DISPATCH_SPOOL_PATH=str(tmp_path_factory.mktemp("spool") / "spool.sqlite3"),
        # Only the session worker serves /metrics (on its own free port): other workers
        # started by tests would fight over the default 9808.
        DISPATCH_METRICS_PORT="0",
        # Listed by GET /schedules and the dashboard; never due while the suite runs.
        DISPATCH_SCHEDULES='[{"task": "samples.echo", "cron": "0 0 1 1 *", '
                           '"kwargs": {"value": {"n": 1}}}]',
    )
    return env


@pytest.fixture(scope="session")
def worker_metrics_url() -> str:
    """The session worker's Prometheus endpoint."""
    return f"http://127.0.0.1:{free_port()}/metrics"


@pytest.fixture(scope="session")
def worker(service_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory,
           worker_metrics_url: str) -> Iterator[Process]:
    log = tmp_path_factory.mktemp("worker") / "worker.log"
    port = worker_metrics_url.split(":")[-1].split("/")[0]
    env = {**service_env, "DISPATCH_METRICS_PORT": port}
    process = Process([sys.executable, "-m", "worker", "--concurrency", "2"], env, log)
    try:
        process.wait_for_output(" ready.", timeout=60)
        yield process
    finally:
        process.stop()


@pytest.fixture(scope="session")
def api_server(service_env: dict[str, str], worker: Process,
               tmp_path_factory: pytest.TempPathFactory) -> Iterator[Process]:
    """The example API under uvicorn; ``.url`` is its base URL."""
    port = free_port()
    log = tmp_path_factory.mktemp("apiserver") / "api.log"
    process = Process(
        [sys.executable, "-m", "uvicorn", "api.main:app", "--host", "127.0.0.1",
         "--port", str(port)],
        service_env, log,
    )
    process.url = f"http://127.0.0.1:{port}"
    try:
        wait_http(f"{process.url}/healthz")
        yield process
    finally:
        process.stop()


@pytest.fixture(scope="session")
def api_url(api_server: Process) -> str:
    return api_server.url


@pytest.fixture(scope="session")
def spool_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("test-spool")


@pytest.fixture
def broker(redis_server: EmbeddedRedis, worker: Process, spool_dir: Path) -> Iterator[str]:
    """This test process dispatches through the same Redis the worker consumes."""
    import tests.integration.sample_tasks  # noqa: F401  (registers the sample tasks)

    configure(DispatcherSettings(broker_url=redis_server.url, _env_file=None,  # type: ignore[call-arg]
                                 spool_path=str(spool_dir / "test-process.sqlite3")))
    yield redis_server.url


