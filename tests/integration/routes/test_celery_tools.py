"""Celery's own tools on jobs our dispatcher publishes and our worker runs: Flower reads
them back from task events (and the result backend), and ``celery inspect`` lists the
registered tasks and the job that is running right now."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

import tests.integration.sample_tasks as samples
from dispatcher.store.embedded import free_port
from tests.support import ROOT, Process, wait_http, wait_until

# Tools started here must not start (or fight over) the worker's metrics endpoint.
TOOL_ENV = {"DISPATCH_METRICS_PORT": "0"}


def _tool_env(service_env: dict[str, str], **extra: str) -> dict[str, str]:
    return {**service_env, **TOOL_ENV, **extra}


@pytest.fixture(scope="module")
def flower(service_env: dict[str, str], worker: Process,
           tmp_path_factory: pytest.TempPathFactory) -> Iterator[Process]:
    """Flower on 127.0.0.1, its HTTP API open without auth; ``.url`` is its base URL.

    As users run it: our workers send no task events until asked (the default
    ``DISPATCH_WORKER_EVENTS=false``, as in Celery), and Flower switches them on by
    remote control (its default ``--enable_events``, every 5 s).
    """
    port = free_port()
    log = tmp_path_factory.mktemp("flower") / "flower.log"
    process = Process(
        [sys.executable, "-m", "celery", "-A", "worker.app", "flower",
         "--address=127.0.0.1", f"--port={port}"],
        _tool_env(service_env, FLOWER_UNAUTHENTICATED_API="true"), log,
    )
    process.url = f"http://127.0.0.1:{port}"
    try:
        wait_http(f"{process.url}/healthcheck", timeout=60)
        yield process
    finally:
        process.stop()


def _wait_for_worker_events(client: httpx.Client, base: str) -> None:
    """Until Flower sees our worker's task events: it has switched them on (by remote
    control, a few seconds after it connects) once a probe job shows up in it."""

    probes: list[str] = []

    def probe_seen() -> bool:
        probe = samples.echo.options(route="celery").dispatch({"probe": 1})
        probe.get(timeout=20)
        probes.append(probe.id)
        return any(client.get(f"{base}/api/task/info/{task_id}").status_code == 200
                   for task_id in probes)

    wait_until(probe_seen, "Flower switching our worker's task events on", every=0.5)


def _flower_task(client: httpx.Client, base: str, task_id: str, state: str,
                 timeout: float = 30.0) -> dict[str, Any]:
    """The task as Flower's API shows it, once Flower has it in ``state``."""
    deadline = time.monotonic() + timeout
    while True:
        response = client.get(f"{base}/api/task/info/{task_id}")
        assert response.status_code in (200, 404), response.text  # 404: not seen yet
        if response.status_code == 200 and response.json().get("state") == state:
            return dict(response.json())
        if time.monotonic() > deadline:
            raise TimeoutError(f"Flower never showed {task_id} {state}: {response.text}")
        time.sleep(0.1)


