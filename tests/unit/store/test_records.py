"""Job records on the inline route (in-memory store): history, timings, progress,
scrubbed secrets, listings with filters and cursors, and the operator endpoints."""

from __future__ import annotations

import contextlib
import json
import time
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from pydantic import SecretStr

from dispatcher import RetryPolicy, TaskFailed, progress, task
from dispatcher.fastapi import install
from dispatcher.fastapi import jobs_router as router
from dispatcher.ops.jobs import InvalidCursor, JobPage, get_job
from dispatcher.ops.jobs import list_jobs as list_store_jobs
from dispatcher.runtime.container import current


def list_jobs(**options: Any) -> JobPage:
    """A listing of the runtime's record store."""
    return list_store_jobs(current().records, **options)


def _job(handle_id: str) -> dict[str, Any]:
    view = get_job(current().records, handle_id)
    assert view is not None
    return view


def test_history_and_timings_of_a_successful_job() -> None:
    @task(name="unit.records.ok")
    def ok(x: int) -> int:
        time.sleep(0.02)
        return x * 2

    handle = ok.dispatch(21)
    assert handle.get(timeout=5) == 42
    view = _job(handle.id)
    assert [h["state"] for h in view["history"]] == ["PENDING", "STARTED", "SUCCESS"]
    times = [h["at"] for h in view["history"]]
    assert times == sorted(times)
    assert view["state"] == "SUCCESS" and view["route"] == "inline"
    assert view["result"] == 42 and view["result_summary"] == "42"
    assert view["duration_ms"] >= 20
    assert 0 <= view["queue_wait_ms"] < 5000
    assert view["dispatched_at"] <= view["started_at"] <= view["finished_at"]


def test_history_records_each_retry_with_its_attempt() -> None:
    runs: list[int] = []

    @task(name="unit.records.flaky",
          retry=RetryPolicy(max_attempts=3, base_delay=0.01, jitter=False))
    def flaky() -> str:
        runs.append(1)
        if len(runs) < 3:
            raise ConnectionError("not yet")
        return "done"

    handle = flaky.dispatch()
    assert handle.get(timeout=5) == "done"
    history = _job(handle.id)["history"]
    assert [(h["state"], h["attempt"]) for h in history] == [
        ("PENDING", 1), ("STARTED", 1), ("RETRY", 1), ("STARTED", 2), ("RETRY", 2),
        ("STARTED", 3), ("SUCCESS", 3),
    ]


def test_queue_wait_of_a_delayed_job_counts_from_when_it_was_due() -> None:
    @task(name="unit.records.later")
    def later() -> None: ...

    handle = later.options(countdown=0.3).dispatch()
    handle.get(timeout=5)
    view = _job(handle.id)
    assert view["started_at"] - view["dispatched_at"] >= 0.3
    assert view["queue_wait_ms"] < 250  # the countdown itself is not waiting


def test_progress_reaches_the_record_and_stays_after_success() -> None:
    seen: list[dict[str, Any] | None] = []

    @task(name="unit.records.progress")
    def steps(n: int) -> int:
        for i in range(1, n + 1):
            assert progress(i, n, f"step {i}") is True
        return n

    handle = steps.dispatch(4)
    assert handle.get(timeout=5) == 4
    seen.append(_job(handle.id)["progress"])
    assert seen[0] is not None
    assert (seen[0]["current"], seen[0]["total"], seen[0]["percent"]) == (4, 4, 100.0)
    assert seen[0]["message"] == "step 4"
    # progress updates are not state changes: the history stays short
    assert [h["state"] for h in _job(handle.id)["history"]] == ["PENDING", "STARTED", "SUCCESS"]


def test_progress_in_an_async_task_and_in_a_timed_sync_task() -> None:
    @task(name="unit.records.progress_async")
    async def a() -> None:
        progress(1, 2)

    @task(name="unit.records.progress_timed", timeout=5)
    def b() -> None:
        progress(3, 4, "in a timed thread")

    ha, hb = a.dispatch(), b.dispatch()
    ha.get(timeout=5)
    hb.get(timeout=5)
    assert _job(ha.id)["progress"]["percent"] == 50.0
    assert _job(hb.id)["progress"]["percent"] == 75.0


