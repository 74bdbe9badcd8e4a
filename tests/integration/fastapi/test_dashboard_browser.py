"""The dashboard in a real headless browser (Debian's chromium driven by Playwright),
against the real API, worker and Redis: it loads without console errors, shows a job
dispatched during the test with its progress bar reaching 100 %, and its Re-dispatch
button runs a dead-lettered job again.

Set ``DASHBOARD_SCREENSHOT=<path>`` to keep the screenshot the test takes (it always
writes one into its temporary directory), and ``DASHBOARD_DEMO_SECONDS=<n>`` to have it
send waves of mixed traffic for that long first, so the charts show some history (how
docs/dashboard.png was made).
"""

from __future__ import annotations

import json
import os
import random
import shutil
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.integration.conftest import poll_state
from tests.integration.sample_tasks import entries

CHROMIUM = Path(os.environ.get("CHROMIUM_PATH", "/usr/bin/chromium"))
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]
TIMEOUT_MS = 20_000


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if not CHROMIUM.exists():
        pytest.fail(
            f"the dashboard browser test needs Debian's chromium at {CHROMIUM}: "
            "`apt-get install -y chromium` (.ci/run installs it), or set CHROMIUM_PATH",
            pytrace=False,
        )
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield launched
        finally:
            launched.close()


def _dispatch(client: httpx.Client, api_url: str, name: str, **arguments: Any) -> str:
    response = client.post(f"{api_url}/tasks/{name}", json=arguments)
    assert response.status_code == 202, response.text
    return str(response.json()["task_id"])


def _some_traffic(client: httpx.Client, api_url: str) -> None:
    """A little of everything, so every chart has something to draw."""
    for i in range(12):
        _dispatch(client, api_url, "samples.echo", value={"i": i})
    for i in range(1, 7):
        assert client.post(f"{api_url}/reports", json={"report_id": i}).status_code == 202
    for _ in range(3):
        _dispatch(client, api_url, "samples.record_order", key=f"dash-{uuid.uuid4().hex}",
                  label="x", pause=0.15)
    _dispatch(client, api_url, "samples.always_fails", key=f"dash-{uuid.uuid4().hex}")


def _demo_traffic(client: httpx.Client, api_url: str, seconds: float) -> None:
    """Waves of mixed jobs (and a backlog now and then) for ``seconds``."""
    rng = random.Random(5)
    deadline = time.monotonic() + seconds
    wave = 0
    while time.monotonic() < deadline:
        wave += 1
        for i in range(rng.randint(2, 9)):
            _dispatch(client, api_url, "samples.echo", value={"i": i})
        for i in range(rng.randint(0, 3)):
            assert client.post(f"{api_url}/reports", json={"report_id": i + 1}).status_code == 202
        backlog = 14 if wave % 6 == 0 else rng.randint(0, 2)
        for _ in range(backlog):
            _dispatch(client, api_url, "samples.record_order", key=f"dash-{uuid.uuid4().hex}",
                      label="x", pause=rng.uniform(0.05, 0.4))
        if rng.random() < 0.25:
            _dispatch(client, api_url, "samples.always_fails", key=f"dash-{uuid.uuid4().hex}")
        if rng.random() < 0.3:
            _dispatch(client, api_url, "samples.slow_inline", key=f"dash-{uuid.uuid4().hex}",
                      seconds=rng.uniform(0.2, 0.8))
        time.sleep(rng.uniform(2.0, 5.0))