def test_flower_reads_a_celery_job_back_through_its_http_api(broker: str, flower: Process
                                                              ) -> None:
    with httpx.Client(timeout=10) as client:
        response = client.get(f"{flower.url}/api/workers", params={"status": "true"})
        assert response.status_code == 200, "Flower's API refused an unauthenticated call"
        _wait_for_worker_events(client, flower.url)

        handle = samples.echo.options(route="celery").dispatch({"a": 1, "b": 2})
        assert handle.route == "celery"
        assert handle.get(timeout=20) == {"a": 1, "b": 2}

        info = _flower_task(client, flower.url, handle.id, "SUCCESS")
        assert info["uuid"] == handle.id
        assert info["name"] == "samples.echo"
        assert info["result"] == repr({"a": 1, "b": 2})
        assert info["worker"]  # the worker's hostname, learnt from the events
        assert info["received"] and info["started"] and info["succeeded"]
        assert info["runtime"] is not None and info["runtime"] >= 0
        # Arguments may hold secrets: the message's argsrepr/kwargsrepr hide them.
        assert (info["args"], info["kwargs"]) == ("()", "{...}")

        # The result itself comes from our job record, in Celery's result-backend layout.
        result = client.get(f"{flower.url}/api/task/result/{handle.id}")
        assert result.status_code == 200, result.text
        body = result.json()
        assert (body["task-id"], body["state"]) == (handle.id, "SUCCESS")
        assert body["result"] == {"a": 1, "b": 2}

        listed = client.get(f"{flower.url}/api/tasks", params={"taskname": "samples.echo"})
        assert listed.status_code == 200
        assert handle.id in listed.json()

        # A job that fails for good is a failure in Flower too, not a Celery "success".
        failing = samples.charge.options(route="celery").dispatch(
            "acct-9", "tok_FLOWER_SECRET", pin="4321")
        assert failing.route == "celery"
        failed = _flower_task(client, flower.url, failing.id, "FAILURE")
        assert failed["name"] == "samples.charge"
        assert "PermissionError: card declined for acct-9" in failed["exception"]
        assert "PermissionError" in failed["traceback"]
        assert (failed["retries"], failed["kwargs"]) == (0, "{...}")
        assert "tok_FLOWER_SECRET" not in json.dumps(failed)
        assert "4321" not in json.dumps(failed)
        assert failing.state() == "FAILURE"


def _inspect(service_env: dict[str, str], command: str, timeout: float = 3.0
             ) -> dict[str, Any]:
    """``celery -A worker.app inspect <command> --json``: the replies by worker name."""
    done = subprocess.run(
        [sys.executable, "-m", "celery", "-A", "worker.app", "inspect", command,
         "--json", "--timeout", str(timeout)],
        env=_tool_env(service_env), cwd=ROOT, capture_output=True, text=True,
        timeout=timeout + 60,
    )
    assert done.returncode == 0, f"inspect {command} failed:\n{done.stdout}\n{done.stderr}"
    for line in reversed(done.stdout.splitlines()):
        try:
            replies = json.loads(line)
        except ValueError:
            continue
        if isinstance(replies, dict) and replies and all("@" in k for k in replies):
            return replies
    raise AssertionError(f"no JSON replies from inspect {command}:\n{done.stdout}")


def test_celery_inspect_registered_lists_our_tasks(service_env: dict[str, str],
                                                   worker: Process) -> None:
    replies = _inspect(service_env, "registered")
    for names in replies.values():
        assert {"samples.echo", "samples.slow_inline", "api.tasks.generate_report",
                "api.tasks.write_notification"} <= set(names), names


def test_celery_inspect_active_lists_a_running_job(broker: str, service_env: dict[str, str]
                                                   ) -> None:
    key = f"inspect-{uuid.uuid4().hex}"
    handle = samples.slow_inline.options(route="celery").dispatch(key, 4.0)
    assert handle.route == "celery"
    deadline = time.monotonic() + 20
    while (state := handle.state()) != "STARTED":  # one read per look: no race
        assert state == "PENDING", handle.record()
        assert time.monotonic() < deadline, f"job never started: {handle.record()}"
        time.sleep(0.05)

    replies = _inspect(service_env, "active")
    running = [job for jobs in replies.values() for job in jobs]
    assert handle.id in [job["id"] for job in running], running
    mine = next(job for job in running if job["id"] == handle.id)
    assert mine["name"] == "samples.slow_inline"
    assert mine["time_start"] is not None

    handle.get(timeout=20)
    assert [e["label"] for e in samples.entries(key)] == ["done"]


def test_the_worker_log_has_our_events_and_not_celerys_per_job_lines(
        broker: str, worker: Process) -> None:
    """One log format: Celery's "received" / "succeeded in" lines are off by default
    (``DISPATCH_WORKER_TASK_LOGS``); our task events say the same."""
    handle = samples.echo.options(route="celery").dispatch(value={"n": 3})
    assert handle.get(timeout=60) == {"n": 3}
    worker.wait_for_output(f'"event": "task.succeeded", "task_id": "{handle.id}"')
    assert f"[{handle.id}] received" not in worker.output()
    assert f"[{handle.id}] succeeded in" not in worker.output()