def test_progress_outside_a_job_is_a_no_op_and_bad_values_are_refused() -> None:
    assert progress(1, 2) is False
    with pytest.raises(ValueError, match="current"):
        progress(-1)
    with pytest.raises(ValueError, match="total"):
        progress(1, 0)
    with pytest.raises(ValueError, match="current"):
        progress("half")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="message"):
        progress(1, 2, message=3)  # type: ignore[arg-type]


def test_secrets_are_scrubbed_from_error_and_traceback(use_settings: Any) -> None:
    use_settings(redact=["pin"])

    @task(name="unit.records.secret")
    def charge(token: SecretStr, pin: str) -> None:
        raise PermissionError(f"declined: {token.get_secret_value()} / pin {pin}")

    handle = charge.dispatch("tok_live_4242", "pin-zq9876")
    with pytest.raises(TaskFailed):
        handle.get(timeout=5)
    view = _job(handle.id)
    dumped = json.dumps(view)
    assert "tok_live_4242" not in dumped and "zq9876" not in dumped
    assert view["error"]["message"] == "declined: *** / pin ***"
    assert "PermissionError: declined: ***" in view["traceback"]


def _dispatch_mix() -> dict[str, list[str]]:
    @task(name="unit.records.list.a")
    def a(i: int) -> int:
        return i

    @task(name="unit.records.list.b")
    def b(i: int) -> int:
        if i % 2:
            raise ValueError("odd")
        return i

    ids: dict[str, list[str]] = {"a": [], "b": []}
    for i in range(6):
        ha, hb = a.dispatch(i), b.dispatch(i)
        ids["a"].append(ha.id)
        ids["b"].append(hb.id)
        for h in (ha, hb):
            with contextlib.suppress(TaskFailed):
                h.get(timeout=5)
    return ids


def test_listing_filters_by_state_name_route_and_since() -> None:
    ids = _dispatch_mix()
    everything = list_jobs(limit=100).items
    assert len(everything) == 12
    stamps = [v["dispatched_at"] for v in everything]
    assert stamps == sorted(stamps, reverse=True)  # newest first
    failed = list_jobs(state="FAILURE", limit=100).items
    assert {v["task_id"] for v in failed} == {ids["b"][i] for i in (1, 3, 5)}
    assert all(v["traceback"] for v in failed)
    by_name = list_jobs(name="unit.records.list.a", limit=100).items
    assert {v["task_id"] for v in by_name} == set(ids["a"])
    assert len(list_jobs(name="unit.records.list.*", limit=100).items) == 12
    assert list_jobs(route="celery", limit=100).items == []
    middle = _job(ids["a"][3])["dispatched_at"]
    recent = list_jobs(since=middle, limit=100).items
    assert {v["task_id"] for v in recent} == {*ids["a"][3:], *ids["b"][3:]}


def test_cursor_pagination_visits_every_job_once() -> None:
    ids = _dispatch_mix()
    seen: list[str] = []
    cursor = None
    pages = 0
    while True:
        page = list_jobs(limit=5, cursor=cursor)
        seen += [v["task_id"] for v in page.items]
        pages += 1
        if page.next_cursor is None:
            break
        cursor = page.next_cursor
    assert sorted(seen) == sorted(ids["a"] + ids["b"])
    assert pages >= 3
    filtered = list_jobs(state="SUCCESS", limit=2)
    rest = list_jobs(state="SUCCESS", limit=100, cursor=filtered.next_cursor)
    assert len(filtered.items) + len(rest.items) == 9


def test_listing_refuses_bad_arguments() -> None:
    with pytest.raises(InvalidCursor):
        list_jobs(cursor="not-a-cursor")
    with pytest.raises(ValueError, match="state"):
        list_jobs(state="DONE")
    with pytest.raises(ValueError, match="route"):
        list_jobs(route="elsewhere")
    with pytest.raises(ValueError, match="limit"):
        list_jobs(limit=0)