def test_dashboard_live_progress_and_redispatch(
    browser: Any, api_url: str, broker: str, tmp_path: Path
) -> None:
    from playwright.sync_api import expect

    page = browser.new_page(viewport={"width": 1440, "height": 1000})
    problems: list[str] = []
    page.on("console", lambda m: problems.append(f"console.{m.type}: {m.text}")
            if m.type == "error" else None)
    page.on("pageerror", lambda error: problems.append(f"page error: {error}"))
    page.on("requestfailed", lambda r: problems.append(f"request failed: {r.method} {r.url}"))

    page.goto(f"{api_url}/dashboard")
    expect(page.locator("#live")).to_have_attribute("data-state", "live", timeout=TIMEOUT_MS)
    expect(page.locator('[data-tile="per-minute"]')).to_be_visible()
    expect(page.locator("#routes tr[data-task='samples.progress_steps']")).to_be_visible()
    # Each task's limits, as GET /routes gives them.
    expect(page.locator("#routes th", has_text="rate limit")).to_have_count(1)
    expect(page.locator("#routes tr[data-task='samples.rate_limited']")).to_contain_text("20/s")
    expect(page.locator("#routes tr[data-task='samples.per_customer']")).to_contain_text(
        "customer")
    listed = page.locator("#schedules tr[data-task='samples.echo']")
    expect(listed).to_contain_text("0 0 1 1 * (UTC)")
    expect(listed).to_contain_text('{"value":{"n":1}}')

    with httpx.Client(timeout=10) as client:
        _demo_traffic(client, api_url, float(os.environ.get("DASHBOARD_DEMO_SECONDS", "0")))
        _some_traffic(client, api_url)
        dead_key = f"dash-{uuid.uuid4().hex}"
        dead_id = _dispatch(client, api_url, "samples.fails_first_time", key=dead_key)
        job_id = _dispatch(client, api_url, "samples.progress_steps", steps=8, pause=0.5,
                           hold=2.0)
        inline_id = _dispatch(client, api_url, "samples.progress_steps_inline", steps=5,
                              pause=0.4, hold=2.0)

        # The job shows up with a progress bar that moves, then reaches 100 %.
        job = page.locator(f'.job[data-task-id="{job_id}"]')
        expect(job).to_be_visible(timeout=TIMEOUT_MS)
        seen: list[int] = []
        screenshot = tmp_path / "dashboard.png"
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            value = job.locator(".progress").get_attribute("data-percent", timeout=TIMEOUT_MS)
            if value:
                seen.append(int(value))
                if 40 <= seen[-1] < 100 and not screenshot.exists():
                    page.screenshot(path=str(screenshot), full_page=True)
                if seen[-1] == 100:
                    break
            time.sleep(0.2)
        assert seen and seen[-1] == 100, f"progress seen: {seen}"
        assert any(0 < value < 100 for value in seen), f"no intermediate progress: {seen}"
        expect(job.locator(".pct")).to_have_text("100 %")
        expect(page.locator(f'.job[data-task-id="{inline_id}"] .progress')).to_have_attribute(
            "data-percent", "100", timeout=TIMEOUT_MS)
        assert poll_state(client, api_url, job_id, {"SUCCESS", "FAILURE"})["state"] == "SUCCESS"

        # The failure is listed with its traceback, and the job is dead-lettered.
        assert poll_state(client, api_url, dead_id, {"SUCCESS", "FAILURE"})["state"] == "FAILURE"
        failure = page.locator(f'details.failure[data-task-id="{dead_id}"]')
        expect(failure).to_be_visible(timeout=TIMEOUT_MS)
        failure.locator("summary").click()
        expect(failure.locator("pre")).to_contain_text("first run fails on purpose")
        expect(failure.locator("pre")).to_contain_text("Traceback")
        row = page.locator(f'#dead tr[data-task-id="{dead_id}"]')
        expect(row).to_be_visible(timeout=TIMEOUT_MS)

        # Re-dispatch from the page: a new job runs the task again and succeeds.
        row.get_by_role("button", name="Re-dispatch").click()
        notice = page.locator(f'.notice[data-from="{dead_id}"]')
        expect(notice).to_be_visible(timeout=TIMEOUT_MS)
        new_id = notice.get_attribute("data-to")
        assert new_id and new_id != dead_id, notice.inner_text()
        rerun = poll_state(client, api_url, new_id, {"SUCCESS", "FAILURE"})
        assert (rerun["state"], rerun["result"]) == ("SUCCESS", 2)
        assert len(entries(dead_key)) == 2  # the task really ran twice
        expect(row).to_have_count(0, timeout=TIMEOUT_MS)  # gone from the dead letters

        # Cancel from the page: a running job is told and ends REVOKED.
        endless_id = _dispatch(client, api_url, "samples.until_cancelled", seconds=120)
        endless = page.locator(f'.job[data-task-id="{endless_id}"][data-state="STARTED"]')
        expect(endless).to_be_visible(timeout=TIMEOUT_MS)
        endless.get_by_role("button", name="Cancel").click()
        assert poll_state(client, api_url, endless_id, {"SUCCESS", "REVOKED"})["state"] == "REVOKED"

    if not screenshot.exists():
        page.screenshot(path=str(screenshot), full_page=True)
    keep = os.environ.get("DASHBOARD_SCREENSHOT")
    if keep:
        shutil.copyfile(screenshot, keep)
    seen_problems = list(problems)  # closing the page may abort a poll under way
    page.close()
    assert seen_problems == []


