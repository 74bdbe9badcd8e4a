"""The delay store's relay: delayed jobs (countdowns, etas, retry delays) are published
to their queues when due, never handed to Celery with an ``eta``.

A Celery worker holds an ``eta`` message in memory, unacknowledged, until it is due: a
wait longer than the Redis visibility timeout makes Redis hand the message to a second
worker, and the waiting jobs are invisible to queue-length autoscaling. Instead, the
publish script files a job that is not yet due in the delay store (a sorted set by due
time; its message waits in its publish marker), and this relay pushes it onto its queue
when due. Each pass is one script call (``store/lua/release_due.lua``) that moves the
due jobs atomically, so with a relay in every worker process each job is still
published exactly once.
"""

from __future__ import annotations

import logging
import time

import redis

from ...core.periodic import Periodic
from ...store import keys
from ...store.link import as_text
from ...store.scripts import RELEASE_DUE
from .monitor import BROKER_ERRORS

log = logging.getLogger("dispatcher.delayed")

#: Due jobs one script call publishes at most (a pass repeats until fewer are due).
RELEASE_BATCH = 500
#: The longest a relay sleeps between passes: how late a job becomes due to another
#: process's dispatch can be published, at worst.
RELAY_PAUSE = 0.25


class DelayRelay:
    """Publishes due jobs from the delay store, in a thread of its own."""

    def __init__(self, client: redis.Redis, batch: int = RELEASE_BATCH,
                 pause: float = RELAY_PAUSE) -> None:
        self.client = client
        self.batch = batch
        self.pause = pause
        self._script = client.register_script(RELEASE_DUE.source)
        self.loop = Periodic("dispatch-delayed", self._pass, pause, expected=BROKER_ERRORS,
                             log=log)

    def release_due(self, now: float | None = None) -> tuple[int, float | None]:
        """One pass: publish what is due; returns how many, and the next due time."""
        reply = self._script(keys=[keys.DELAYED, keys.INFLIGHT],
                             args=[time.time() if now is None else now, self.batch,
                                   keys.MARKER_PREFIX, keys.CANCEL_PREFIX])
        pushed, following = reply
        following = as_text(following)
        return int(pushed), float(following) if following else None

    def start(self) -> DelayRelay:
        self.loop.start()
        return self

    def stop(self) -> None:
        self.loop.stop()

    def _pass(self) -> float:
        """Release what is due; wait until the next due time (at most ``pause``), or
        not at all when a full batch went (more may be due already)."""
        pushed, following = self.release_due()
        if pushed >= self.batch:
            return 0.0
        if following is None:
            return self.pause
        return min(self.pause, max(0.0, following - time.time()))


def delayed_count(client: redis.Redis) -> int:
    """Jobs waiting in the delay store (the ``dispatch_delayed_jobs`` gauge)."""
    return int(client.zcard(keys.DELAYED))
