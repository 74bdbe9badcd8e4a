"""Spill-over publishes off the caller's thread and loses nothing.

- Jobs spilled over from a full inline executor are published by the background
  publisher (their ``task.dispatched`` events come from its thread, none from the
  dispatching one); each answers PENDING at once, and each runs exactly once.
- When Redis hangs, the dispatching thread is never held up: the publisher spools
  what it holds, and the relay delivers every job exactly once after the outage.
- A plain script that exits right after spilling hands every job over at exit.
- Heavy jobs spill over after a shorter backlog than cheap ones.
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import threading
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from dispatcher import DispatcherSettings, TaskHandle, configure, get_settings, task
from dispatcher.core.spec import PRIORITY_NAMES
from dispatcher.runtime.container import current
from dispatcher.runtime.task import Task
from dispatcher.store.embedded import EmbeddedRedis
from tests.integration import sample_tasks as samples
from tests.support import ROOT, wait_until

GATE = threading.Event()


@task(name="tests.spill.gated", weight=1)
def _gated() -> None:
    """Holds an inline slot until the test opens the gate."""
    GATE.wait(120)


#: Pinned inline: weighed at its long mean it would spill over too, and the session's
#: worker, which does not have it, would hand its message back and forth for minutes,
#: holding a consumer each time (other tests then saw one consumer only).
gated = _gated.options(route="inline")


class Dispatched(logging.Handler):
    """Each ``task.dispatched`` event: (thread name, reason, task id)."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.seen: list[tuple[str, object, object]] = []

    def emit(self, record: logging.LogRecord) -> None:
        fields = getattr(record, "dispatch", None)
        if isinstance(fields, dict) and fields.get("event") == "task.dispatched":
            self.seen.append((record.threadName or "", fields.get("reason"),
                              fields.get("task_id")))


@pytest.fixture
def dispatched() -> Iterator[Dispatched]:
    handler = Dispatched()
    logger = logging.getLogger("dispatcher")
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)  # task.dispatched is a debug event
    try:
        yield handler
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


def test_spilled_jobs_are_published_off_the_dispatching_thread(
    broker: str, dispatched: Dispatched
) -> None:
    configure(get_settings(), inline_concurrency=1, inline_max_pending=1)
    key = f"spill:{uuid.uuid4()}"
    GATE.clear()
    try:
        gated.dispatch()
        wait_until(lambda: current().inline_load() == (1, 1), "the gated job running")
        gated.dispatch()  # waits: the executor is full from here on
        handles: list[TaskHandle] = []
        for _ in range(40):
            handle = samples.slow_inline.dispatch(key, seconds=0)
            assert handle.route == "celery"
            assert handle.state() in {"PENDING", "STARTED", "SUCCESS"}  # known at once
            handles.append(handle)
        many = samples.slow_inline.dispatch_many([{"key": key, "seconds": 0}] * 20)
        assert {h.route for h in many} == {"celery"}
        handles += many
    finally:
        GATE.set()
    for handle in handles:
        assert handle.get(timeout=60) is None and handle.state() == "SUCCESS"
    wait_until(lambda: len(samples.entries(key)) >= len(handles), "every job's ledger entry")
    assert len(samples.entries(key)) == len(handles)  # each ran once
    ids = {h.id for h in handles}
    events = [(thread, reason) for thread, reason, task_id in dispatched.seen
              if task_id in ids]
    assert len(events) == len(ids)
    assert set(events) == {("dispatch-spill", "spill_over")}


def test_after_a_lifespan_ends_spilled_jobs_are_published_again_not_spooled(
    broker: str, dispatched: Dispatched
) -> None:
    configure(get_settings(), inline_concurrency=1, inline_max_pending=1)
    runtime = current()
    key = f"spill-again:{uuid.uuid4()}"
    GATE.clear()
    try:
        gated.dispatch()
        wait_until(lambda: runtime.inline_load() == (1, 1), "the gated job running")
        gated.dispatch()
        first = samples.slow_inline.dispatch(key, seconds=0)  # spills: a publisher
        runtime.celery.close()  # what the end of an app's lifespan does
        handles = [samples.slow_inline.dispatch(key, seconds=0) for _ in range(5)]
    finally:
        GATE.set()
    assert first.get(timeout=60) is None
    for handle in handles:
        assert handle.get(timeout=60) is None
    assert runtime.celery.monitor.spool.depth() == 0
    reasons = {reason for _, reason, task_id in dispatched.seen
               if task_id in {h.id for h in handles}}
    assert reasons == {"spill_over"}


