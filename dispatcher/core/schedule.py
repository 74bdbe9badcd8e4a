"""Periodic schedules: a cron expression (five fields, in ``DISPATCH_TIMEZONE``) or a
fixed interval, and the ticks each one has between two instants.

Ticks are pure functions of the schedule and the clock, so every worker computes the
same ones; a per-tick claim in Redis (``runtime.scheduler``) lets exactly one of them
dispatch each tick. Intervals are aligned on the epoch (``every=30 s`` ticks at :00 and
:30 of each minute), for the same reason.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, tzinfo
from typing import Any

_NAMES = {
    3: {n: i + 1 for i, n in enumerate(["jan", "feb", "mar", "apr", "may", "jun", "jul",
                                         "aug", "sep", "oct", "nov", "dec"])},
    4: {n: i for i, n in enumerate(["sun", "mon", "tue", "wed", "thu", "fri", "sat"])},
}
#: (lowest, highest) of minute, hour, day of month, month, day of week (0 or 7: Sunday).
_BOUNDS = ((0, 59), (0, 23), (1, 31), (1, 12), (0, 7))


def _field(text: str, index: int) -> frozenset[int]:
    low, high = _BOUNDS[index]
    names = _NAMES.get(index, {})
    values: set[int] = set()
    for part in text.lower().split(","):
        body, _, step_text = part.partition("/")
        step = int(step_text) if step_text else 1
        if step < 1:
            raise ValueError(f"step must be >= 1 in {part!r}")
        if body == "*":
            first, last = low, high
        else:
            start, _, end = body.partition("-")
            first = names[start] if start in names else int(start)
            last = (names[end] if end in names else int(end)) if end else (
                high if step_text else first)
        if not low <= first <= last <= high:
            raise ValueError(f"{part!r} is outside {low}-{high}")
        values.update(range(first, last + 1, step))
    if index == 4 and 7 in values:
        values = (values - {7}) | {0}
    return frozenset(values)


@dataclass(frozen=True)
class Cron:
    """A parsed five-field cron expression: minute hour day-of-month month day-of-week."""

    text: str
    minutes: frozenset[int]
    hours: frozenset[int]
    days: frozenset[int]
    months: frozenset[int]
    weekdays: frozenset[int]
    any_day: bool
    any_weekday: bool

    @classmethod
    def parse(cls, text: str) -> Cron:
        parts = text.split()
        if len(parts) != 5:
            raise ValueError(f"a cron expression has 5 fields, {text!r} has {len(parts)}")
        try:
            fields = [_field(p, i) for i, p in enumerate(parts)]
        except (ValueError, KeyError) as exc:
            raise ValueError(f"invalid cron expression {text!r}: {exc}") from None
        minutes, hours, days, months, weekdays = fields
        return cls(text, minutes, hours, days, months, weekdays, parts[2] == "*",
                   parts[4] == "*")

    def _day_matches(self, moment: datetime) -> bool:
        day_ok = moment.day in self.days
        weekday_ok = (moment.isoweekday() % 7) in self.weekdays
        if self.any_day or self.any_weekday:  # cron: both restricted means either
            return day_ok and weekday_ok
        return day_ok or weekday_ok

    def next_after(self, moment: datetime) -> datetime:
        """The first matching minute strictly after ``moment`` (in its time zone)."""
        at = moment.replace(second=0, microsecond=0) + timedelta(minutes=1)
        while at.year <= moment.year + 8:  # Feb 29 comes back within 8 years
            if at.month not in self.months:
                year, month = (at.year + 1, 1) if at.month == 12 else (at.year, at.month + 1)
                at = at.replace(year=year, month=month, day=1, hour=0, minute=0)
            elif not self._day_matches(at):
                at = (at + timedelta(days=1)).replace(hour=0, minute=0)
            elif at.hour not in self.hours:
                at = (at + timedelta(hours=1)).replace(minute=0)
            elif at.minute not in self.minutes:
                at += timedelta(minutes=1)
            else:
                return at
        raise ValueError(f"cron expression {self.text!r} never matches")


@dataclass(frozen=True)
class Schedule:
    """When a task runs by itself, with which keyword arguments."""

    task: str
    cron: Cron | None = None
    every: float | None = None
    kwargs: dict[str, Any] = field(default_factory=dict)

    @property
    def key(self) -> str:
        """Identifies the schedule among the task's: its own claims and last run."""
        when = self.cron.text if self.cron is not None else f"every {self.every:g}s"
        args = ",".join(f"{k}={self.kwargs[k]!r}" for k in sorted(self.kwargs))
        return f"{self.task}|{when}|{args}"

    def describe(self) -> str:
        return self.cron.text if self.cron is not None else f"every {self.every:g}s"

    def ticks(self, after: float, until: float, zone: tzinfo, limit: int = 1000
              ) -> list[float]:
        """The ticks ``t`` with ``after < t <= until`` (``time.time()`` seconds), oldest
        first, at most the ``limit`` latest."""
        if self.every is not None:
            first = math.floor(after / self.every) + 1
            last = math.floor(until / self.every)
            return [n * self.every for n in range(max(first, last - limit + 1), last + 1)]
        assert self.cron is not None
        found: list[float] = []
        at = datetime.fromtimestamp(after, zone)
        while True:
            at = self.cron.next_after(at)
            stamp = at.timestamp()
            if stamp > until:
                return found[-limit:]
            if stamp > after and (not found or stamp > found[-1]):  # a repeated DST hour
                found.append(stamp)
            if len(found) > 2 * limit:
                found = found[-limit:]

    def next_tick(self, after: float, zone: tzinfo) -> float:
        if self.every is not None:
            return (math.floor(after / self.every) + 1) * self.every
        assert self.cron is not None
        at = datetime.fromtimestamp(after, zone)
        while (at := self.cron.next_after(at)).timestamp() <= after:  # a repeated DST hour
            pass
        return at.timestamp()


def parse_schedule(task: str, value: Any, kwargs: dict[str, Any] | None = None) -> Schedule:
    """``value``: a cron string, a ``timedelta`` or a number of seconds; ``ValueError``
    says what is wrong."""
    if isinstance(value, str):
        schedule = Schedule(task, cron=Cron.parse(value), kwargs=dict(kwargs or {}))
        schedule.next_tick(time.time(), UTC)  # "0 0 30 feb *" parses, and never matches
        return schedule
    seconds = value.total_seconds() if isinstance(value, timedelta) else value
    if isinstance(seconds, bool) or not isinstance(seconds, int | float) or not seconds >= 1:
        raise ValueError("schedule must be a cron string or an interval of at least 1 second "
                         f"(a timedelta or seconds), got {value!r}")
    return Schedule(task, every=float(seconds), kwargs=dict(kwargs or {}))
