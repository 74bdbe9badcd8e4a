"""Which Celery workers share the broker, and which of them are the dispatcher's.

Our workers mark each job started in Redis; a stock Celery worker (say, the old fleet
during a rolling migration) runs the same messages without that mark. The sweeper
must not take such a job for lost and run it again, so each of our workers announces
itself in Redis, and the queues other workers consume are learnt from Celery's own
``inspect active_queues`` (a broadcast, so it is asked only when a job looks lost).
"""

from __future__ import annotations

import logging
from typing import Any

import redis
from celery import Celery

log = logging.getLogger("dispatcher.fleet")

#: One key per live dispatcher worker, by its Celery host name.
WORKER_PREFIX = "dispatch:worker:"
#: How long ``inspect`` waits for every worker's answer.
INSPECT_TIMEOUT = 1.0


class Fleet:
    """This worker's announcement, and the queues other kinds of worker consume."""

    def __init__(self, app: Celery, client: redis.Redis, hostname: str, ttl: float) -> None:
        self.app = app
        self.client = client
        self.hostname = hostname
        self.ttl = max(1, int(ttl))
        self._foreign: frozenset[str] = frozenset()

    def announce(self) -> None:
        """Say (for ``ttl`` seconds) that this worker is one of ours; repeat within it."""
        self.client.set(WORKER_PREFIX + self.hostname, "1", ex=self.ttl)

    def foreign_queues(self) -> set[str]:
        """The queues consumed by live workers that are not the dispatcher's.

        Empty when no worker answers (remote control switched off everywhere): then
        nothing can be told apart, and the sweeper does what it always did.
        """
        replies: dict[str, Any] = self.app.control.inspect(
            timeout=INSPECT_TIMEOUT).active_queues() or {}
        hosts = sorted(replies)
        marks = self.client.mget([WORKER_PREFIX + host for host in hosts]) if hosts else []
        foreign = {host: sorted(_queue_names(replies[host]))
                   for host, mark in zip(hosts, marks, strict=True) if mark is None}
        if frozenset(foreign) != self._foreign:
            self._foreign = frozenset(foreign)
            if foreign:
                log.warning(
                    "Celery workers other than the dispatcher's consume %s (%s): a job "
                    "that leaves those queues is presumed run there, never re-queued as lost",
                    ", ".join(sorted({q for qs in foreign.values() for q in qs})),
                    ", ".join(sorted(foreign)))
        return {queue for queues in foreign.values() for queue in queues}


def _queue_names(reply: Any) -> set[str]:
    """The queue names in one worker's ``active_queues`` answer (a list of dicts)."""
    if not isinstance(reply, list):
        return set()
    return {str(q["name"]) for q in reply if isinstance(q, dict) and q.get("name")}
