"""Both routes side by side: one retry story, one timeout rule, priorities, handles."""

from __future__ import annotations

import asyncio
import itertools
import json
import time
import uuid

import pytest
import redis

from dispatcher import TaskFailed, TaskHandle
from dispatcher.routes.celery.protocol import celery_priority, queue_key
from tests.integration import sample_tasks as samples


def _gaps(key: str) -> list[float]:
    times = [float(e["t"]) for e in samples.entries(key)]  # type: ignore[arg-type]
    return [round(b - a, 2) for a, b in itertools.pairwise(times)]


@pytest.mark.parametrize("route", ["inline", "celery"])
def test_same_failing_task_same_attempts_and_delays(broker: str, route: str) -> None:
    key = f"fails:{route}:{uuid.uuid4()}"
    handle = samples.always_fails.options(route=route).dispatch(key)
    assert handle.route == route
    with pytest.raises(TaskFailed) as failure:
        handle.get(timeout=20)
    assert failure.value.error_type == "RuntimeError"
    record = handle.record()
    assert record is not None
    assert (record["state"], record["attempt"], record["max_attempts"]) == ("FAILURE", 3, 3)
    assert record["reason"] == "attempts_exhausted"
    gaps = _gaps(key)
    # Policy: base 0.3 s, x2, no jitter -> waits of 0.3 s then 0.6 s on either route.
    assert len(gaps) == 2
    assert 0.3 <= gaps[0] < 0.3 + 0.25
    assert 0.6 <= gaps[1] < 0.6 + 0.25


@pytest.mark.parametrize("route", ["inline", "celery"])
def test_transient_failures_are_retried_until_success(broker: str, route: str) -> None:
    key = f"flaky:{route}:{uuid.uuid4()}"
    handle = samples.flaky.options(route=route).dispatch(key, fail_times=2)
    assert handle.get(timeout=20) == 3
    record = handle.record()
    assert record is not None
    assert (record["state"], record["attempt"]) == ("SUCCESS", 3)


@pytest.mark.parametrize("route", ["inline", "celery"])
@pytest.mark.parametrize("task_name", ["sleepy", "async_sleepy"])
def test_timeout_counts_as_a_failure_on_both_routes(broker: str, route: str,
                                                    task_name: str) -> None:
    key = f"timeout:{route}:{task_name}:{uuid.uuid4()}"
    task_obj = getattr(samples, task_name)
    handle = task_obj.options(route=route).dispatch(key, seconds=3.0)
    with pytest.raises(TaskFailed) as failure:
        handle.get(timeout=20)
    assert failure.value.error_type == "TaskTimeout"
    assert len(samples.entries(key)) == 2  # max_attempts=2, the timeout was retried once


def test_high_priority_job_overtakes_a_low_priority_backlog(broker: str) -> None:
    key = f"order:{uuid.uuid4()}"
    low = samples.record_order.options(priority="low")
    for i in range(12):
        low.dispatch(key, f"low-{i}", pause=0.1)
    urgent = samples.record_order.options(priority=9).dispatch(key, "urgent", pause=0.1)
    urgent.get(timeout=30)
    labels: list[str] = []
    for _ in range(100):
        labels = [str(e["label"]) for e in samples.entries(key)]
        if len(labels) == 13:
            break
        time.sleep(0.1)
    assert len(labels) == 13
    # Two worker processes may already hold one low job each when the urgent one arrives.
    assert labels.index("urgent") <= 3, labels


def test_async_tasks_reuse_one_event_loop_per_worker_process(broker: str) -> None:
    handles = [samples.loop_identity.dispatch() for _ in range(8)]
    loops_by_pid: dict[int, set[int]] = {}
    for handle in handles:
        pid, loop_id = handle.get(timeout=20)
        loops_by_pid.setdefault(pid, set()).add(loop_id)
    assert all(len(loops) == 1 for loops in loops_by_pid.values()), loops_by_pid


@pytest.mark.parametrize("route", ["inline", "celery"])
def test_handle_wait_and_state_on_both_routes(broker: str, route: str) -> None:
    handle = samples.echo.options(route=route).dispatch({"a": 1, "b": 2})
    assert asyncio.run(handle.wait(timeout=20)) == {"a": 1, "b": 2}
    assert handle.state() == "SUCCESS"
    assert TaskHandle.lookup(handle.id) == handle


def test_celery_messages_are_json_protocol_2(broker: str) -> None:
    queue = f"parked-{uuid.uuid4().hex[:8]}"  # no worker consumes it
    handle = samples.echo.options(route="celery", queue=queue, priority="high").dispatch(
        {"x": 1}
    )
    client = redis.Redis.from_url(broker)
    key = queue_key(queue, 8)
    raw = client.lrange(key, 0, -1)
    client.delete(key)
    assert len(raw) == 1
    message = json.loads(raw[0])
    assert message["content-type"] == "application/json"
    headers = message["headers"]
    assert (headers["id"], headers["task"]) == (handle.id, "samples.echo")
    assert headers["dispatch"]["attempt"] == 1
    assert message["properties"]["priority"] == celery_priority(8)
    import base64

    args, kwargs, _embed = json.loads(base64.b64decode(message["body"]))
    assert (args, kwargs) == ([], {"value": {"x": 1}})


def test_decorator_queue_is_used_and_consumed_by_python_m_worker(broker: str) -> None:
    handle = samples.on_own_queue.dispatch(21)
    assert (handle.route, handle.queue) == ("celery", "samples-heavy")
    assert handle.get(timeout=20) == 42
    record = handle.record()
    assert record is not None and record["queue"] == "samples-heavy"


@pytest.mark.parametrize("route", ["inline", "celery"])
def test_a_task_reads_its_own_job_on_either_route(broker: str, route: str) -> None:
    handle = samples.whoami.options(route=route).dispatch(f"whoami:{uuid.uuid4()}")
    assert handle.get(timeout=20) == {
        "id": handle.id, "name": "samples.whoami", "route": route, "attempt": 2,
        "max_attempts": 2, "request_id": None}

