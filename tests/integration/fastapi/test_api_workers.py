"""Several API processes (``python -m api --workers 2``): whichever process answers,
``/healthz``, ``/metrics``, ``GET /routes`` and the dashboard show every process's
inline executor, per process and summed."""

from __future__ import annotations

import re
import signal
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import redis

from dispatcher.store.embedded import free_port
from tests.integration.conftest import Process, wait_http
from tests.support import wait_until


@pytest.fixture
def two_process_api(service_env: dict[str, str], tmp_path: Path) -> Iterator[str]:
    port = free_port()
    # Its own namespace: other API processes of the suite on this Redis are not its fleet.
    env = {**service_env, "DISPATCH_NAMESPACE": f"fleet-{uuid.uuid4().hex[:8]}"}
    process = Process([sys.executable, "-m", "api", "--workers", "2", "--port", str(port),
                       "--concurrency", "1"], env, tmp_path / "api.log")
    url = f"http://127.0.0.1:{port}"
    try:
        wait_http(f"{url}/healthz", timeout=60)
        yield url
    finally:
        process.stop(signal.SIGINT, timeout=60)


def _get(url: str) -> httpx.Response:
    with httpx.Client(timeout=10) as client:  # a new connection: any process answers
        return client.get(url)


def _poll(url: str, condition, timeout: float = 60.0):  # type: ignore[no-untyped-def]
    """The first answer from ``url`` that meets ``condition``."""
    answers = []
    wait_until(lambda: condition(answers.append(_get(url).json()) or answers[-1]),
               f"an answer of {url} as expected", timeout, every=0.2)
    return answers[-1]


def test_every_process_answers_for_the_fleet(two_process_api: str, broker: str) -> None:
    url = two_process_api
    health = _poll(f"{url}/healthz", lambda b: b["inline_fleet"]["total"]["processes"] == 2)
    assert len({p["process"] for p in health["inline_fleet"]["processes"]}) == 2
    key = f"fleet:{uuid.uuid4()}"
    jobs = 4
    for _ in range(jobs):
        with httpx.Client(timeout=10) as client:
            answer = client.post(f"{url}/tasks/samples.hold_inline", json={"key": key})
            assert answer.status_code == 202 and answer.json()["route"] == "inline"

    def held(body: dict) -> bool:  # type: ignore[type-arg]
        total = body["inline_fleet"]["total"]
        return bool(total["processes"] == 2 and total["running"] + total["waiting"] == jobs)

    for _ in range(4):  # several answers, from whichever process the connection reached
        _poll(f"{url}/healthz", held)
    routes = _poll(f"{url}/routes", lambda rows: held(rows[0]))
    assert routes[0]["inline_fleet"]["total"]["processes"] == 2
    def fleet_in_metrics() -> bool:
        # The answering process may not have seen the other's latest report yet.
        metrics = _get(f"{url}/metrics").text
        processes = set(re.findall(
            r'dispatch_inline_fleet\{process="([^"]+)",state="running"\}', metrics))
        summed = [float(v) for state in ("running", "waiting") for v in re.findall(
            rf'dispatch_inline_fleet_sum\{{state="{state}"\}} (\S+)', metrics)]
        return len(processes) == 2 and sum(summed) == jobs

    wait_until(fleet_in_metrics, "both processes and every held job in /metrics",
               every=0.2)
    redis.Redis.from_url(broker).set(f"{key}:release", "1", ex=600)
    _poll(f"{url}/healthz", lambda b: b["inline_fleet"]["total"]["running"]
          + b["inline_fleet"]["total"]["waiting"] == 0)