@pytest.fixture
def client() -> TestClient:
    app = FastAPI()
    install(app)
    app.include_router(router)
    return TestClient(app)


def test_http_listing_one_job_and_errors(client: TestClient) -> None:
    ids = _dispatch_mix()
    body = client.get("/tasks", params={"state": "FAILURE", "limit": 2}).json()
    assert len(body["items"]) == 2 and body["next_cursor"]
    more = client.get("/tasks", params={"state": "FAILURE", "cursor": body["next_cursor"]})
    assert len(more.json()["items"]) == 1
    one = client.get(f"/tasks/{ids['a'][0]}").json()
    assert one["state"] == "SUCCESS" and one["history"][0]["state"] == "PENDING"
    bad = client.get("/tasks", params={"cursor": "zzz"})
    assert bad.status_code == 422 and bad.json()["detail"][0]["loc"] == ["query", "cursor"]
    assert client.get("/tasks", params={"state": "DONE"}).status_code == 422
    assert client.get("/tasks", params={"since": "yesterday-ish"}).status_code == 422
    iso = client.get("/tasks", params={"since": "2000-01-01T00:00:00Z", "limit": 100})
    assert len(iso.json()["items"]) == 12
    assert client.get("/tasks/no-such-job").status_code == 404
    assert client.get("/tasks/no-such-job/events").status_code == 404


def _read_events(lines: Any) -> list[tuple[str, dict[str, Any]]]:
    events, kind = [], None
    for line in lines:
        if line.startswith("event: "):
            kind = line.removeprefix("event: ")
        elif line.startswith("data: ") and kind is not None:
            events.append((kind, json.loads(line.removeprefix("data: "))))
    return events


def test_event_stream_follows_state_and_progress_until_the_end(client: TestClient) -> None:
    @task(name="unit.records.stream")
    def slow_steps() -> str:
        for i in range(1, 4):
            time.sleep(0.3)
            progress(i, 3)
        return "ok"

    handle = slow_steps.dispatch()
    with client.stream("GET", f"/tasks/{handle.id}/events") as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        events = _read_events(response.iter_lines())
    kinds = [k for k, _ in events]
    assert kinds[-1] == "state" and events[-1][1]["state"] == "SUCCESS"
    assert "progress" in kinds
    percents = [d["progress"]["percent"] for _, d in events if d["progress"]]
    assert percents == sorted(percents) and percents[-1] == 100.0


@pytest.mark.parametrize(
    ("request_id", "queue", "attempt"),
    [(None, None, 1), ("r-1", "emails", 2), ('odd "quoted" \\ \u00e9 id', "q\u00fc", 3)],
)
def test_a_pending_record_from_its_template_equals_the_built_one(
    request_id: str | None, queue: str | None, attempt: int
) -> None:
    from dispatcher.core.job import Job, new_job_id
    from dispatcher.core.record import make_record, pending_json

    @task(name="unit.records.template", retry=RetryPolicy(max_attempts=4))
    def templated(n: int) -> None: ...

    for dispatched_at in (1700000000.123456, 1.0, 1e-7):
        job = Job(new_job_id(), templated.spec, "celery", queue, 7, {"n": 1}, attempt,
                  request_id, dispatched_at)
        assert pending_json(job) == json.dumps(make_record(job, "PENDING"))


def test_a_pending_record_is_right_even_when_a_name_holds_a_template_stand_in() -> None:
    from dispatcher.core.job import Job, new_job_id
    from dispatcher.core.record import make_record, pending_json

    @task(name='unit.records."@@task-id@@"')
    def awkward(n: int) -> None: ...

    job = Job(new_job_id(), awkward.spec, "inline", "@@request-id@@", 5, {"n": 1}, 1,
              "r-2", 1700000000.5)
    assert pending_json(job) == json.dumps(make_record(job, "PENDING"))
