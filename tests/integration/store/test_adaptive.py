"""Adaptive routing and spill-over against the real Redis and the real worker.

- A ``weight="auto"`` task driven fast -> slow -> fast changes route exactly once each
  way (inline -> celery -> inline), with one logged and counted change per move.
- Flooding a small inline executor spills new, unpinned jobs over to Celery; every job
  (spilled, queued inline, pinned inline) runs exactly once.
"""

from __future__ import annotations

import itertools
import logging
import time
import uuid
from collections.abc import Iterator

import pytest
import redis
from prometheus_client import REGISTRY

from dispatcher import TaskHandle, configure, get_settings
from dispatcher.policy.adaptive import MIN_SAMPLES
from dispatcher.runtime.container import current
from dispatcher.store import keys
from tests.integration import sample_tasks as samples

AUTO = "samples.auto_sleep"
SPILL = "samples.slow_inline"
#: Well above a fast run (a ledger write on a local Redis), well below a slow one.
MAX_SECONDS = 0.1
SLOW = 0.3


class Events(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.fields: list[dict[str, object]] = []

    def emit(self, record: logging.LogRecord) -> None:
        fields = getattr(record, "dispatch", None)
        if isinstance(fields, dict):
            self.fields.append(dict(fields))


@pytest.fixture
def events() -> Iterator[Events]:
    logger = logging.getLogger("dispatcher")
    handler, level = Events(), logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    yield handler
    logger.removeHandler(handler)
    logger.setLevel(level)


def decisions(task: str, route: str, reason: str) -> float:
    value = REGISTRY.get_sample_value(
        "dispatch_route_decisions_total", {"task": task, "route": route, "reason": reason}
    )
    return value or 0.0


def test_auto_task_moves_to_celery_when_slow_and_back_once_fast(
    broker: str, events: Events
) -> None:
    configure(get_settings(), inline_max_seconds=MAX_SECONDS)
    client = redis.Redis.from_url(broker)
    client.delete(keys.adaptive_samples(AUTO), keys.adaptive_state(AUTO))
    to_celery, to_inline = decisions(AUTO, "celery", "adaptive"), decisions(AUTO, "inline",
                                                                             "adaptive")
    key = f"auto:{uuid.uuid4()}"
    routes: list[str] = []

    def run(seconds: float) -> str:
        handle = samples.auto_sleep.dispatch(key, seconds=seconds)
        routes.append(handle.route)
        assert handle.get(timeout=30) == "slept"
        return handle.route

    def drive(seconds: float, until: str, deadline: float) -> None:
        """Dispatch one job at a time until three in a row took ``until``."""
        streak = 0
        while streak < 3:
            assert time.monotonic() < deadline, f"never moved to {until}: {routes}"
            streak = streak + 1 if run(seconds) == until else 0

    for _ in range(MIN_SAMPLES + 3):  # fast from the start: stays inline
        run(0.0)
    assert set(routes) == {"inline"}
    drive(SLOW, "celery", time.monotonic() + 60)
    drive(0.0, "inline", time.monotonic() + 90)

    changes = [route for route, _ in itertools.groupby(routes)]
    assert changes == ["inline", "celery", "inline"], routes
    assert len(samples.entries(key)) == len(routes)  # every job ran, once

    moves = [f for f in events.fields if f.get("event") == "task.route_changed"]
    assert [(m["previous_route"], m["route"]) for m in moves] == [
        ("inline", "celery"), ("celery", "inline")
    ]
    assert str(moves[0]["reason"]).endswith(f"> {MAX_SECONDS:g}s")
    assert str(moves[1]["reason"]).endswith(f"< {MAX_SECONDS / 2:g}s")
    assert decisions(AUTO, "celery", "adaptive") == to_celery + 1
    assert decisions(AUTO, "inline", "adaptive") == to_inline + 1

    row = next(r for r in current().route_table() if r["task"] == AUTO)
    assert row["weight"] == "auto"
    assert row["route"] == "inline"
    assert row["adaptive"]["route"] == "inline"
    assert row["adaptive"]["samples"] >= MIN_SAMPLES
    assert row["adaptive"]["since"] is not None
    assert row["reason"].startswith("weight auto: p95")


def test_flooded_inline_executor_spills_over_and_loses_nothing(
    broker: str, events: Events
) -> None:
    configure(get_settings(), inline_concurrency=1, inline_max_pending=3)
    spilled_before = decisions(SPILL, "celery", "spill_over")
    key = f"flood:{uuid.uuid4()}"
    handles: list[TaskHandle] = [
        samples.slow_inline.dispatch(key, seconds=0.05) for _ in range(30)
    ]
    pinned = [
        samples.slow_inline.options(route="inline").dispatch(key, seconds=0.05)
        for _ in range(3)
    ]
    batch = samples.slow_inline.dispatch_many([{"key": key, "seconds": 0.05}] * 10)

    routes = [h.route for h in handles]
    assert routes[:3] == ["inline"] * 3  # fewer than 3 waiting when each was dispatched
    assert "celery" in routes
    assert {h.route for h in pinned} == {"inline"}  # pinned jobs queue, whatever the load
    assert "celery" in {h.route for h in batch}

    everything = handles + pinned + batch
    for handle in everything:
        handle.get(timeout=60)
        assert handle.state() == "SUCCESS"
    deadline = time.monotonic() + 10
    while len(samples.entries(key)) < len(everything) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert len(samples.entries(key)) == len(everything)  # none lost, none run twice

    celery_ids = {h.id for h in everything if h.route == "celery"}
    dispatched = [f for f in events.fields if f.get("event") == "task.dispatched"
                  and f.get("task_id") in celery_ids]
    assert len(dispatched) == len(celery_ids)
    assert {f["reason"] for f in dispatched} == {"spill_over"}
    assert decisions(SPILL, "celery", "spill_over") == spilled_before + len(celery_ids)
