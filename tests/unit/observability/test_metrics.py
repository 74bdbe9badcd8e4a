"""Prometheus metrics counted in-process on the inline route, the scrape-time gauges,
the API router, the worker's endpoint and prometheus-client's multiprocess mode."""

from __future__ import annotations

import logging
import socket
import subprocess
import sys
import textwrap
import threading
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from prometheus_client import REGISTRY, generate_latest

from dispatcher import DispatcherSettings, RetryPolicy, task
from dispatcher.core.job import Job
from dispatcher.fastapi import metrics_router
from dispatcher.observability import gauges, metrics
from dispatcher.routes.celery import worker_metrics
from dispatcher.runtime import container
from dispatcher.runtime.container import current
from dispatcher.store.embedded import free_port
from dispatcher.testing import wait_for_inline_jobs
from tests.support import wait_until
from tests.unit.helpers import ListHandler

ROOT = Path(__file__).resolve().parents[3]


def value(name: str, **labels: str) -> float:
    found = REGISTRY.get_sample_value(name, labels)
    return 0.0 if found is None else found


def counts(task_name: str, route: str = "inline") -> dict[str, float]:
    labels = {"task": task_name, "route": route}
    return {
        "dispatched": value("dispatch_jobs_dispatched_total", **labels),
        "succeeded": value("dispatch_jobs_succeeded_total", **labels),
        "failed": value("dispatch_jobs_failed_total", **labels),
        "retried": value("dispatch_jobs_retried_total", **labels),
        "durations": value("dispatch_job_duration_seconds_count", **labels),
    }


def delta(after: dict[str, float], before: dict[str, float]) -> dict[str, float]:
    return {key: after[key] - before[key] for key in after}


def test_inline_jobs_are_counted_by_task_and_route() -> None:
    @task(name="metrics_unit.ok")
    def ok(n: int) -> int:
        return n

    @task(name="metrics_unit.other")
    def other() -> None:
        return None

    before, other_before = counts("metrics_unit.ok"), counts("metrics_unit.other")
    for n in range(5):
        ok.dispatch(n)
    other.dispatch()
    wait_for_inline_jobs(timeout=10)

    assert delta(counts("metrics_unit.ok"), before) == {
        "dispatched": 5, "succeeded": 5, "failed": 0, "retried": 0, "durations": 5,
    }
    assert delta(counts("metrics_unit.other"), other_before)["succeeded"] == 1
    assert delta(counts("metrics_unit.ok", route="celery"), counts("metrics_unit.ok", "celery")) \
        == dict.fromkeys(before, 0)


def test_retries_and_failures_are_counted_once_each() -> None:
    @task(name="metrics_unit.flaky",
          retry=RetryPolicy(max_attempts=3, base_delay=0.0, max_delay=0.0, jitter=False))
    def flaky() -> None:
        raise ValueError("always")

    before = counts("metrics_unit.flaky")
    flaky.dispatch()
    wait_for_inline_jobs(timeout=10)
    # Three attempts: two retried, one final failure, each attempt timed.
    assert delta(counts("metrics_unit.flaky"), before) == {
        "dispatched": 1, "succeeded": 0, "failed": 1, "retried": 2, "durations": 3,
    }


def test_counted_even_when_the_event_log_level_is_off() -> None:
    @task(name="metrics_unit.quiet")
    def quiet() -> None:
        return None

    logger = logging.getLogger("dispatcher")
    old = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        before = counts("metrics_unit.quiet")
        quiet.dispatch()
        wait_for_inline_jobs(timeout=10)
    finally:
        logger.setLevel(old)
    assert delta(counts("metrics_unit.quiet"), before)["succeeded"] == 1


