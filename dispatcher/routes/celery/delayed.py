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
import threading
import time

import redis

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
        self._stopped = threading.Event()
        self.thread = threading.Thread(target=self._loop, name="dispatch-delayed",
                                       daemon=True)

    def release_due(self, now: float | None = None) -> tuple[int, float | None]:
        """One pass: publish what is due; returns how many, and the next due time."""
        reply = self._script(keys=[keys.DELAYED, keys.INFLIGHT],
                             args=[time.time() if now is None else now, self.batch,
                                   keys.MARKER_PREFIX, keys.CANCEL_PREFIX])
        pushed, following = reply
        following = as_text(following)
        return int(pushed), float(following) if following else None

    def start(self) -> DelayRelay:
        self.thread.start()
        return self

    def stop(self) -> None:
        self._stopped.set()

    def _loop(self) -> None:
        while not self._stopped.is_set():
            wait = self.pause
            try:
                pushed, following = self.release_due()
                if pushed >= self.batch:
                    continue  # more may be due already
                if following is not None:
                    wait = min(wait, max(0.0, following - time.time()))
            except BROKER_ERRORS as exc:
                log.debug("delayed jobs not released this pass: %s", exc)
            except Exception:  # never the end of the relay: the next pass tries again
                log.exception("releasing delayed jobs failed")
            self._stopped.wait(wait)


def delayed_count(client: redis.Redis) -> int:
    """Jobs waiting in the delay store (the ``dispatch_delayed_jobs`` gauge)."""
    return int(client.zcard(keys.DELAYED))
