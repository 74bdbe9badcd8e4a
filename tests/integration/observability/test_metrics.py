"""Prometheus metrics scraped from the real worker (prefork pool, two processes) and
the real API process."""

from __future__ import annotations

import uuid

import httpx
import pytest
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families

from dispatcher import TaskFailed
from tests.integration import sample_tasks as samples
from tests.integration.conftest import poll_state

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(url: str) -> Samples:
    response = httpx.get(url, timeout=10)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(response.text)
        for s in family.samples
    }


def get(samples_: Samples, name: str, **labels: str) -> float:
    return samples_.get((name, frozenset(labels.items())), 0.0)


def change(before: Samples, after: Samples, name: str, **labels: str) -> float:
    return get(after, name, **labels) - get(before, name, **labels)


def local(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def test_worker_counts_add_up_across_its_pool_processes(
    broker: str, worker_metrics_url: str
) -> None:
    identity = {"task": "samples.loop_identity", "route": "celery"}
    failing = {"task": "samples.always_fails", "route": "celery"}
    before = scrape(worker_metrics_url)
    dispatched_here = local("dispatch_jobs_dispatched_total", **identity)

    ran, pids = 0, set()
    for _ in range(5):  # until both pool processes have run some of the jobs
        handles = [samples.loop_identity.options(route="celery").dispatch() for _ in range(20)]
        pids |= {h.get(timeout=30)[0] for h in handles}
        ran += len(handles)
        if len(pids) == 2:
            break
    assert len(pids) == 2, "every job ran in the same pool process"
    with pytest.raises(TaskFailed):  # three attempts: two retried, one failure
        samples.always_fails.options(route="celery").dispatch(f"m:{uuid.uuid4()}").get(timeout=30)

    after = scrape(worker_metrics_url)
    # Counted where each event happens: dispatches in this process, runs in the pool.
    assert local("dispatch_jobs_dispatched_total", **identity) - dispatched_here == ran
    assert change(before, after, "dispatch_jobs_dispatched_total", **identity) == 0
    assert change(before, after, "dispatch_jobs_succeeded_total", **identity) == ran
    assert change(before, after, "dispatch_jobs_failed_total", **identity) == 0
    assert change(before, after, "dispatch_job_duration_seconds_count", **identity) == ran
    assert change(before, after, "dispatch_job_queue_wait_seconds_count", **identity) == ran
    bucket = change(before, after, "dispatch_job_duration_seconds_bucket", le="+Inf", **identity)
    assert bucket == ran

    assert change(before, after, "dispatch_jobs_retried_total", **failing) == 2
    assert change(before, after, "dispatch_jobs_failed_total", **failing) == 1
    assert change(before, after, "dispatch_jobs_succeeded_total", **failing) == 0
    assert change(before, after, "dispatch_job_duration_seconds_count", **failing) == 3

    assert get(after, "dispatch_broker_up") == 1
    assert ("dispatch_queue_depth", frozenset({("queue", "celery")})) in after
    assert ("dispatch_backlog", frozenset({("queue", "celery")})) in after
    assert ("dispatch_spool_depth", frozenset()) in after
    assert ("dispatch_delayed_jobs", frozenset()) in after
    assert get(after, "dispatch_inline_busy") == 0


def test_api_metrics_count_its_dispatches_and_inline_runs(
    api_url: str, worker_metrics_url: str
) -> None:
    inline = {"task": "api.tasks.write_notification", "route": "inline"}
    celery = {"task": "samples.loop_identity", "route": "celery"}
    api_before, worker_before = scrape(f"{api_url}/metrics"), scrape(worker_metrics_url)
    with httpx.Client(timeout=10) as client:
        sent = client.post(f"{api_url}/send-notification/metrics@example.com")
        queued = client.post(f"{api_url}/tasks/samples.loop_identity", json={})
        assert (sent.status_code, queued.status_code) == (202, 202)
        assert (sent.json()["route"], queued.json()["route"]) == ("inline", "celery")
        for answer in (sent, queued):
            poll_state(client, api_url, answer.json()["task_id"], {"SUCCESS"})
    api_after, worker_after = scrape(f"{api_url}/metrics"), scrape(worker_metrics_url)

    assert change(api_before, api_after, "dispatch_jobs_dispatched_total", **inline) == 1
    assert change(api_before, api_after, "dispatch_jobs_succeeded_total", **inline) == 1
    assert change(api_before, api_after, "dispatch_job_duration_seconds_count", **inline) == 1
    assert change(api_before, api_after, "dispatch_jobs_dispatched_total", **celery) == 1
    assert change(api_before, api_after, "dispatch_jobs_succeeded_total", **celery) == 0
    assert change(worker_before, worker_after, "dispatch_jobs_succeeded_total", **celery) == 1
    assert get(api_after, "dispatch_broker_up") == 1
    assert ("dispatch_queue_depth", frozenset({("queue", "celery")})) in api_after
    assert ("dispatch_backlog", frozenset({("queue", "celery")})) in api_after