def test_dashboard_draws_unknown_fields_and_adaptive_state(browser: Any, api_url: str) -> None:
    """Routing rows may gain fields (adaptive state, future ones) and a source may be
    down: the page still draws every panel, without errors."""
    from playwright.sync_api import Route, expect

    now = time.time()
    snapshot = {
        "generated_at": now,
        "window": {"seconds": 300, "records": 0, "truncated": False, "max_records": 3000},
        "totals": {"dispatched": 0, "succeeded": 0, "failed": 0, "per_minute": 0,
                   "failure_rate": None, "running": 0},
        "throughput": {"bucket_seconds": 10, "starts": [now - 20, now - 10, now],
                       "routes": {"inline": {"succeeded": [0, 1, 2], "failed": [0, 0, 1],
                                             "dispatched": [1, 1, 3]}}},
        "durations": [],
        "queues": None,
        "running": [{"task_id": "j1", "task_name": "x.unknown_total", "state": "STARTED",
                     "route": "celery", "attempt": 1, "max_attempts": 1,
                     "dispatched_at": now - 3, "started_at": now - 2, "finished_at": None,
                     "progress": {"current": 7, "total": None, "percent": None,
                                  "message": "working", "at": now}}],
        "failures": [],
        "dead_letters": [],
        "routes": [
            {"task": "x.auto", "route": "celery", "reason": "p95 1.4s > 1s", "queue": "celery",
             "priority": 5, "weight": "auto", "timeout": None, "async": False,
             "retry": {"max_attempts": 1},
             "adaptive": {"route": "celery", "reason": "p95 1.4s > 1s", "since": now - 30,
                          "p95_seconds": 1.4, "samples": 20, "window": 20, "max_seconds": 1.0},
             "spill_over": {"pending": 3, "limit": 1000}, "tags": ["a", "b"]},
        ],
        "errors": {"dead_letters": "ConnectionError: down"},
    }
    page = browser.new_page(viewport={"width": 1200, "height": 900})
    problems: list[str] = []
    page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda error: problems.append(str(error)))

    def fake(route: Route) -> None:
        route.fulfill(status=200, content_type="application/json", body=json.dumps(snapshot))

    page.route("**/dashboard/data", fake)
    page.goto(f"{api_url}/dashboard")
    row = page.locator("#routes tr[data-task='x.auto']")
    expect(row).to_contain_text("p95 1.40 s of 20/20 runs → celery")
    expect(row.locator("svg.gauge")).to_have_count(1)
    expect(row).to_contain_text("pending: 3")
    expect(row).to_contain_text("a, b")
    expect(page.locator("#routes th", has_text="spill over")).to_have_count(1)
    job = page.locator('.job[data-task-id="j1"]')
    expect(job.locator(".pct")).to_have_text("7")  # no total: a count, not a percentage
    expect(page.locator("#window-note")).to_contain_text("unavailable: dead_letters")
    expect(page.locator("#queues")).to_contain_text("queue depths unavailable")
    seen_problems = list(problems)
    page.close()
    assert seen_problems == []
