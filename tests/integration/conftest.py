"""Real parts for the integration tests: a Redis server, a Celery worker process and
an API process, all started here on 127.0.0.1 and stopped by pid."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from dispatcher import DispatcherSettings, configure
from dispatcher.embedded import EmbeddedRedis, free_port

ROOT = Path(__file__).resolve().parents[2]
TASK_MODULES = "api.tasks,tests.integration.sample_tasks"


class Process:
    """A child process with its output in a file we can read."""

    def __init__(self, args: list[str], env: dict[str, str], log: Path) -> None:
        self.log = log
        self.url = ""
        with log.open("wb") as out:
            self.popen = subprocess.Popen(
                args, env=env, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    @property
    def pid(self) -> int:
        return self.popen.pid

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_for_output(self, text: str, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while text not in self.output():
            if self.popen.poll() is not None:
                raise RuntimeError(f"process exited early:\n{self.output()[-3000:]}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"{text!r} not seen in:\n{self.output()[-3000:]}")
            time.sleep(0.1)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20.0) -> int:
        if self.popen.poll() is None:
            self.popen.send_signal(sig)
            try:
                self.popen.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()
        return self.popen.returncode


def wait_http(url: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"{url} did not answer")
        time.sleep(0.1)


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
        API_NOTIFICATIONS_FILE=str(tmp_path_factory.mktemp("api") / "notifications.log"),
    )
    return env


@pytest.fixture(scope="session")
def worker(service_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory
           ) -> Iterator[Process]:
    log = tmp_path_factory.mktemp("worker") / "worker.log"
    process = Process([sys.executable, "-m", "worker", "--concurrency", "2"], service_env, log)
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


@pytest.fixture
def broker(redis_server: EmbeddedRedis, worker: Process) -> Iterator[str]:
    """This test process dispatches through the same Redis the worker consumes."""
    import tests.integration.sample_tasks  # noqa: F401  (registers the sample tasks)

    configure(DispatcherSettings(broker_url=redis_server.url, _env_file=None))  # type: ignore[call-arg]
    yield redis_server.url


def poll_state(client: httpx.Client, base: str, task_id: str, states: set[str],
               timeout: float = 20.0) -> dict[str, object]:
    deadline = time.monotonic() + timeout
    while True:
        body = client.get(f"{base}/tasks/{task_id}").json()
        if body.get("state") in states:
            return dict(body)
        if time.monotonic() > deadline:
            raise TimeoutError(f"task {task_id} stuck in {body}")
        time.sleep(0.05)
