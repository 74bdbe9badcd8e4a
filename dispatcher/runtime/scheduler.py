"""The scheduler: every worker runs one, and each tick of each schedule is dispatched
exactly once fleet-wide (a per-tick claim in Redis, ``store.schedules``).

A pass looks at each schedule's ticks since the latest pass of any worker. When that
pass is more than ``LATE`` seconds ago, no worker ran (or Redis was down) and the ticks
in between were missed: ``DISPATCH_SCHEDULE_CATCHUP`` says whether the latest of them
runs once (``latest``), all of them run (``all``) or none (``none``). Each tick is
dispatched like any other call of the task (``task.dispatch(**kwargs)``), so routing
rules apply.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from typing import Any
from zoneinfo import ZoneInfo

from ..core.errors import DispatchError
from ..core.periodic import Periodic
from ..core.registry import all_tasks
from ..core.schedule import Cron, Schedule
from ..core.settings import DispatcherSettings
from ..store.client import REDIS_ERRORS
from ..store.schedules import ScheduleState, digest
from .decorator import registered

log = logging.getLogger("dispatcher.scheduler")

#: A gap between two passes longer than this means missed ticks (see the module docstring).
LATE = 5.0
#: Seconds between passes.
PAUSE = 0.2
#: How long a tick's claim is kept: far longer than any pass that could still see it.
CLAIM_TTL = 300


def all_schedules(settings: DispatcherSettings) -> list[Schedule]:
    """``@task(schedule=...)`` and ``DISPATCH_SCHEDULES``."""
    found = [t.spec.schedule for t in all_tasks() if t.spec.schedule is not None]
    for entry in settings.schedules:
        cron = None if entry.cron is None else Cron.parse(entry.cron)
        found.append(Schedule(entry.task, cron=cron, every=entry.every, kwargs=entry.kwargs))
    return found


def chosen_ticks(ticks: list[float], gap: float, catchup: str) -> list[float]:
    """Which of ``ticks`` (due since the latest pass, ``gap`` seconds ago) to dispatch."""
    if gap <= LATE or catchup == "all":
        return ticks
    return ticks[-1:] if catchup == "latest" else []


class Scheduler:
    """Dispatches the schedules' ticks from a thread of its own (a worker's main process)."""

    def __init__(self, settings: DispatcherSettings, state: ScheduleState) -> None:
        self.settings = settings
        self.state = state
        self.zone = ZoneInfo(settings.timezone)
        self.schedules = all_schedules(settings)
        for schedule in self.schedules:  # said at start-up, not at every tick
            try:
                registered(schedule.task).validator.payload((), schedule.kwargs)
            except DispatchError as exc:
                log.error("schedule %s of %s cannot dispatch: %s", schedule.describe(),
                          schedule.task, exc)
        #: This scheduler's name on its claims: a claim whose reply was lost is retaken.
        self.claimer = f"{socket.gethostname()}:{os.getpid()}:{os.urandom(4).hex()}"
        #: Ticks this scheduler may have claimed and not dispatched (a Redis error on
        #: the way): retried each pass until dispatched or found another's.
        self._owed: dict[tuple[str, float], Schedule] = {}
        # Ticks wait for Redis while it is away (then catch-up applies).
        self.loop = Periodic("dispatch-scheduler", self._pass, PAUSE, expected=REDIS_ERRORS,
                             log=log)

    def run_once(self, now: float | None = None) -> int:
        """One pass; returns how many ticks this process dispatched."""
        now = time.time() if now is None else now
        dispatched = self._settle_owed(now)
        for schedule in self.schedules:
            latest = self.state.latest(schedule, now)
            ticks = schedule.ticks(latest, now, self.zone)
            chosen = chosen_ticks(ticks, now - latest, self.settings.schedule_catchup)
            if len(chosen) < len(ticks):
                log.warning("schedule %s of %s missed %d tick(s); catch-up %s runs %d",
                            schedule.describe(), schedule.task, len(ticks),
                            self.settings.schedule_catchup, len(chosen))
            for tick in chosen:  # each claim moves the latest pass to its own tick only
                dispatched += self._claim_and_dispatch(schedule, tick, now)
            overdue = self.state.take(schedule, None, now, CLAIM_TTL, now=now).overdue
            for tick in overdue:  # claimed by a scheduler that did not dispatch them
                if now - tick > CLAIM_TTL:
                    self.state.settle(schedule, tick)
                    log.error("schedule %s of %s: tick %r not dispatched (claimed, never "
                              "settled, for %d s)", schedule.describe(), schedule.task,
                              tick, CLAIM_TTL)
                else:
                    dispatched += self._claim_and_dispatch(schedule, tick, now)
        return dispatched

    def _claim_and_dispatch(self, schedule: Schedule, tick: float, now: float) -> int:
        """Dispatch ``tick`` if this scheduler claims it. Until that is settled the tick
        is owed: a Redis error (the claim's reply lost, the dispatch refused) leaves it
        to the next pass, so a Redis restart loses no tick; were this process to die
        first, another scheduler takes the claim over after ``store.schedules.LEASE``."""
        owed = (schedule.key, tick)
        self._owed[owed] = schedule
        if not self.state.take(schedule, tick, tick, CLAIM_TTL, self.claimer, now=now).claimed:
            del self._owed[owed]  # another worker's
            return 0
        dispatched = self._dispatch(schedule, tick)
        self.state.settle(schedule, tick)
        del self._owed[owed]
        return dispatched

    def _settle_owed(self, now: float) -> int:
        dispatched = 0
        for (key, tick), schedule in list(self._owed.items()):
            if now - tick > CLAIM_TTL:  # its claim is gone: another pass may not tell
                del self._owed[(key, tick)]
                log.error("schedule %s of %s: tick %r not dispatched (Redis away %d s)",
                          schedule.describe(), schedule.task, tick, CLAIM_TTL)
                continue
            dispatched += self._claim_and_dispatch(schedule, tick, now)
        return dispatched

    def _dispatch(self, schedule: Schedule, tick: float) -> int:
        try:
            # Under one key per tick: a tick claimed again after its claimer died runs
            # once, even if that claimer had dispatched it.
            task = registered(schedule.task).options(
                idempotency_key=f"schedule:{digest(schedule)}:{tick!r}")
            if self.settings.broker_url and task.route_for().route == "inline":
                # Never inline in a worker's main process: Celery runs it.
                task = task.options(route="celery")
            handle = task.dispatch(**schedule.kwargs)
        except DispatchError as exc:  # an unknown task, bad kwargs: said, never fatal
            log.error("schedule %s of %s could not dispatch: %s", schedule.describe(),
                      schedule.task, exc)
            return 0
        try:  # dispatched: a failure here must not make the tick owed again
            self.state.note_run(schedule, tick, handle.id, time.time())
        except REDIS_ERRORS as exc:
            log.warning("schedule %s of %s: could not note its last run: %s",
                        schedule.describe(), schedule.task, exc)
        log.info("schedule.dispatched task=%s tick=%r task_id=%s", schedule.task, tick,
                 handle.id)
        return 1

    def start(self) -> Scheduler:
        if self.schedules:
            self.loop.start()
        return self

    def stop(self) -> None:
        self.loop.stop()

    def _pass(self) -> None:
        self.run_once()


def schedule_rows(settings: DispatcherSettings, state: ScheduleState | None,
                  now: float | None = None) -> list[dict[str, Any]]:
    """Each schedule with its last dispatch and next tick (``dispatcher schedules``,
    ``GET /schedules``)."""
    now = time.time() if now is None else now
    zone = ZoneInfo(settings.timezone)
    runs = {} if state is None else state.runs()
    rows = []
    for schedule in all_schedules(settings):
        last = runs.get(digest(schedule), {})
        rows.append({"task": schedule.task, "schedule": schedule.describe(),
                     "kwargs": schedule.kwargs, "timezone": settings.timezone,
                     "last_run": last.get("tick"), "last_task_id": last.get("task_id"),
                     "next_run": schedule.next_tick(now, zone)})
    return rows