def test_limited_starts_are_counted_by_reason() -> None:
    @task(name="metrics_unit.paced", rate_limit="1/m")
    def paced() -> None:
        return None

    labels = {"task": "metrics_unit.paced", "route": "inline"}
    first, second = paced.dispatch(), paced.dispatch()
    assert first.get(timeout=10) is None
    # The second waits a minute: refused (and counted) when it first asked.
    wait_until(lambda: value("dispatch_rate_limited_total", **labels) == 1,
               "the second start refused")
    assert second.state() == "PENDING"
    assert value("dispatch_concurrency_limited_total", **labels) == 0


def _job(name: str) -> Job:
    @task(name=name)
    def noop() -> None:
        return None

    return Job(id="job-1", spec=noop.spec, route="inline", queue=None, priority=5, payload={})


def test_queue_wait_is_observed_when_the_started_event_carries_it() -> None:
    job = _job("metrics_unit.wait")
    labels = {"task": "metrics_unit.wait", "route": "inline"}
    count = value("dispatch_job_queue_wait_seconds_count", **labels)
    total = value("dispatch_job_queue_wait_seconds_sum", **labels)

    current().metrics.observe_event("task.started", job, None, {})  # no field: nothing observed
    assert value("dispatch_job_queue_wait_seconds_count", **labels) == count

    current().metrics.observe_event("task.started", job, None, {"queue_wait_ms": 250.0})
    assert value("dispatch_job_queue_wait_seconds_count", **labels) == count + 1
    assert value("dispatch_job_queue_wait_seconds_sum", **labels) == pytest.approx(total + 0.25)
    le_half = value("dispatch_job_queue_wait_seconds_bucket", le="0.5", **labels)
    le_tenth = value("dispatch_job_queue_wait_seconds_bucket", le="0.1", **labels)
    assert le_half - le_tenth >= 1


def test_the_real_started_event_feeds_the_queue_wait_histogram() -> None:
    @task(name="metrics_unit.waited")
    def waited() -> None:
        return None

    labels = {"task": "metrics_unit.waited", "route": "inline"}
    count = value("dispatch_job_queue_wait_seconds_count", **labels)
    with _capture_events() as handler:
        waited.dispatch()
        wait_for_inline_jobs(timeout=10)
    started = [r for r in handler.events() if r.dispatch["event"] == "task.started"]  # type: ignore[attr-defined]
    assert len(started) == 1
    carries_wait = started[0].dispatch.get("queue_wait_ms") is not None  # type: ignore[attr-defined]
    assert value("dispatch_job_queue_wait_seconds_count", **labels) == count + carries_wait


class _capture_events:
    def __enter__(self) -> ListHandler:
        self.logger = logging.getLogger("dispatcher")
        self.handler, self.level = ListHandler(), self.logger.level
        self.logger.addHandler(self.handler)
        self.logger.setLevel(logging.DEBUG)
        return self.handler

    def __exit__(self, *exc: object) -> None:
        self.logger.removeHandler(self.handler)
        self.logger.setLevel(self.level)


def test_observe_event_never_raises_into_the_caller() -> None:
    current().metrics.observe_event("task.succeeded", None, 1.0, {})  # type: ignore[arg-type]
    job = _job("metrics_unit.bad_wait")
    current().metrics.observe_event("task.started", job, None, {"queue_wait_ms": "soon"})


def test_route_decisions_are_counted_by_task_route_and_reason() -> None:
    labels = {"task": "metrics_unit.auto", "route": "celery", "reason": "spill_over"}
    before = value("dispatch_route_decisions_total", **labels)
    current().metrics.count_route_decision("metrics_unit.auto", "celery", "spill_over")
    current().metrics.count_route_decision("metrics_unit.auto", "celery", "spill_over")
    current().metrics.count_route_decision("metrics_unit.auto", "celery", "adaptive")
    assert value("dispatch_route_decisions_total", **labels) == before + 2


