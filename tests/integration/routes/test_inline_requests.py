"""Inline jobs inside FastAPI requests: after the response, in order, per request.

These run an app in-process through Starlette's TestClient with the real executor;
job records go to the real Redis.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from typing import Annotated, Any

import pytest
from fastapi import BackgroundTasks, Depends, FastAPI
from fastapi.testclient import TestClient
from starlette.types import Message, Receive, Scope, Send

from dispatcher import DispatcherSettings, TaskHandle, configure, get_settings, task
from dispatcher.fastapi import install
from dispatcher.testing import capture_dispatches, wait_for_inline_jobs
from tests.integration import sample_tasks as samples

events: list[tuple[str, Any]] = []
lock = threading.Lock()


def log(kind: str, value: Any = None) -> None:
    with lock:
        events.append((kind, value))


@task(name="inline_it.step")
def step(label: str, pause: float = 0.0) -> None:
    time.sleep(pause)
    log("job", label)


@task(name="inline_it.broken")
def broken(label: str) -> None:
    log("job", label)
    raise ValueError("this job fails")


def plain_background(label: str) -> None:
    log("background", label)


class ResponseSentProbe:
    """Outermost ASGI wrapper: notes when the final response body left the app."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def probe(message: Message) -> None:
            await send(message)
            if message["type"] == "http.response.body" and not message.get("more_body"):
                log("response_sent")

        await self.app(scope, receive, probe)


def sync_dependency() -> str:
    step.dispatch("from-sync-dependency")
    return "sync"


async def sub_dependency() -> str:
    step.dispatch("from-sub-dependency")
    return "sub"


async def async_dependency(sub: Annotated[str, Depends(sub_dependency)]) -> str:
    step.dispatch("from-async-dependency")
    return "async"


def build_app() -> FastAPI:
    app = FastAPI()
    install(app)

    @app.post("/chain")
    async def chain(background: BackgroundTasks) -> dict[str, list[str]]:
        handles = [
            step.dispatch("first", pause=0.2),
            broken.dispatch("second"),
            step.dispatch("third"),
        ]
        background.add_task(plain_background, "user-task")
        return {"ids": [h.id for h in handles]}

    @app.post("/deps")
    def with_dependencies(
        a: Annotated[str, Depends(sync_dependency)],
        b: Annotated[str, Depends(async_dependency)],
    ) -> dict[str, str]:
        step.dispatch("from-endpoint")
        return {"a": a, "b": b}

    @app.post("/explode")
    async def explode() -> None:
        step.dispatch("never-runs")
        raise RuntimeError("endpoint failed after dispatching")

    @app.post("/slow")
    async def slow(seconds: float) -> dict[str, str]:
        return {"id": step.dispatch("slow", pause=seconds).id}

    return app


@pytest.fixture
def app(broker: str) -> Iterator[FastAPI]:
    events.clear()
    yield build_app()
    wait_for_inline_jobs(timeout=10)


def test_jobs_start_after_the_response_in_dispatch_order(app: FastAPI) -> None:
    with TestClient(ResponseSentProbe(app)) as client:  # type: ignore[arg-type]
        response = client.post("/chain")
        assert response.status_code == 200
        wait_for_inline_jobs(timeout=10)
    kinds = [kind for kind, _ in events]
    assert kinds.index("response_sent") < kinds.index("job")
    jobs = [value for kind, value in events if kind == "job"]
    assert jobs == ["first", "second", "third"]  # a failing job skips nothing after it
    assert ("background", "user-task") in events  # the request's own BackgroundTasks ran
    states = [TaskHandle(i, "", "inline").state() for i in response.json()["ids"]]
    assert states == ["SUCCESS", "FAILURE", "SUCCESS"]


def test_dispatch_from_dependencies_attaches_to_the_same_request(app: FastAPI) -> None:
    with TestClient(app) as client, capture_dispatches() as handles:
        response = client.post("/deps")
        assert response.status_code == 200
        wait_for_inline_jobs(timeout=10)
    request_id = response.headers["x-request-id"]
    records = [h.record() for h in handles]
    assert all(r is not None and r["request_id"] == request_id for r in records)
    jobs = [value for kind, value in events if kind == "job"]
    # FastAPI resolves the dependencies in declaration order; the jobs run in that order.
    assert jobs == ["from-sync-dependency", "from-sub-dependency",
                    "from-async-dependency", "from-endpoint"]


def test_jobs_of_a_failed_request_are_recorded_not_silently_dropped(app: FastAPI) -> None:
    with TestClient(app, raise_server_exceptions=False) as client, \
            capture_dispatches() as handles:
        assert client.post("/explode").status_code == 500
    assert [kind for kind, _ in events if kind == "job"] == []
    record = handles[0].record()
    assert record is not None
    assert (record["state"], record["reason"]) == ("FAILURE", "request_failed")


def test_hold_request_setting_keeps_tutorial_style_tests_passing(broker: str) -> None:
    configure(get_settings(), inline_hold_request=True)
    events.clear()
    with TestClient(build_app()) as client:
        client.post("/chain")
        # Like plain BackgroundTasks: the side effects are there when post() returns.
        assert [v for k, v in events if k == "job"] == ["first", "second", "third"]


def test_shutdown_drains_within_the_grace_period(broker: str) -> None:
    configure(get_settings(), shutdown_grace=5.0)
    events.clear()
    with TestClient(build_app()) as client:
        job_id = client.post("/slow", params={"seconds": 0.5}).json()["id"]
    # Leaving the client ran the lifespan shutdown, which waited for the job.
    assert TaskHandle(job_id, "", "inline").state() == "SUCCESS"


def test_shutdown_hands_unfinished_jobs_to_celery(broker: str) -> None:
    configure(get_settings(), shutdown_grace=0.2)
    key = f"handover:{uuid.uuid4()}"
    app = FastAPI()
    install(app)

    @app.post("/slow")
    def slow() -> dict[str, str]:
        return {"id": samples.slow_inline.dispatch(key, 1.0).id}

    with TestClient(app) as client:
        job_id = client.post("/slow").json()["id"]
    handle = TaskHandle(job_id, "samples.slow_inline", "celery")
    assert handle.get(timeout=20) is None  # the worker ran it after the hand-over
    record = handle.record()
    assert record is not None and record["route"] == "celery"
    assert "done" in [e["label"] for e in samples.entries(key)]


def test_without_a_broker_unfinished_jobs_are_recorded_as_failed() -> None:
    configure(DispatcherSettings(broker_url=None, shutdown_grace=0.2,
                                 _env_file=None))  # type: ignore[call-arg]
    events.clear()
    with TestClient(build_app()) as client:
        job_id = client.post("/slow", params={"seconds": 1.0}).json()["id"]
    record = TaskHandle(job_id, "", "inline").record()
    assert record is not None
    assert (record["state"], record["reason"]) == ("FAILURE", "shutdown")
    wait_for_inline_jobs(timeout=5)


def test_jobs_pinned_inline_are_not_handed_over(broker: str) -> None:
    configure(get_settings(), shutdown_grace=0.2)
    key = f"pinned:{uuid.uuid4()}"
    app = FastAPI()
    install(app)

    @app.post("/pinned")
    def pinned() -> dict[str, str]:
        return {"id": samples.slow_inline.options(route="inline").dispatch(key, 1.0).id}

    with TestClient(app) as client:
        job_id = client.post("/pinned").json()["id"]
    record = TaskHandle(job_id, "samples.slow_inline", "inline").record()
    assert record is not None
    assert (record["state"], record["route"], record["reason"]) == (
        "FAILURE", "inline", "shutdown")
    wait_for_inline_jobs(timeout=5)