def test_a_spill_over_through_the_plan_matches_the_general_path(
    broker: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The fast path of a spill-over (``Task._spill``) gives the job the route, queue,
    priority and request the general path gives it, and counts it as spilled."""
    configure(get_settings(), inline_concurrency=1, inline_max_pending=1)
    runtime = current()
    key, queue = f"spill-plan:{uuid.uuid4()}", f"spill-plan-{uuid.uuid4().hex[:8]}"
    shaped = samples.slow_inline.options(queue=queue, priority="high")
    spilled_before = runtime.metrics.spilled
    GATE.clear()
    try:
        gated.dispatch()
        wait_until(lambda: runtime.inline_load() == (1, 1), "the gated job running")
        gated.dispatch()
        shaped.route_for()  # makes the plan, as a first dispatch would
        plan = shaped._inline_plan
        assert plan is not None and plan.spill_queue == queue
        fast_paths: list[str] = []
        spill = Task._spill

        def counted(self: Task[Any, Any], *args: Any) -> TaskHandle:
            fast_paths.append(self.name)
            return spill(self, *args)

        monkeypatch.setattr(Task, "_spill", counted)
        fast = shaped.dispatch(key, seconds=0)
        assert fast_paths == ["samples.slow_inline"]  # it took the plan's path
        slow = shaped._dispatch_validated(shaped.validator.payload((key,), {"seconds": 0}))
    finally:
        GATE.set()
    assert (fast.route, fast.queue) == (slow.route, slow.queue) == ("celery", queue)
    assert runtime.metrics.spilled - spilled_before == 2
    records = [runtime.records.load(h.id) for h in (fast, slow)]
    assert all(r is not None for r in records)
    shape = [{k: r[k] for k in ("route", "queue", "priority", "task_name")}  # type: ignore[index]
             for r in records]
    assert shape[0] == shape[1]
    assert shape[0]["priority"] == PRIORITY_NAMES["high"]  # the override, not the task's


def _routes_behind_a_busy_slot(key: str, count: int,
                               dispatch: Callable[[], TaskHandle] | None = None,
                               ) -> list[TaskHandle]:
    """Dispatch ``count`` jobs (``slow_inline`` with no sleep, unless ``dispatch`` says
    otherwise) while the only inline slot is held by a gated job (pinned inline: the
    gate opens in this process only)."""
    GATE.clear()
    try:
        gated.options(route="inline").dispatch()
        wait_until(lambda: current().inline_load()[0] == 1, "the gated job running")
        if dispatch is None:
            return [samples.slow_inline.dispatch(key, seconds=0) for _ in range(count)]
        return [dispatch() for _ in range(count)]
    finally:
        GATE.set()


def test_heavy_jobs_spill_over_sooner_than_cheap_ones(broker: str) -> None:
    """Each waiting job counts at its task's mean run time against
    ``DISPATCH_INLINE_MAX_BACKLOG``; ``DISPATCH_INLINE_MAX_PENDING`` stays the cap."""
    key = f"weigh:{uuid.uuid4()}"
    configure(get_settings(), inline_concurrency=1, inline_max_pending=1000,
              inline_max_backlog=1.0)
    assert current().inline.pending_limit(get_settings()) == 100  # untimed: 10 ms a job
    assert samples.slow_inline.dispatch(key, seconds=0.5).get(timeout=60) is None
    limit = current().inline.pending_limit(get_settings())
    assert limit in (1, 2)  # one 0.5 s job timed: 1 s of backlog holds one or two
    heavy = _routes_behind_a_busy_slot(key, 4)
    assert [h.route for h in heavy] == ["inline"] * limit + ["celery"] * (4 - limit)

    configure(get_settings(), inline_concurrency=1, inline_max_pending=1000,
              inline_max_backlog=1.0)
    assert samples.slow_inline.dispatch(key, seconds=0).get(timeout=60) is None
    assert current().inline.pending_limit(get_settings()) > 20  # cheap: a long backlog
    cheap = _routes_behind_a_busy_slot(key, 20)
    assert {h.route for h in cheap} == {"inline"}
    for handle in heavy + cheap:
        assert handle.get(timeout=60) is None and handle.state() == "SUCCESS"


def test_a_heavy_task_spills_over_after_a_history_of_cheap_jobs(broker: str) -> None:
    """Waiting jobs are weighed by their own task's mean run time: many cheap jobs
    that ran since do not let a heavy task's jobs pile up (one process-wide mean did:
    after 40 cheap jobs it let ~15 jobs of 0.5 s wait in 1 s of backlog)."""
    key = f"mix:{uuid.uuid4()}"
    configure(get_settings(), inline_concurrency=1, inline_max_pending=1000,
              inline_max_backlog=1.0)
    assert samples.slow_inline.dispatch(key, seconds=0.5).get(timeout=60) is None
    for value in range(40):
        assert samples.echo.dispatch({"n": value}).get(timeout=60) == {"n": value}
    heavy = _routes_behind_a_busy_slot(key, 6)
    routes = [h.route for h in heavy]
    # The first waits behind nothing; past two waiting (1 s at 0.5 s each), they spill.
    assert routes[0] == "inline" and routes.count("inline") <= 2, routes
    for handle in heavy:
        assert handle.get(timeout=60) is None and handle.state() == "SUCCESS"


def test_cheap_jobs_stay_inline_after_a_history_of_heavy_ones(broker: str) -> None:
    """The other way round: a heavy task's runs do not make a cheap task's jobs spill
    (the process-wide mean, 0.5 s here, let two of them wait)."""
    key = f"mix:{uuid.uuid4()}"
    configure(get_settings(), inline_concurrency=1, inline_max_pending=1000,
              inline_max_backlog=1.0)
    assert samples.slow_inline.dispatch(key, seconds=0.5).get(timeout=60) is None
    assert samples.echo.dispatch({"n": 0}).get(timeout=60) == {"n": 0}
    executor = current().inline.current_executor()
    assert executor is not None and executor.governor.mean_run is not None
    assert executor.governor.mean_run > 0.125  # one mean for all would let 8 spill
    cheap = _routes_behind_a_busy_slot(key, 8, lambda: samples.echo.dispatch({"n": 1}))
    assert [h.route for h in cheap] == ["inline"] * 8
    for handle in cheap:
        assert handle.get(timeout=60) == {"n": 1}


@pytest.fixture
def own_redis() -> Iterator[EmbeddedRedis]:
    with EmbeddedRedis() as server:
        yield server


def test_a_hung_redis_holds_no_dispatch_and_loses_no_spilled_job(
    own_redis: EmbeddedRedis, tmp_path: Path, dispatched: Dispatched
) -> None:
    configure(DispatcherSettings(  # type: ignore[call-arg]
        broker_url=own_redis.url, spool_path=str(tmp_path / "spool.sqlite3"),
        inline_concurrency=1, inline_max_pending=1, publish_timeout=0.5, _env_file=None))
    runtime = current()
    assert runtime.celery.status()["reachable"]
    GATE.clear()
    try:
        gated.dispatch()
        wait_until(lambda: runtime.inline_load() == (1, 1), "the gated job running")
        gated.dispatch()
        own_redis.pause()  # SIGSTOP: every call hangs until its timeout
        try:
            handles = [samples.slow_inline.dispatch("unused", seconds=0) for _ in range(30)]
            assert {h.route for h in handles} == {"celery"}
            spool = runtime.celery.monitor.spool
            wait_until(lambda: spool.depth() == 30, "the spilled jobs spooled")
        finally:
            own_redis.resume()
    finally:
        GATE.set()
    client = redis.Redis.from_url(own_redis.url)
    # The relay publishes, then deletes what it published from the spool.
    wait_until(lambda: spool.depth() == 0, "the spool relayed and emptied")
    assert runtime.queue_depths.now().get("celery") == 30
    lists = [k for k in client.scan_iter("celery*") if client.type(k) == b"list"]
    queued = [json.loads(raw)["headers"]["id"] for key in lists
              for raw in client.lrange(key, 0, -1)]
    assert sorted(queued) == sorted(h.id for h in handles)  # each exactly once
    threads = {thread for thread, _, task_id in dispatched.seen
               if task_id in {h.id for h in handles}}
    assert threads == {"dispatch-spill"}


SCRIPT = """
import json, sys, time
from dispatcher import configure
from dispatcher.runtime.container import current
from tests.integration import sample_tasks as samples
configure(inline_concurrency=1, inline_max_pending=1)
# The slot and the one waiting place are taken for longer than this script lives.
samples.slow_inline.dispatch(sys.argv[1] + ":held", seconds=600)
while current().inline_load()[0] < 1:
    time.sleep(0.01)
samples.slow_inline.dispatch(sys.argv[1] + ":held", seconds=600)
handles = [samples.slow_inline.dispatch(sys.argv[1], seconds=0) for _ in range(200)]
print(json.dumps([[h.id, h.route] for h in handles]))
"""


def test_a_script_that_exits_right_after_spilling_hands_every_job_over(
    broker: str, service_env: dict[str, str]
) -> None:
    key = f"spill-exit:{uuid.uuid4()}"
    out = subprocess.run([sys.executable, "-c", SCRIPT, key], env=service_env, cwd=ROOT,
                         capture_output=True, text=True, timeout=120, check=True)
    routed = json.loads(out.stdout.strip().splitlines()[-1])
    spilled = [task_id for task_id, route in routed if route == "celery"]
    assert len(spilled) == 200
    store = current().records

    def all_done() -> bool:
        records = store.load_many(spilled)
        return all(r is not None and r["status"] == "SUCCESS" for r in records)

    wait_until(all_done, "every spilled job run by the worker", timeout=120)
