"""Which Celery workers share the broker, and which of them are the dispatcher's.

Our workers mark each job started in Redis; a stock Celery worker (say, the old fleet
during a rolling migration) runs the same messages without that mark. The sweeper
must not take such a job for lost and run it again. So each of our workers announces
itself in Redis (its heartbeat, ``liveness``), and once per sweep interval (across the
whole fleet: one worker asks) Celery's own ``inspect active_queues`` tells which
queues other workers consume. Each sighting is kept in Redis, so it is still known
after that worker has gone: its last jobs are judged a sweep age later.
"""

from __future__ import annotations

import logging
import math
import time
from typing import Any

import redis
from celery import Celery

from ...store import keys
from ...store.link import as_text

log = logging.getLogger("dispatcher.fleet")

#: ``keys.FOREIGN_WORKERS`` holds, per queue name, until when a worker not ours counts
#: as consuming it (the time it was last seen, plus the asker's interval: until the
#: next sighting is due); and under ``OBSERVED`` (no queue's name), when any of our
#: workers last asked. ``keys.FLEET_ASKING`` is held by the worker whose turn it is.
OBSERVED = ""
#: How long ``inspect`` waits for every worker's answer.
INSPECT_TIMEOUT = 1.0


class Fleet:
    """When other kinds of worker consumed our queues."""

    def __init__(self, app: Celery, client: redis.Redis, hostname: str, every: float,
                 memory: int) -> None:
        self.app = app
        self.client = client
        self.hostname = hostname
        self.every = max(1, int(every))
        #: Seconds the foreign sightings are kept (as long as a job's marker lives).
        self.memory = memory
        self._foreign: frozenset[str] = frozenset()

    def observe(self) -> None:
        """If no worker of ours has asked within the interval, ask which live workers are
        not ours and note the time against the queues they consume."""
        if not self.client.set(keys.FLEET_ASKING, self.hostname, nx=True, ex=self.every):
            return
        asked_at = time.time()
        foreign = self._foreign_workers()
        queues = {queue for names in foreign.values() for queue in names}
        until = repr(asked_at + self.every + INSPECT_TIMEOUT)
        with self.client.pipeline(transaction=False) as pipe:
            pipe.hset(keys.FOREIGN_WORKERS, mapping={OBSERVED: repr(asked_at),
                                            **dict.fromkeys(sorted(queues), until)})
            pipe.expire(keys.FOREIGN_WORKERS, self.memory)
            pipe.execute()
        if frozenset(foreign) != self._foreign:
            self._foreign = frozenset(foreign)
            if foreign:
                log.warning(
                    "Celery workers other than the dispatcher's consume %s (%s): a job "
                    "that leaves those queues is presumed run there, never re-queued as lost",
                    ", ".join(sorted(queues)), ", ".join(sorted(foreign)))

    def sightings(self) -> tuple[float, dict[str, float]]:
        """When our workers last asked (``-inf``: never), and per queue until when a
        worker not ours counts as consuming it."""
        raw: dict[Any, Any] = self.client.hgetall(keys.FOREIGN_WORKERS)
        until = {as_text(queue): float(at) for queue, at in raw.items()}
        return until.pop(OBSERVED, -math.inf), until

    def _foreign_workers(self) -> dict[str, list[str]]:
        """Live workers that are not ours -> the queues they consume. Empty when no worker
        answers (remote control off everywhere): nothing can be told apart then."""
        replies: dict[str, Any] = self.app.control.inspect(
            timeout=INSPECT_TIMEOUT).active_queues() or {}
        hosts = sorted(replies)
        marks = self.client.mget([keys.worker(host) for host in hosts]) if hosts else []
        return {host: sorted(_queue_names(replies[host]))
                for host, mark in zip(hosts, marks, strict=True) if mark is None}


def _queue_names(reply: Any) -> set[str]:
    """The queue names in one worker's ``active_queues`` answer (a list of dicts)."""
    if not isinstance(reply, list):
        return set()
    return {str(q["name"]) for q in reply if isinstance(q, dict) and q.get("name")}