def test_scrape_reads_the_inline_executor_without_creating_one(
    use_settings: Callable[..., DispatcherSettings],
) -> None:
    container.reset()
    generate_latest(REGISTRY)
    assert current().inline.current_executor() is None
    assert value("dispatch_inline_busy") == 0
    assert REGISTRY.get_sample_value("dispatch_broker_up") is None  # no broker configured

    use_settings(inline_concurrency=1)
    release = threading.Event()

    @task(name="metrics_unit.blocking")
    def blocking() -> None:
        release.wait(10)

    for _ in range(3):
        blocking.dispatch()
    try:
        executor = current().inline.executor
        for _ in range(1000):
            if executor.running() == 1:
                break
            release.wait(0.01)
        assert value("dispatch_inline_busy") == 1
        assert value("dispatch_inline_waiting") == 2
    finally:
        release.set()
    wait_for_inline_jobs(timeout=10)
    assert value("dispatch_inline_busy") == 0
    assert value("dispatch_inline_waiting") == 0


def test_scrape_skips_queue_depths_when_redis_is_down(
    use_settings: Callable[..., DispatcherSettings],
) -> None:
    use_settings(broker_url=f"redis://127.0.0.1:{free_port()}/0")  # nothing listens there
    text = generate_latest(REGISTRY).decode()
    assert "dispatch_broker_up 0.0" in text
    assert "dispatch_queue_depth{" not in text
    assert "dispatch_backlog{" not in text  # unknown, not zero: an autoscaler must not act
    assert current()._celery is None  # a scrape builds no Celery route, starts no monitor


def test_api_router_serves_the_exposition() -> None:
    @task(name="metrics_unit.api")
    def api_task() -> None:
        return None

    api_task.dispatch()
    wait_for_inline_jobs(timeout=10)
    app = FastAPI()
    app.include_router(metrics_router)
    with TestClient(app) as client:
        response = client.get("/metrics")
        openmetrics = client.get(
            "/metrics", headers={"accept": "application/openmetrics-text; version=1.0.0"}
        )
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    assert 'dispatch_jobs_succeeded_total{route="inline",task="metrics_unit.api"}' in response.text
    assert "# TYPE dispatch_job_duration_seconds histogram" in response.text
    assert openmetrics.headers["content-type"].startswith("application/openmetrics-text")
    assert openmetrics.text.rstrip().endswith("# EOF")


