"""The inline route without a broker: in-memory records, bounded executor, timeouts,
retries and countdowns."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from dispatcher import (
    BrokerUnavailable,
    DispatcherSettings,
    RetryPolicy,
    TaskFailed,
    TaskHandle,
    TaskTimeout,
    task,
)
from dispatcher.runtime.container import current
from dispatcher.store.memory import MemoryRecordStore
from dispatcher.testing import capture_dispatches, wait_for_inline_jobs


class Counter:
    """Thread-safe counts of calls, and of calls running at once."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.calls = 0
        self.running = 0
        self.max_running = 0
        self.threads: list[str] = []

    def enter(self) -> None:
        with self._lock:
            self.calls += 1
            self.running += 1
            self.max_running = max(self.max_running, self.running)
            self.threads.append(threading.current_thread().name)

    def leave(self) -> None:
        with self._lock:
            self.running -= 1


@pytest.fixture
def counter() -> Counter:
    return Counter()


@pytest.fixture
def release() -> Iterator[threading.Event]:
    """Blocked task threads wait on this; set at teardown so none outlives the test."""
    event = threading.Event()
    yield event
    event.set()


def test_without_a_broker_records_live_in_memory() -> None:
    assert isinstance(current().records, MemoryRecordStore)


def test_sync_task_succeeds(counter: Counter) -> None:
    @task(name="unit.inline.sync")
    def add(a: int, b: int) -> int:
        counter.enter()
        counter.leave()
        return a + b

    with capture_dispatches() as captured:
        handle = add.dispatch(2, b=3)
    assert captured == [handle]
    assert isinstance(handle, TaskHandle)
    assert (handle.name, handle.route, handle.queue) == ("unit.inline.sync", "inline", None)
    assert handle.get(timeout=5) == 5
    assert handle.state() == "SUCCESS"
    record = handle.record()
    assert record is not None
    assert (record["state"], record["result"], record["attempt"]) == ("SUCCESS", 5, 1)
    assert record["date_done"] is not None
    assert record["duration_ms"] >= 0
    assert counter.calls == 1
    # sync tasks run on the executor's own pool, not on the caller's thread
    assert counter.threads[0].startswith("dispatch-inline")
    assert TaskHandle.lookup(handle.id) == handle


