"""The example API over real HTTP, with a real worker and Redis behind it."""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path

import httpx

from tests.integration.conftest import Process, poll_state
from tests.integration.sample_tasks import entries


def test_notification_runs_inline_after_the_response(api_url: str, service_env: dict[str, str]
                                                      ) -> None:
    with httpx.Client() as client:
        response = client.post(f"{api_url}/send-notification/a@example.com",
                               params={"message": "hello"})
        assert response.status_code == 202
        body = response.json()
        assert body["route"] == "inline"
        status = poll_state(client, api_url, body["task_id"], {"SUCCESS", "FAILURE"})
    assert status["state"] == "SUCCESS"
    assert status["route"] == "inline"
    written = (Path(service_env["API_DATA_DIR"]) / "notifications.log").read_text()
    assert "notification for a@example.com: hello" in written


def test_report_runs_on_the_celery_worker(api_url: str) -> None:
    with httpx.Client() as client:
        response = client.post(f"{api_url}/reports", json={"report_id": 3})
        assert response.status_code == 202
        body = response.json()
        assert (body["route"], body["queue"]) == ("celery", "celery")
        status = poll_state(client, api_url, body["task_id"], {"SUCCESS", "FAILURE"})
    assert status["state"] == "SUCCESS"
    assert status["attempt"] == 1
    assert status["result"]["report_id"] == 3
    assert status["result"]["rows"] == 30


def test_bad_input_gets_clear_4xx(api_url: str) -> None:
    with httpx.Client() as client:
        bad_body = client.post(f"{api_url}/reports", json={"report_id": "many"})
        assert bad_body.status_code == 422
        assert "report_id" in bad_body.text

        bad_args = client.post(f"{api_url}/tasks/samples.flaky", json={"key": "k"})
        assert bad_args.status_code == 422
        error = bad_args.json()["detail"][0]  # FastAPI's 422 shape
        assert (error["loc"], error["type"]) == (["arguments", "fail_times"], "task_validation")

        extra = client.post(f"{api_url}/tasks/samples.echo",
                            json={"value": {"a": 1}, "nope": 2})
        assert extra.status_code == 422
        error = extra.json()["detail"][0]  # FastAPI's 422 shape
        assert (error["loc"], error["type"]) == (["arguments", "nope"], "task_validation")

        unknown = client.post(f"{api_url}/tasks/os.system", json={"command": "true"})
        assert unknown.status_code == 404
        assert "os.system" in unknown.json()["detail"]

        missing = client.get(f"{api_url}/tasks/{uuid.uuid4()}")
        assert missing.status_code == 404


def test_registry_lists_effective_routes(api_url: str) -> None:
    rows = {row["task"]: row for row in httpx.get(f"{api_url}/routes").json()}
    assert rows["api.tasks.write_notification"]["route"] == "inline"
    report = rows["api.tasks.generate_report"]
    assert (report["route"], report["queue"], report["priority"]) == ("celery", "celery", 8)
    assert report["retry"]["max_attempts"] == 5


def test_healthz_reports_the_broker(api_url: str) -> None:
    body = httpx.get(f"{api_url}/healthz").json()
    assert body["status"] == "ok"
    assert body["broker"]["reachable"] is True


def _events(text: str) -> list[dict[str, object]]:
    found = []
    for line in text.splitlines():
        if line.startswith("{") and '"event": "task.' in line:
            found.append(json.loads(line))
    return found


def test_request_id_travels_into_the_worker_logs(api_server: Process, worker: Process) -> None:
    request_id = f"it-{uuid.uuid4().hex[:12]}"
    with httpx.Client() as client:
        response = client.post(f"{api_server.url}/reports", json={"report_id": 1},
                               headers={"X-Request-ID": request_id})
        assert response.headers["x-request-id"] == request_id
        task_id = response.json()["task_id"]
        poll_state(client, api_server.url, task_id, {"SUCCESS"})
    deadline = time.monotonic() + 5
    while True:
        worker_events = [e for e in _events(worker.output()) if e["task_id"] == task_id]
        if {e["event"] for e in worker_events} >= {"task.started", "task.succeeded"}:
            break
        assert time.monotonic() < deadline, worker.output()[-2000:]
        time.sleep(0.1)
    api_events = [e for e in _events(api_server.output()) if e["task_id"] == task_id]
    assert [e["event"] for e in api_events] == ["task.dispatched"]
    for event in api_events + worker_events:
        assert event["request_id"] == request_id
        assert event["task_name"] == "api.tasks.generate_report"
        assert event["route"] == "celery"
    # One event shape on both sides of the wire.
    keys = {frozenset(e) - {"duration_ms", "retry_in", "reason"}
            for e in api_events + worker_events}
    assert len(keys) == 1


def test_a_slow_inline_job_does_not_hold_the_connection(api_url: str, broker: str) -> None:
    key = f"slow:{uuid.uuid4()}"
    with httpx.Client() as client:  # one keep-alive connection
        first = client.post(f"{api_url}/tasks/samples.slow_inline",
                            json={"key": key, "seconds": 2.0})
        assert first.json()["route"] == "inline"
        second = client.get(f"{api_url}/healthz")
        assert second.status_code == 200
        # The next request on the same connection was answered while the job still ran.
        assert entries(key) == []
        assert second.json()["inline"]["outstanding"] >= 1
        poll_state(client, api_url, first.json()["task_id"], {"SUCCESS"})
    assert [e["label"] for e in entries(key)] == ["done"]
