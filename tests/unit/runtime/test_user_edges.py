"""Edges a new user hit: the job's own context, one record shape, one 422 shape,
isolated settings for tests, and event fields in a plain script."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from dispatcher import JobInfo, RetryPolicy, current_job, get_settings, task
from dispatcher.fastapi import install, jobs_router
from dispatcher.runtime.container import current
from dispatcher.testing import isolated_settings, reset, wait_for_inline_jobs

ROOT = Path(__file__).resolve().parents[3]


def test_current_job_is_none_outside_a_job() -> None:
    assert current_job() is None


def test_a_sync_task_reads_its_own_job_on_every_attempt() -> None:
    seen: list[JobInfo | None] = []

    @task(name="edges.whoami", retry=RetryPolicy(max_attempts=2, base_delay=0, max_delay=0,
                                                 jitter=False))
    def whoami() -> None:
        seen.append(current_job())
        if len(seen) == 1:
            raise ValueError("again")

    handle = whoami.dispatch()
    wait_for_inline_jobs()
    assert [s.attempt if s else None for s in seen] == [1, 2]
    info = seen[-1]
    assert info is not None
    assert (info.id, info.name, info.route, info.max_attempts, info.request_id) == (
        handle.id, "edges.whoami", "inline", 2, None)
    whoami()  # called directly: no job
    assert seen[-1] is None


def test_an_async_task_and_a_timed_task_read_their_job() -> None:
    seen: list[JobInfo | None] = []

    @task(name="edges.async_whoami")
    async def async_whoami() -> None:
        seen.append(current_job())

    @task(name="edges.timed_whoami", timeout=5)
    def timed_whoami() -> None:
        seen.append(current_job())

    first, second = async_whoami.dispatch(), timed_whoami.dispatch()
    wait_for_inline_jobs()
    assert sorted((s.id, s.name) for s in seen if s) == sorted(
        [(first.id, "edges.async_whoami"), (second.id, "edges.timed_whoami")])


def _app() -> FastAPI:
    @task(name="edges.greet")
    def greet(name: str, times: int = 1) -> str:
        return f"hello {name} x{times}"

    app = FastAPI()
    install(app)
    app.include_router(jobs_router)

    @app.post("/greet")
    async def post_greet(body: dict[str, Any]) -> dict[str, str]:
        return {"task_id": greet.dispatch(**body).id}

    return app


def test_handle_record_and_the_endpoint_give_the_same_shape() -> None:
    with TestClient(_app()) as client:
        task_id = client.post("/greet", json={"name": "ada", "times": 2}).json()["task_id"]
        wait_for_inline_jobs()
        from dispatcher import TaskHandle

        record = TaskHandle.lookup(task_id).record()  # type: ignore[union-attr]
        served = client.get(f"/tasks/{task_id}").json()
    assert record is not None
    assert record == served
    assert record["state"] == "SUCCESS" and record["result"] == "hello ada x2"
    assert [h["state"] for h in record["history"]] == ["PENDING", "STARTED", "SUCCESS"]


def test_every_422_has_fastapis_shape() -> None:
    with TestClient(_app()) as client:
        bad_argument = client.post("/greet", json={"name": "ada", "times": "many"})
        bad_body = client.post("/greet", content=b"not json",
                               headers={"content-type": "application/json"})
        bad_query = client.get("/tasks", params={"limit": 0})
        unknown_task = client.post("/tasks/edges.greet", json={"nobody": 1})
    for answer in (bad_argument, bad_body, bad_query, unknown_task):
        assert answer.status_code == 422, answer.text
        detail = answer.json()["detail"]
        assert isinstance(detail, list) and detail
        assert all({"loc", "msg", "type"} <= set(item) for item in detail), detail
    assert bad_argument.json()["detail"][0]["loc"] == ["arguments", "times"]
    assert bad_argument.json()["detail"][0]["type"] == "task_validation"
    assert ["arguments", "nobody"] in [item["loc"] for item in unknown_task.json()["detail"]]


def test_isolated_settings_ignore_the_environment_and_dotenv(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("DISPATCH_BROKER_URL", "redis://127.0.0.1:1/0")
    monkeypatch.setenv("REDIS_URL", "redis://127.0.0.1:2/0")
    monkeypatch.setenv("DISPATCH_INLINE_CONCURRENCY", "7")
    (tmp_path / ".env").write_text("DISPATCH_RESULT_BACKEND_URL=redis://127.0.0.1:3/0\n")
    monkeypatch.chdir(tmp_path)
    settings = isolated_settings(inline_hold_request=True)
    assert get_settings() is settings
    assert (settings.broker_url, settings.result_backend_url) == (None, None)
    assert (settings.inline_concurrency, settings.inline_hold_request) == (4, True)


def test_reset_forgets_every_process_wide_object() -> None:
    @task(name="edges.noop")
    def noop() -> None: ...

    noop.dispatch()
    wait_for_inline_jobs()
    before = current()
    executor = before.inline.executor
    reset()
    after = current()
    assert after is not before and after.inline.executor is not executor
    assert after.records.load(noop.dispatch().id) is not None


def test_a_plain_script_prints_each_events_fields() -> None:
    script = textwrap.dedent("""
        from dispatcher import task
        from dispatcher.testing import isolated_settings, wait_for_inline_jobs

        isolated_settings()

        @task(name="script.add")
        def add(a: int, b: int) -> int:
            return a + b

        add.dispatch(2, 3)
        wait_for_inline_jobs()
    """)
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True,
                          text=True, timeout=60, check=True)
    lines = [line for line in done.stderr.splitlines() if "task.succeeded" in line]
    assert len(lines) == 1, done.stderr
    assert "task_name=script.add" in lines[0] and "route=inline" in lines[0]
    assert "attempt=1" in lines[0] and "duration_ms=" in lines[0]


def test_once_the_script_configures_logging_the_events_go_there_once() -> None:
    script = textwrap.dedent("""
        import logging, sys
        from dispatcher import task
        from dispatcher.testing import isolated_settings, wait_for_inline_jobs

        isolated_settings()

        @task(name="script.mul")
        def mul(a: int, b: int) -> int:
            return a * b

        mul.dispatch(2, 3)
        wait_for_inline_jobs()
        logging.basicConfig(stream=sys.stdout, level=logging.INFO, format="APP %(message)s")
        mul.dispatch(4, 5)
        wait_for_inline_jobs()
    """)
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True,
                          text=True, timeout=60, check=True)
    assert len([x for x in done.stderr.splitlines() if "task.succeeded" in x]) == 1
    assert [x for x in done.stdout.splitlines() if "task.succeeded" in x] == [
        "APP task.succeeded"]


def test_a_decision_for_other_settings_never_steers_a_dispatch() -> None:
    from dispatcher import BrokerUnavailable, configure
    from tests.unit.helpers import unit_settings

    @task(name="edges.steer")
    def steer() -> None: ...

    configure(unit_settings(force_route="celery"))  # no broker: Celery cannot take it
    assert steer.route_for(unit_settings()).route == "inline"
    with pytest.raises(BrokerUnavailable):
        steer.dispatch()


def test_the_inline_fast_path_follows_a_reset() -> None:
    @task(name="edges.fast")
    def fast() -> None: ...

    fast.dispatch()
    assert fast._inline_plan is not None and fast._inline_plan.route is current().inline
    reset()
    fast.dispatch()  # the stale plan is not used; this dispatch makes a new one
    fast.dispatch()
    wait_for_inline_jobs()
    assert fast._inline_plan is not None and fast._inline_plan.route is current().inline