def test_a_job_that_ended_is_neither_running_nor_waiting(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The spill-over limit reads ``waiting()``: once a job's attempt has ended, it is
    counted nowhere, not as waiting for a moment after it stopped running."""
    @task(name="unit.inline.ended")
    def ended() -> None:
        return None

    executor = current().inline.executor
    seen: list[tuple[int, int, int]] = []
    spent = executor.governor.spent

    def spying(cpu: float, wall: float, task: str | None = None) -> None:
        # called right after the attempt ended
        seen.append((executor.running(), executor.waiting(), executor.outstanding()))
        spent(cpu, wall, task)

    monkeypatch.setattr(executor.governor, "spent", spying)
    ended.dispatch().get(timeout=5)
    wait_for_inline_jobs(timeout=5)
    assert seen == [(0, 0, 0)]


def test_waiting_jobs_are_weighed_at_their_own_tasks_mean(
        use_settings: Callable[..., DispatcherSettings], release: threading.Event) -> None:
    """What the spill-over limit weighs a waiting job at: its task's mean run time
    (10 ms for a task not timed yet). The weight leaves with the job however it stops
    waiting (it starts; it is cancelled on its countdown); with none waiting, the
    process's mean over all tasks counts."""
    use_settings(inline_concurrency=1)

    @task(name="unit.inline.blocker")
    def blocker() -> None:
        release.wait(30)

    @task(name="unit.inline.quick")
    def quick() -> None:
        return None

    quick.dispatch().get(timeout=5)
    executor = current().inline.executor
    quick_mean = executor.governor.task_mean("unit.inline.quick")
    assert quick_mean is not None and executor.waiting() == 0
    assert executor.accepted.weighed_run() == executor.governor.mean_run
    blocked = blocker.dispatch()
    deadline = time.monotonic() + 10
    while executor.running() != 1:
        assert time.monotonic() < deadline, "the blocker never started"
        time.sleep(0.005)
    waiting = [quick.dispatch() for _ in range(3)]
    assert executor.accepted.weighed_run() == pytest.approx(quick_mean)
    later = blocker.options(countdown=60).dispatch()  # not timed yet: 10 ms
    assert executor.accepted.weighed_run() == pytest.approx((3 * quick_mean + 0.01) / 4)
    assert later.cancel()
    assert executor.waiting() == 3
    assert executor.accepted.weighed_run() == pytest.approx(quick_mean)
    release.set()
    assert [h.get(timeout=10) for h in [blocked, *waiting]] == [None] * 4
    wait_for_inline_jobs(timeout=5)
    assert executor.accepted.weighed_run() == executor.governor.mean_run


def test_async_task_succeeds(counter: Counter) -> None:
    @task(name="unit.inline.async")
    async def mul(a: int, b: int) -> dict[str, int]:
        counter.enter()
        await asyncio.sleep(0.01)
        counter.leave()
        return {"product": a * b}

    handle = mul.dispatch(3, 4)
    assert handle.get(timeout=5) == {"product": 12}
    assert handle.state() == "SUCCESS"
    assert counter.threads == ["dispatch-inline-loop"]  # on the executor's event loop


def test_handle_wait_from_async_code() -> None:
    @task(name="unit.inline.wait")
    async def echo(value: str) -> str:
        return value

    async def main() -> Any:
        return await echo.dispatch("hi").wait(timeout=5)

    assert asyncio.run(main()) == "hi"


def test_results_are_stored_as_json() -> None:
    @task(name="unit.inline.json_result")
    def pair() -> tuple[int, str]:
        return (1, "a")

    assert pair.dispatch().get(timeout=5) == [1, "a"]


def test_unstorable_result_fails_the_job() -> None:
    @task(name="unit.inline.bad_result")
    def bad() -> object:
        return object()

    with pytest.raises(TaskFailed) as info:
        bad.dispatch().get(timeout=5)
    assert info.value.error_type == "TypeError"
    assert "JSON" in info.value.error_message


def test_failing_task_raises_task_failed_with_its_error_type() -> None:
    @task(name="unit.inline.fails")
    def fails(reason: str) -> None:
        raise KeyError(reason)

    handle = fails.dispatch("missing-key")
    with pytest.raises(TaskFailed) as info:
        handle.get(timeout=5)
    assert info.value.error_type == "KeyError"
    assert "missing-key" in info.value.error_message
    assert info.value.task_id == handle.id
    record = handle.record()
    assert record is not None
    assert record["state"] == "FAILURE"
    assert record["error"]["type"] == "KeyError"
    assert "KeyError" in record["traceback"]
    assert record["reason"] == "attempts_exhausted"


def test_failing_async_task_raises_task_failed() -> None:
    @task(name="unit.inline.fails_async")
    async def fails() -> None:
        raise ValueError("async boom")

    with pytest.raises(TaskFailed) as info:
        fails.dispatch().get(timeout=5)
    assert (info.value.error_type, info.value.error_message) == ("ValueError", "async boom")


def test_retry_then_success(counter: Counter) -> None:
    @task(
        name="unit.inline.flaky",
        retry=RetryPolicy(max_attempts=3, base_delay=0.01, jitter=False),
    )
    def flaky() -> str:
        counter.enter()
        counter.leave()
        if counter.calls < 3:
            raise ConnectionError("try again")
        return "third time lucky"

    handle = flaky.dispatch()
    assert handle.get(timeout=5) == "third time lucky"
    wait_for_inline_jobs(timeout=5)
    assert counter.calls == 3
    record = handle.record()
    assert record is not None
    assert record["attempt"] == 3


def test_give_up_on_stops_retrying(counter: Counter) -> None:
    @task(
        name="unit.inline.give_up",
        retry=RetryPolicy(max_attempts=5, base_delay=0.01, jitter=False, give_up_on=KeyError),  # type: ignore[arg-type]
    )
    def give_up() -> None:
        counter.enter()
        counter.leave()
        raise KeyError("no")

    handle = give_up.dispatch()
    with pytest.raises(TaskFailed):
        handle.get(timeout=5)
    wait_for_inline_jobs(timeout=5)
    assert counter.calls == 1
    record = handle.record()
    assert record is not None
    assert record["reason"] == "give_up_on"


def test_sync_timeout_fails_with_task_timeout(release: threading.Event) -> None:
    @task(name="unit.inline.slow_sync", timeout=0.2)
    def slow() -> None:
        release.wait(2)  # "sleeps 2 s", but lets the thread go at teardown

    handle = slow.dispatch()
    with pytest.raises(TaskFailed) as info:
        handle.get(timeout=5)
    assert info.value.error_type == "TaskTimeout"
    assert "timeout of 0.2s" in info.value.error_message
    record = handle.record()
    assert record is not None
    assert record["state"] == "FAILURE"
    assert record["error"]["type"] == TaskTimeout.__name__


def test_async_timeout_fails_with_task_timeout() -> None:
    cancelled = threading.Event()

    @task(name="unit.inline.slow_async", timeout=0.2)
    async def slow() -> None:
        try:
            await asyncio.sleep(2)
        except asyncio.CancelledError:
            cancelled.set()
            raise

    handle = slow.dispatch()
    with pytest.raises(TaskFailed) as info:
        handle.get(timeout=5)
    assert info.value.error_type == "TaskTimeout"
    assert cancelled.wait(5)  # the coroutine is cancelled, not left running


def test_timeout_with_retry_makes_exactly_two_attempts(
    counter: Counter, release: threading.Event
) -> None:
    @task(
        name="unit.inline.slow_retry",
        timeout=0.2,
        retry=RetryPolicy(max_attempts=2, jitter=False, base_delay=0.05),
    )
    def slow() -> None:
        counter.enter()
        release.wait(2)
        counter.leave()

    handle = slow.dispatch()
    with pytest.raises(TaskFailed) as info:
        handle.get(timeout=5)
    assert info.value.error_type == "TaskTimeout"
    wait_for_inline_jobs(timeout=5)
    assert counter.calls == 2
    record = handle.record()
    assert record is not None
    assert (record["attempt"], record["max_attempts"]) == (2, 2)
    assert record["reason"] == "attempts_exhausted"


def test_concurrency_is_bounded(
    use_settings: Callable[..., DispatcherSettings], counter: Counter
) -> None:
    use_settings(inline_concurrency=2)

    @task(name="unit.inline.bounded")
    def busy(i: int) -> int:
        counter.enter()
        time.sleep(0.2)
        counter.leave()
        return i

    handles = [busy.dispatch(i) for i in range(6)]
    assert [h.get(timeout=10) for h in handles] == list(range(6))
    wait_for_inline_jobs(timeout=5)
    assert counter.calls == 6
    assert counter.max_running <= 2
    assert counter.max_running == 2  # and the two slots were actually used


def test_async_concurrency_is_bounded(
    use_settings: Callable[..., DispatcherSettings], counter: Counter
) -> None:
    use_settings(inline_concurrency=2)

    @task(name="unit.inline.bounded_async")
    async def busy(i: int) -> int:
        counter.enter()
        await asyncio.sleep(0.1)
        counter.leave()
        return i

    handles = [busy.dispatch(i) for i in range(6)]
    assert [h.get(timeout=10) for h in handles] == list(range(6))
    assert counter.max_running == 2


def test_countdown_delays_the_start() -> None:
    started_at: list[float] = []

    @task(name="unit.inline.countdown")
    def stamp() -> None:
        started_at.append(time.time())

    before = time.time()
    handle = stamp.options(countdown=0.3).dispatch()
    assert handle.state() == "PENDING"
    handle.get(timeout=5)
    record = handle.record()
    assert record is not None
    assert record["started_at"] - record["dispatched_at"] >= 0.25
    assert started_at[0] - before >= 0.25


def test_while_the_server_is_saturated_jobs_wait_for_their_max_hold(
    use_settings: Callable[..., DispatcherSettings]
) -> None:
    """Held from when each became due (after its countdown), then started although the
    server never eased; with the server idle, the next one starts at once."""
    use_settings(inline_max_hold=0.3, inline_busy_share=0.5)
    busy = [True]
    current().inline.executor.governor._busy = lambda: busy[0]

    @task(name="unit.inline.held")
    def held() -> float:
        return time.time()

    first = held.dispatch()
    later = held.options(countdown=0.2).dispatch()
    first_started = first.get(timeout=5)
    later_started = later.get(timeout=5)
    for handle, started, due_after in ((first, first_started, 0.0), (later, later_started, 0.2)):
        record = handle.record()
        assert record is not None
        assert started - record["dispatched_at"] >= (due_after + 0.3) * 0.99
    busy[0] = False
    dispatched = time.time()
    assert held.dispatch().get(timeout=5) - dispatched < 0.25


def test_get_times_out_while_the_job_runs(release: threading.Event) -> None:
    @task(name="unit.inline.blocked")
    def blocked() -> str:
        release.wait(5)
        return "done"

    handle = blocked.dispatch()
    with pytest.raises(TimeoutError):
        handle.get(timeout=0.1)
    with pytest.raises(TimeoutError, match="1 inline job"):
        wait_for_inline_jobs(timeout=0.1)
    assert handle.state() in {"PENDING", "STARTED"}
    release.set()
    assert handle.get(timeout=5) == "done"
    wait_for_inline_jobs(timeout=5)


def test_celery_route_without_a_broker_is_refused_and_nothing_is_kept() -> None:
    @task(name="unit.inline.heavy", weight=10)
    def heavy() -> None: ...

    with capture_dispatches() as captured, pytest.raises(BrokerUnavailable, match="no broker"):
        heavy.dispatch()
    assert captured == []
    assert current().inline.executor.outstanding() == 0


def test_sync_timeout_is_not_charged_to_the_next_job(
    use_settings: Callable[..., DispatcherSettings], release: threading.Event
) -> None:
    """Regression (was a bug in dispatcher/core.py ``run_async`` + dispatcher/inline.py).

    When a sync task times out, its thread keeps running (Python cannot stop it) and
    keeps its seat in the executor's pool, which has only ``inline_concurrency``
    threads; but its concurrency slot is released at once. The next sync job is then
    admitted, recorded STARTED, queued behind the still-busy thread, and its own
    ``timeout`` clock runs while it waits, so a task that takes no time at all fails
    with ``TaskTimeout`` without its function ever having started.
    """
    use_settings(inline_concurrency=1)

    @task(name="unit.inline.stuck", timeout=0.1)
    def stuck() -> None:
        release.wait(5)

    ran = threading.Event()

    @task(name="unit.inline.quick", timeout=0.5)
    def quick() -> str:
        ran.set()
        return "ok"

    with pytest.raises(TaskFailed):
        stuck.dispatch().get(timeout=5)
    handle = quick.dispatch()
    try:
        result = handle.get(timeout=5)
    except TaskFailed as exc:
        result = f"{exc.error_type} (function ran: {ran.is_set()})"
    assert result == "ok"


def test_a_dispatch_in_a_request_files_counts_and_logs_like_one_outside(
    dispatcher_log: Any, use_settings: Callable[..., DispatcherSettings]
) -> None:
    from prometheus_client import REGISTRY

    from dispatcher.core.context import RequestBatch, batch_var, request_id_var

    use_settings()

    @task(name="unit.inline.planned")
    def planned(n: int) -> int:
        return n

    def dispatched() -> float:
        return REGISTRY.get_sample_value(
            "dispatch_jobs_dispatched_total", {"task": "unit.inline.planned", "route": "inline"}
        ) or 0.0

    def fields(handle: TaskHandle) -> dict[str, Any]:
        [event] = [r for r in dispatcher_log.events(handle.id)
                   if r.dispatch["event"] == "task.dispatched"]  # type: ignore[attr-defined]
        return {k: v for k, v in event.dispatch.items()  # type: ignore[attr-defined]
                if k not in ("task_id", "request_id")}

    before = dispatched()
    outside = planned.dispatch(1)  # the general path, which also makes the plan
    batch = RequestBatch()
    tokens = batch_var.set(batch), request_id_var.set("req-1")
    try:
        inside = planned.dispatch(2)  # the plan's path
    finally:
        batch_var.reset(tokens[0])
        request_id_var.reset(tokens[1])
    [job] = batch.close()
    assert planned._inline_plan is not None
    assert (job.id, job.request_id, job.payload) == (inside.id, "req-1", {"n": 2})
    assert fields(inside) == fields(outside)
    assert dispatched() == before + 2
    record = current().records.load(inside.id)
    assert record is not None and record["status"] == "PENDING"
    assert record["request_id"] == "req-1"
    current().inline.executor.submit([job])
    assert inside.get(timeout=5) == 2 and outside.get(timeout=5) == 1
