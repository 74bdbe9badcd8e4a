"""The dashboard's snapshot: percentiles, time buckets, running jobs, failures, and the
endpoints serving the page and its data."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from pydantic import SecretStr

from dispatcher import DispatcherSettings, progress, task
from dispatcher.fastapi.dashboard import router as dashboard_router
from dispatcher.ops import dashboard as dash
from dispatcher.ops import dashboard_data
from dispatcher.runtime.container import current
from dispatcher.testing import wait_for_inline_jobs

NOW = 1_700_000_005.0  # 5 s into a 10 s bucket


def job(task_id: str, state: str = "SUCCESS", **fields: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "task_id": task_id, "task_name": "t.a", "state": state, "route": "inline",
        "queue": None, "attempt": 1, "max_attempts": 1, "dispatched_at": NOW - 20,
        "started_at": NOW - 19, "finished_at": NOW - 18 if state in ("SUCCESS", "FAILURE")
        else None, "duration_ms": 10.0, "progress": None, "error": None, "traceback": None,
    }
    base.update(fields)
    return base


# ---------------------------------------------------------------------------- percentiles


@pytest.mark.parametrize(
    ("values", "q", "expected"),
    [
        ([1, 2, 3, 4], 50, 2.5),
        ([1, 2, 3, 4], 95, 3.85),
        ([1, 2, 3, 4], 99, 3.97),
        ([4, 1, 3, 2], 0, 1.0),  # order does not matter
        ([4, 1, 3, 2], 100, 4.0),
        ([7], 99, 7.0),
        (list(range(1, 101)), 50, 50.5),
        (list(range(1, 101)), 99, 99.01),
        ([1, 2], 250, 2.0),  # clamped
    ],
)
def test_percentile_interpolates_between_ranks(values: list[float], q: float,
                                               expected: float) -> None:
    assert dash.percentile(values, q) == pytest.approx(expected)


def test_percentile_of_nothing_is_none() -> None:
    assert dash.percentile([], 50) is None


def test_duration_percentiles_per_task_slowest_first() -> None:
    records = [job(f"a{i}", duration_ms=float(i)) for i in range(1, 101)]
    records += [job(f"b{i}", task_name="t.b", duration_ms=1000.0 + i) for i in range(3)]
    records += [
        job("running", state="STARTED", task_name="t.c", duration_ms=None),
        job("retrying", state="RETRY", task_name="t.c", duration_ms=5.0),  # not finished
        job("nodur", task_name="t.d", duration_ms=None),
        job("boolean", task_name="t.d", duration_ms=True),
        job("failed", state="FAILURE", task_name="t.e", duration_ms=7.5),
    ]
    rows = dash.duration_percentiles(records)
    assert [r["task"] for r in rows] == ["t.b", "t.a", "t.e"]
    a = rows[1]
    assert a["count"] == 100
    assert (a["p50"], a["p95"], a["p99"], a["max"]) == pytest.approx((50.5, 95.05, 99.01, 100))
    assert rows[2] == {"task": "t.e", "count": 1, "max": 7.5, "p50": 7.5, "p95": 7.5,
                       "p99": 7.5}
    assert [r["task"] for r in dash.duration_percentiles(records, limit=1)] == ["t.b"]


# ---------------------------------------------------------------------------- buckets


def test_throughput_buckets_are_aligned_and_end_with_the_current_one() -> None:
    tp = dash.throughput([], NOW, window=60, bucket=10)
    assert tp["bucket_seconds"] == 10
    assert tp["starts"] == [NOW - 5 - 10 * k for k in range(5, -1, -1)]
    assert set(tp["routes"]) == {"inline", "celery"}
    assert tp["routes"]["celery"] == {"succeeded": [0] * 6, "failed": [0] * 6,
                                      "dispatched": [0] * 6}


def test_throughput_counts_finished_jobs_by_route_outcome_and_bucket() -> None:
    current, first = NOW - 5, NOW - 55  # bucket starts
    records = [
        job("1", finished_at=current, dispatched_at=current),            # last bucket
        job("2", finished_at=NOW, dispatched_at=NOW - 1),                 # last bucket
        job("3", state="FAILURE", finished_at=current - 0.001),           # previous one
        job("4", route="celery", finished_at=first, dispatched_at=first - 1),  # first
        job("5", route="celery", state="FAILURE", finished_at=first + 9.99,
            dispatched_at=first - 2),
        job("6", finished_at=first - 0.001),                              # too old
        job("7", finished_at=NOW + 6),                                    # in the future
        job("8", state="STARTED", dispatched_at=NOW - 2),                 # only dispatched
        job("9", route=None),                                             # no route
        job("10", route="spilled", finished_at=NOW),                      # unknown route
    ]
    tp = dash.throughput(records, NOW, window=60, bucket=10)
    inline, celery = tp["routes"]["inline"], tp["routes"]["celery"]
    assert inline["succeeded"] == [0, 0, 0, 0, 0, 2]
    assert inline["failed"] == [0, 0, 0, 0, 1, 0]
    assert inline["dispatched"] == [0, 0, 0, 3, 0, 3]  # 3, 6 and 7 at the default NOW - 20
    assert celery["succeeded"] == [1, 0, 0, 0, 0, 0]
    assert celery["failed"] == [1, 0, 0, 0, 0, 0]
    assert celery["dispatched"] == [0, 0, 0, 0, 0, 0]  # dispatched before the window
    assert tp["routes"]["spilled"]["succeeded"] == [0, 0, 0, 0, 0, 1]


def test_throughput_window_not_a_multiple_of_the_bucket_rounds_up() -> None:
    assert len(dash.throughput([], NOW, window=65, bucket=10)["starts"]) == 7


def test_totals_rate_and_failure_rate() -> None:
    records = [job(str(i)) for i in range(9)] + [
        job("f", state="FAILURE"),
        job("old", finished_at=NOW - 400, dispatched_at=NOW - 401),
        job("s", state="STARTED"),
    ]
    t = dash.totals(records, NOW, window=300)
    assert (t["succeeded"], t["failed"], t["dispatched"]) == (9, 1, 11)
    assert t["per_minute"] == 2.0
    assert t["failure_rate"] == 0.1
    assert dash.totals([], NOW)["failure_rate"] is None


# ---------------------------------------------------------------------------- panels


def test_running_jobs_oldest_first_then_just_finished_with_progress() -> None:
    half = {"current": 5, "total": 10, "percent": 50.0, "message": "", "at": NOW}
    done = {"current": 10, "total": 10, "percent": 100.0, "message": "", "at": NOW}
    records = [
        job("young", state="STARTED", started_at=NOW - 1, progress=half),
        job("old", state="RETRY", started_at=NOW - 30),
        job("young", state="STARTED", started_at=NOW - 1),  # duplicate: first one wins
        job("pending", state="PENDING"),
        job("finished", finished_at=NOW - 3, progress=done),
        job("finished-long-ago", finished_at=NOW - 60, progress=done),
        job("finished-no-progress", finished_at=NOW - 1),
    ]
    rows = dash.running_jobs(records, NOW, keep_finished=20)
    assert [r["task_id"] for r in rows] == ["old", "young", "finished"]
    assert rows[1]["progress"] == half
    assert rows[2]["progress"]["percent"] == 100.0
    assert len(dash.running_jobs(records, NOW, limit=1)) == 1


def test_recent_failures_newest_first_with_tracebacks() -> None:
    records = [
        job("ok"),
        job("f1", state="FAILURE", finished_at=NOW - 10, error={"type": "E", "message": "m"},
            traceback="Traceback ...", reason="attempts_exhausted"),
        job("f2", state="FAILURE", finished_at=NOW - 2),
    ]
    rows = dash.recent_failures(records)
    assert [r["task_id"] for r in rows] == ["f2", "f1"]
    assert rows[1]["traceback"] == "Traceback ..."
    assert rows[1]["error"] == {"type": "E", "message": "m"}
    assert rows[1]["reason"] == "attempts_exhausted"
    assert len(dash.recent_failures(records, limit=1)) == 1


# ---------------------------------------------------------------------------- end to end


@pytest.fixture
def fresh_snapshot(monkeypatch: pytest.MonkeyPatch) -> None:
    dashboard = current().dashboard
    monkeypatch.setattr(dashboard, "_cached", None)
    monkeypatch.setattr(dashboard, "_older", (float("-inf"), []))


def collect() -> dict[str, Any]:
    """The runtime's dashboard snapshot, gathered now from the runtime's sources."""
    runtime = current()
    return runtime.dashboard.collect(runtime.dashboard_sources())


def _app() -> FastAPI:
    app = FastAPI()
    app.include_router(dashboard_router)
    return app


def test_snapshot_from_real_inline_jobs(fresh_snapshot: None) -> None:
    gate = threading.Event()

    @task(name="dash.steps")
    def steps() -> None:
        progress(1, 4, "one")
        gate.wait(5)
        progress(4, 4, "done")

    @task(name="dash.broken")
    def broken(card: SecretStr) -> None:
        raise ValueError(f"declined {card.get_secret_value()}")

    running = steps.dispatch()
    broken.dispatch(card="4111-secret")
    try:
        with pytest.raises(TimeoutError):
            wait_for_inline_jobs(timeout=0.5)  # steps is held at 25 %
        data = collect()
        [row] = [r for r in data["running"] if r["task_id"] == running.id]
        assert (row["state"], row["progress"]["percent"]) == ("STARTED", 25.0)
        assert data["totals"]["running"] == 1
    finally:
        gate.set()
    wait_for_inline_jobs(timeout=5)
    data = collect()
    assert data["errors"] == {}
    assert data["totals"]["succeeded"] == 1 and data["totals"]["failed"] == 1
    assert sum(data["throughput"]["routes"]["inline"]["succeeded"]) == 1
    assert {r["task"] for r in data["durations"]} == {"dash.steps", "dash.broken"}
    [row] = [r for r in data["running"] if r["task_id"] == running.id]
    assert (row["state"], row["progress"]["percent"]) == ("SUCCESS", 100.0)
    [failure] = data["failures"]
    assert failure["error"]["type"] == "ValueError"
    assert "Traceback" in failure["traceback"] and "4111-secret" not in failure["traceback"]
    [dead] = data["dead_letters"]
    assert dead["arguments"] == {"card": "***"}
    assert {"dash.steps", "dash.broken"} <= {r["task"] for r in data["routes"]}
    assert data["queues"]["celery"] is None and data["queues"]["broker_configured"] is False
    assert data["queues"]["inline"]["concurrency"] >= 1


def test_page_and_assets_are_served() -> None:
    client = TestClient(_app())
    page = client.get("/dashboard")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert 'src="dashboard/dashboard.js"' in page.text
    assert 'href="dashboard/dashboard.css"' in page.text
    script = client.get("/dashboard/dashboard.js")
    assert script.headers["content-type"].startswith("text/javascript")
    assert "dashboard/data" in script.text
    assert client.get("/dashboard/dashboard.css").headers["content-type"].startswith("text/css")
    assert client.get("/dashboard/nope.js").status_code == 404
    # Nothing on the page comes from elsewhere: no CDN, no external URL.
    for text in (page.text, script.text):
        assert "http://" not in text.replace("http://www.w3.org/2000/svg", "")
        assert "https://" not in text


def test_data_needs_the_token_when_one_is_set(
    fresh_snapshot: None, use_settings: Callable[..., DispatcherSettings]
) -> None:
    use_settings(api_token=SecretStr("s3cret"))
    client = TestClient(_app())
    assert client.get("/dashboard").status_code == 200  # the page holds no data
    assert client.get("/dashboard/data").status_code == 401
    wrong = client.get("/dashboard/data", headers={"Authorization": "Bearer nope"})
    assert wrong.status_code == 401
    ok = client.get("/dashboard/data", headers={"Authorization": "Bearer s3cret"})
    assert ok.status_code == 200
    assert set(ok.json()) >= {"totals", "throughput", "durations", "queues", "running",
                              "failures", "dead_letters", "routes", "window"}


def test_data_answers_only_this_machine_without_a_token(
    fresh_snapshot: None, use_settings: Callable[..., DispatcherSettings]
) -> None:
    use_settings()
    remote = TestClient(_app(), client=("203.0.113.5", 4000))
    assert remote.get("/dashboard").status_code == 200  # the page holds no data
    refused = remote.get("/dashboard/data")
    assert refused.status_code == 403
    assert "DISPATCH_API_TOKEN" in refused.json()["detail"]
    assert TestClient(_app(), client=("127.0.0.1", 4000)).get("/dashboard/data").is_success


def test_one_failing_source_does_not_blank_the_snapshot(
    fresh_snapshot: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    def down(*_: Any) -> list[dict[str, Any]]:
        raise ConnectionError("redis is down")

    monkeypatch.setattr(dashboard_data, "redacted_dead_letters", down)
    data = collect()
    assert data["dead_letters"] == []
    assert data["errors"] == {"dead_letters": "ConnectionError: redis is down"}
    assert data["routes"] is not None
