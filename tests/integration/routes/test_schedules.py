"""Schedulers of several processes on one real Redis: each tick is dispatched once,
and missed ticks follow DISPATCH_SCHEDULE_CATCHUP."""

from __future__ import annotations

import contextlib
import copy
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import redis
from fastapi import FastAPI
from fastapi.testclient import TestClient

from dispatcher import DispatcherSettings, configure, task
from dispatcher.fastapi import install, jobs_router
from dispatcher.runtime.scheduler import CLAIM_TTL, Scheduler, schedule_rows
from dispatcher.store.embedded import EmbeddedRedis
from dispatcher.store.schedules import LEASE, ScheduleState, Taken
from dispatcher.testing import capture_dispatches


@task(name="tests.schedules.tick", schedule=timedelta(seconds=1))
def tick() -> None:
    """Runs inline in this test process."""


@pytest.fixture
def state() -> Iterator[ScheduleState]:
    with EmbeddedRedis() as server:
        yield ScheduleState(redis.Redis.from_url(server.url))


def _schedulers(state: ScheduleState, count: int, catchup: str = "latest") -> list[Scheduler]:
    settings = DispatcherSettings(schedule_catchup=catchup, _env_file=None)  # type: ignore[call-arg]
    configure(settings)
    made = [Scheduler(settings, state) for _ in range(count)]
    for scheduler in made:  # only this module's schedule (other tests declare theirs)
        scheduler.schedules = [s for s in scheduler.schedules if s.task == tick.name]
    return made


def test_three_schedulers_dispatch_each_tick_once(state: ScheduleState) -> None:
    schedulers = _schedulers(state, 3)
    start = 1_000_000.0
    with capture_dispatches() as handles:
        for step in range(40):  # every scheduler passes 4 times per second, out of step
            now = start + step * 0.25
            for index, scheduler in enumerate(schedulers):
                scheduler.run_once(now + index * 0.05)
    ticks = [start + n for n in range(1, 10)]  # the first pass only starts the schedule
    assert len(handles) == len(ticks)
    assert [h.name for h in handles] == [tick.name] * len(ticks)


def test_a_tick_whose_claim_reply_was_lost_is_dispatched_once_on_a_later_pass(
        state: ScheduleState) -> None:
    """A Redis restart can land a claim and lose its reply: the claimer asks again."""
    first, second = _schedulers(state, 2)
    lost: list[float | None] = []

    def take_then_lose(schedule: Any, tick: float | None, latest: float, ttl: int,
                       claimer: str = "1", **options: Any) -> Taken:
        claimed = state.take(schedule, tick, latest, ttl, claimer, **options)
        if tick is not None and claimed.claimed and not lost:
            lost.append(tick)
            raise redis.ConnectionError("the reply was lost")
        return claimed

    first.state = copy.copy(state)
    first.state.take = take_then_lose  # type: ignore[method-assign]
    start = 3_000_000.0
    with capture_dispatches() as handles:
        for step in range(40):
            now = start + step * 0.25
            for index, scheduler in enumerate((first, second)):
                with contextlib.suppress(redis.ConnectionError):
                    scheduler.run_once(now + index * 0.05)
    assert lost, "no claim of the first scheduler was lost"
    assert len(handles) == 9  # each tick once, the lost one too


@pytest.mark.parametrize("dispatched", [False, True])
def test_a_tick_claimed_by_a_scheduler_that_died_is_dispatched_once_by_another(
        state: ScheduleState, dispatched: bool) -> None:
    """The claimer died after its claim, before or after the dispatch, without settling
    it: once the lease is over another scheduler claims the tick, and the tick's
    idempotency key makes it run once either way."""
    dead, live = _schedulers(state, 2, catchup="none")
    (schedule,) = dead.schedules
    start = 4_000_000.0
    dead.run_once(start)  # starts the schedule
    tick_at = start + 1
    with capture_dispatches() as handles:
        assert state.take(schedule, tick_at, tick_at, CLAIM_TTL, dead.claimer, now=tick_at
                          ).claimed
        if dispatched:
            assert dead._dispatch(schedule, tick_at) == 1
        before = len(handles)
        live.run_once(tick_at + 0.5)  # the claim is the dead one's, within its lease
        assert len(handles) == before
        live.run_once(tick_at + LEASE + 0.5)  # missed ticks are not run (catch-up none)
        assert len(handles) == 1
        for step in range(1, 4):  # settled: never again (and no new tick meanwhile)
            live.run_once(tick_at + LEASE + 0.5 + step * 0.1)
        assert len(handles) == 1
    assert not state.take(schedule, None, tick_at, CLAIM_TTL, now=tick_at + 100).overdue


@pytest.mark.parametrize(("catchup", "expected"), [("latest", 1), ("all", 30), ("none", 0)])
def test_missed_ticks_follow_the_catch_up_setting(
    state: ScheduleState, catchup: str, expected: int
) -> None:
    (scheduler,) = _schedulers(state, 1, catchup)
    scheduler.run_once(2_000_000.0)  # starts the schedule
    with capture_dispatches() as handles:
        scheduler.run_once(2_000_030.0)  # 30 ticks since a pass 30 s ago: missed
        missed = len(handles)
        scheduler.run_once(2_000_031.0)  # on time again
    assert missed == expected
    assert len(handles) == missed + 1


def test_the_schedule_table_shows_last_and_next_runs(state: ScheduleState) -> None:
    (scheduler,) = _schedulers(state, 1)
    scheduler.run_once(3_000_000.0)
    with capture_dispatches() as handles:
        scheduler.run_once(3_000_001.0)
    rows = [r for r in schedule_rows(scheduler.settings, state, now=3_000_001.5)
            if r["task"] == tick.name]
    assert rows == [{"task": tick.name, "schedule": "every 1s", "kwargs": {},
                     "timezone": "UTC", "last_run": 3_000_001.0,
                     "last_task_id": handles[0].id, "next_run": 3_000_002.0}]


def test_get_schedules_and_the_routing_table_show_the_schedule(state: ScheduleState) -> None:
    _schedulers(state, 1)
    app = install(FastAPI())
    app.include_router(jobs_router)
    with TestClient(app) as client:
        rows = [r for r in client.get("/schedules").json() if r["task"] == tick.name]
        routes = [r for r in client.get("/routes").json() if r["task"] == tick.name]
    assert [(r["schedule"], r["kwargs"]) for r in rows] == [("every 1s", {})]
    assert rows[0]["next_run"] > time.time() - 1
    assert [r["schedule"] for r in routes] == ["every 1s"]


def test_with_a_broker_a_light_tick_goes_to_celery_not_inline(tmp_path: Path) -> None:
    """A worker's scheduler runs in its main process: no job runs inline there."""
    with EmbeddedRedis() as server:
        settings = DispatcherSettings(  # type: ignore[call-arg]
            broker_url=server.url, spool_path=str(tmp_path / "spool.sqlite3"), _env_file=None)
        configure(settings)
        scheduler = Scheduler(settings, ScheduleState(redis.Redis.from_url(server.url)))
        scheduler.schedules = [s for s in scheduler.schedules if s.task == tick.name]
        scheduler.run_once(4_000_000.0)
        with capture_dispatches() as handles:
            scheduler.run_once(4_000_001.0)
    assert tick.route_for(settings).route == "inline"  # weight 1
    assert [h.route for h in handles] == ["celery"]
