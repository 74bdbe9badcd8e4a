"""Schedules as pure functions of the clock: cron parsing, ticks, catch-up choices, and
the checks ``@task(schedule=...)`` makes when a task is declared."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from dispatcher import TaskDefinitionError, task
from dispatcher.core.schedule import Cron, parse_schedule
from dispatcher.runtime.scheduler import LATE, chosen_ticks


def _at(*parts: int, zone: ZoneInfo | None = None) -> datetime:
    return datetime(*parts, tzinfo=zone or UTC)  # type: ignore[misc]


@pytest.mark.parametrize(("cron", "after", "expected"), [
    ("*/5 * * * *", _at(2026, 12, 5, 10, 3), _at(2026, 12, 5, 10, 5)),
    ("*/5 * * * *", _at(2026, 12, 5, 10, 5), _at(2026, 12, 5, 10, 10)),  # strictly after
    ("0 9 * * mon-fri", _at(2026, 12, 5, 10, 3), _at(2026, 12, 7, 9, 0)),  # Sat -> Mon
    ("0 0 1 jan *", _at(2026, 12, 5), _at(2027, 1, 1)),
    ("30 23 31 * *", _at(2026, 11, 1), _at(2026, 12, 31, 23, 30)),  # November has no 31st
    ("0 12 13 * 5", _at(2026, 12, 5), _at(2026, 12, 11, 12)),  # day 13 or a Friday
    ("0 0 * * 7", _at(2026, 12, 5), _at(2026, 12, 6)),  # 7 is Sunday too
])
def test_cron_next_tick(cron: str, after: datetime, expected: datetime) -> None:
    assert Cron.parse(cron).next_after(after) == expected


def test_cron_follows_the_time_zone() -> None:
    paris = ZoneInfo("Europe/Paris")
    tick = Cron.parse("0 9 * * *").next_after(_at(2026, 12, 5, 7, 0, zone=paris))
    assert tick.astimezone(UTC) == _at(2026, 12, 5, 8, 0)


@pytest.mark.parametrize("bad", ["* * * *", "60 * * * *", "*/0 * * * *", "x * * * *",
                                 "0 0 30 feb *"])
def test_bad_cron_expressions_are_refused(bad: str) -> None:
    with pytest.raises(ValueError):
        schedule = parse_schedule("t", bad)
        schedule.next_tick(0, UTC)  # Feb 30 parses, but never matches


def test_intervals_tick_on_the_epoch_so_every_worker_agrees() -> None:
    every = parse_schedule("t", timedelta(seconds=30))
    assert every.ticks(100.0, 200.0, UTC) == [120.0, 150.0, 180.0]
    assert every.ticks(120.0, 120.0, UTC) == []
    assert every.next_tick(120.0, UTC) == 150.0
    with pytest.raises(ValueError, match="at least 1 second"):
        parse_schedule("t", timedelta(milliseconds=10))


def test_catch_up_choices() -> None:
    ticks = [1.0, 2.0, 3.0]
    for catchup in ("latest", "all", "none"):  # passes close together: every tick runs
        assert chosen_ticks(ticks, LATE, catchup) == ticks
    assert chosen_ticks(ticks, LATE + 1, "all") == ticks
    assert chosen_ticks(ticks, LATE + 1, "latest") == [3.0]
    assert chosen_ticks(ticks, LATE + 1, "none") == []


def test_a_scheduled_task_must_be_callable_without_arguments() -> None:
    with pytest.raises(TaskDefinitionError, match="'user_id' has no default"):
        @task(name="unit.schedule.needs", schedule="* * * * *")
        def needs(user_id: int) -> None: ...

    with pytest.raises(TaskDefinitionError, match="5 fields"):
        @task(name="unit.schedule.bad", schedule="* * *")
        def bad() -> None: ...

    @task(name="unit.schedule.ok", schedule=timedelta(minutes=5))
    def ok(limit: int = 10) -> None: ...

    assert ok.spec.schedule is not None and ok.spec.schedule.every == 300.0


def test_a_repeated_dst_hour_runs_its_wall_times_once() -> None:
    """As cron does: 02:00 and 02:30 run in the first pass of the hour, not again."""
    paris = ZoneInfo("Europe/Paris")  # 2026-10-25: 03:00 CEST becomes 02:00 CET
    start = _at(2026, 10, 24, 23, 0).timestamp()  # 01:00 CEST
    schedule = parse_schedule("t", "*/30 * * * *")
    ticks = schedule.ticks(start, start + 3 * 3600, paris)
    assert ticks == [start + n * 1800 for n in (1, 2, 3, 6)]  # 01:30, 02:00, 02:30, 03:00
    inside = start + 4.5 * 1800  # 02:15 CET, in the repeated hour
    assert schedule.ticks(inside, start + 3 * 3600, paris) == [start + 6 * 1800]  # not 02:30
    assert schedule.next_tick(inside, paris) == start + 6 * 1800
