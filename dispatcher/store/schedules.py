"""What the fleet's schedulers share in Redis: per schedule, the time of the latest pass
of any of them; per tick, a claim (exactly one dispatch of it fleet-wide), owed until
its dispatch is settled; and each schedule's last dispatch, for ``dispatcher
schedules`` and ``GET /schedules``."""

from __future__ import annotations

import hashlib
import json
import time
from typing import Any, NamedTuple

import redis

from ..core.schedule import Schedule
from . import keys
from .link import as_text
from .scripts import SCHEDULE_TICK


def digest(schedule: Schedule) -> str:
    """A short, stable name for the schedule (the same in every process)."""
    return hashlib.sha1(schedule.key.encode()).hexdigest()[:16]


#: Seconds after which a tick claimed and not settled may be claimed by another
#: scheduler (its claimer died between claim and dispatch, or cannot reach Redis).
LEASE = 10.0


class Taken(NamedTuple):
    claimed: bool
    overdue: list[float]


class ScheduleState:
    def __init__(self, client: redis.Redis) -> None:
        self.client = client
        self._tick = client.register_script(SCHEDULE_TICK.source)

    def latest(self, schedule: Schedule, now: float) -> float:
        """When the latest pass was; a schedule seen for the first time starts now (its
        past ticks are not run)."""
        key = keys.SCHEDULE_PREFIX + digest(schedule) + ":latest"
        self.client.set(key, repr(now), nx=True)
        return float(as_text(self.client.get(key) or repr(now)))

    def take(self, schedule: Schedule, tick: float | None, latest: float, ttl: int,
             claimer: str = "1", now: float | None = None, lease: float = LEASE) -> Taken:
        """Claim ``tick`` (None: claim nothing) for ``claimer`` and move the latest pass
        to ``latest``. ``claimed`` is True if ``claimer`` is the one to dispatch the tick
        (it claimed it now or before, or took over a claim owed longer than ``lease``
        seconds at ``now``); ``overdue`` lists such ticks of this schedule (``settle``)."""
        name = keys.SCHEDULE_PREFIX + digest(schedule)
        reply = self._tick(keys=[f"{name}:tick:{tick!r}", name + ":latest", name + ":owed"],
                           args=["" if tick is None else ttl, repr(latest), claimer,
                                 repr(time.time() if now is None else now), lease,
                                 repr(tick)])
        return Taken(bool(reply[0]), [float(as_text(t)) for t in reply[1:]])

    def settle(self, schedule: Schedule, tick: float) -> None:
        """``tick`` is dispatched (or never will be): no longer owed."""
        self.client.zrem(keys.SCHEDULE_PREFIX + digest(schedule) + ":owed", repr(tick))

    def note_run(self, schedule: Schedule, tick: float, task_id: str, at: float) -> None:
        self.client.hset(keys.SCHEDULE_RUNS, digest(schedule),
                         json.dumps({"tick": tick, "task_id": task_id, "at": at}))

    def runs(self) -> dict[str, dict[str, Any]]:
        raw = self.client.hgetall(keys.SCHEDULE_RUNS)
        return {as_text(k): json.loads(v) for k, v in raw.items()}