@pytest.fixture
def no_worker_server(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setattr(worker_metrics, "_server", None)
    yield
    server = worker_metrics._server
    if server is not None:
        server.shutdown()
        server.server_close()


def test_worker_server_on_a_port_in_use_logs_an_error_and_carries_on(
    no_worker_server: None, caplog: pytest.LogCaptureFixture,
    use_settings: Callable[..., DispatcherSettings],
) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        settings = use_settings(metrics_port=port)
        with caplog.at_level(logging.ERROR, logger="dispatcher.metrics"):
            assert worker_metrics.start_worker_server(settings) is None
    assert f"cannot listen on 127.0.0.1:{port}" in caplog.text


def test_worker_server_serves_metrics(
    no_worker_server: None, use_settings: Callable[..., DispatcherSettings],
) -> None:
    settings = use_settings(metrics_port=free_port())
    server = worker_metrics.start_worker_server(settings)
    assert server is not None
    url = f"http://127.0.0.1:{settings.metrics_port}/metrics"
    with urllib.request.urlopen(url, timeout=10) as response:
        body = response.read().decode()
    assert "# TYPE dispatch_jobs_dispatched_total counter" in body
    assert "dispatch_inline_busy" in body


def test_worker_server_is_off_with_port_zero(
    no_worker_server: None, use_settings: Callable[..., DispatcherSettings],
) -> None:
    assert worker_metrics.start_worker_server(use_settings(metrics_port=0)) is None


MULTIPROCESS_SCRIPT = textwrap.dedent("""
    import os, sys
    from dispatcher import task
    from dispatcher.core.job import Job
    from dispatcher.observability import metrics
    from dispatcher.routes.celery import worker_metrics
    from dispatcher.runtime.container import current
    from prometheus_client import generate_latest

    assert metrics.multiprocess_mode()

    @task(name="metrics_mp.job")
    def job() -> None: ...

    def work(n):
        item = Job(id="x", spec=job.spec, route="celery", queue="q", priority=5, payload={})
        for _ in range(n):
            current().metrics.observe_event("task.succeeded", item, 5.0, {})

    children = []
    for n in (3, 4):  # two forked processes, like a prefork pool
        pid = os.fork()
        if pid == 0:
            work(n)
            worker_metrics._pool_process_ended(pid=os.getpid())
            os._exit(0)
        children.append(pid)
    for pid in children:
        os.waitpid(pid, 0)
    sys.stdout.write(generate_latest(metrics.scrape_registry()).decode())
""")


def test_multiprocess_mode_adds_up_the_processes(tmp_path: Path) -> None:
    import os

    env = {k: v for k, v in os.environ.items() if not k.startswith("DISPATCH_")}
    env["PROMETHEUS_MULTIPROC_DIR"] = str(tmp_path)
    result = subprocess.run([sys.executable, "-c", MULTIPROCESS_SCRIPT], env=env, cwd=ROOT,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    labels = '{route="celery",task="metrics_mp.job"}'
    assert f"dispatch_jobs_succeeded_total{labels} 7.0" in result.stdout
    assert f"dispatch_job_duration_seconds_count{labels} 7.0" in result.stdout
    assert "dispatch_inline_busy 0.0" in result.stdout  # the scrape-time gauges ride along
    assert len(list(tmp_path.glob("counter_*.db"))) == 2


def test_every_metric_is_documented_in_the_readme() -> None:
    families = [
        *metrics.JOBS_DISPATCHED.describe(), *metrics.JOBS_SUCCEEDED.describe(),
        *metrics.JOBS_FAILED.describe(), *metrics.JOBS_RETRIED.describe(),
        *metrics.JOBS_CANCELLED.describe(), *metrics.RATE_LIMITED.describe(),
        *metrics.CONCURRENCY_LIMITED.describe(),
        *metrics.JOB_DURATION.describe(), *metrics.QUEUE_WAIT.describe(),
        *metrics.ROUTE_DECISIONS.describe(), *gauges.COLLECTOR.describe(),
    ]
    readme = (ROOT / "README.md").read_text()
    suffix = {"counter": "_total"}
    names = [f"`{f.name}{suffix.get(f.type, '')}`" for f in families]
    assert len(names) == 19
    assert [n for n in names if n not in readme] == []


def test_supervisor_gives_each_worker_a_fresh_metrics_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import signal

    from dispatcher.routes.celery import supervisor as entry

    monkeypatch.delenv("PROMETHEUS_MULTIPROC_DIR", raising=False)
    seen = tmp_path / "seen"
    # Run 1 leaves a file in its directory and exits unasked (restarted); run 2 refuses
    # its settings, which ends the supervisor.
    script = (
        "import os, pathlib, sys\n"
        "d = pathlib.Path(os.environ['PROMETHEUS_MULTIPROC_DIR'])\n"
        f"seen = pathlib.Path({str(seen)!r})\n"
        "lines = seen.read_text().splitlines() if seen.exists() else []\n"
        "seen.write_text('\\n'.join([*lines, f'{d} {sorted(os.listdir(d))}']))\n"
        "(d / 'counter_1.db').write_bytes(b'')\n"
        "sys.exit(2 if lines else 0)\n"
    )
    handlers = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        assert entry.supervise([], command=[sys.executable, "-c", script]) == entry.CONFIG_ERROR
    finally:
        for sig, handler in handlers.items():
            signal.signal(sig, handler)
    runs = [line.split(" ", 1) for line in seen.read_text().splitlines()]
    assert [listing for _, listing in runs] == ["[]", "[]"]  # empty at every start
    assert runs[0][0] != runs[1][0]
    assert not any(Path(directory).exists() for directory, _ in runs)  # removed afterwards
