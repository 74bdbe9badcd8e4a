"""Recovery of publications Redis lost: the sweeper in each worker's main process.

A job is published with a marker (see ``store/lua/publish.lua``); a worker that starts
it marks it started. A publication that stays unstarted, is not in its queue and not
reserved by any worker was lost (a Redis crash between a worker's pop and its
bookkeeping); the sweeper puts it back (``store/lua/recover.lua``, atomic).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Mapping
from typing import Any

import redis

from ...store import keys
from ...store.link import as_text
from ...store.scripts import RECOVER
from .protocol import QUEUE_SEP

log = logging.getLogger("dispatcher.recovery")


def started_commands(publish_id: str) -> list[tuple[Any, ...]]:
    """The commands that tell the sweeper this publication reached a worker."""
    return [("ZREM", keys.INFLIGHT, publish_id),
            ("SET", keys.marker(publish_id), "1", "XX", "KEEPTTL")]


class Sweeper:
    """Finds publications that never reached a worker and were lost, and re-queues them.

    Runs in the worker's main process; looks only at jobs published more than
    ``after`` seconds ago and still not started, at most ``batch`` per pass.

    A lost publication looks exactly like one a stock Celery worker ran: only our
    workers mark a job started. ``sightings`` (read once a job looks lost) tells when
    our workers last looked for other kinds of worker, and per queue until when one
    counts as consuming it (``fleet``). A job that left such a queue after its
    publication is presumed run there, and no longer watched; one that left any other
    queue is re-queued once our workers have looked since it was found gone (a later
    pass: a stock worker that took it would have been seen then).
    """

    def __init__(self, client: redis.Redis, after: float, batch: int = 200,
                 sightings: Callable[[], tuple[float, Mapping[str, float]]] | None = None
                 ) -> None:
        self.client = client
        self.after = after
        self.batch = batch
        self.sightings = sightings
        #: Publication -> when a pass first found it gone from its queue, unstarted.
        self._suspects: dict[str, float] = {}
        self._script = client.register_script(RECOVER.source)

    def sweep(self) -> int:
        """One pass; returns how many publications were re-queued."""
        now = time.time()
        stale: list[tuple[Any, float]] = self.client.zrangebyscore(  # type: ignore[assignment]
            keys.INFLIGHT, "-inf", now - self.after, 0, self.batch, withscores=True)
        seen: tuple[float, Mapping[str, float]] | None = None
        recovered = left = 0
        for raw, published in stale:
            publish_id = as_text(raw)
            job_id = publish_id.rpartition(":")[0]
            script_keys = [keys.marker(publish_id), keys.INFLIGHT, keys.KOMBU_UNACKED,
                           keys.record(job_id), keys.DELAYED]
            if self.sightings is None:
                outcome = self._script(keys=script_keys, args=[publish_id, now])
            else:
                outcome = self._script(keys=script_keys, args=[publish_id, now, "ask"])
                if isinstance(outcome, bytes | str):  # it looks lost: its queue key
                    if seen is None:
                        seen = self.sightings()
                    queue = keys.unprefixed(as_text(outcome)).split(QUEUE_SEP)[0]
                    suspected_at = self._suspects.setdefault(publish_id, now)
                    verdict = _verdict(seen, queue, published, suspected_at)
                    if verdict == "wait":
                        continue
                    outcome = self._script(keys=script_keys, args=[publish_id, now, verdict])
                self._suspects.pop(publish_id, None)
            if outcome == 1:
                recovered += 1
                log.warning("re-queued job %s: published but lost before a worker took it",
                            publish_id)
            elif outcome == -1:
                left += 1
        # Forget suspects no longer among the oldest (resolved, maybe by another worker).
        looked_at = {as_text(raw) for raw, _ in stale}
        self._suspects = {p: at for p, at in self._suspects.items() if p in looked_at}
        if left:
            log.info("%d job(s) left their queue without a dispatcher worker starting them; "
                     "presumed run by the other Celery workers seen on their queues", left)
        return recovered


def _verdict(seen: tuple[float, Mapping[str, float]], queue: str, published: float,
             suspected_at: float) -> str:
    """What to do with a job published at ``published`` and found gone from ``queue``,
    unstarted, at ``suspected_at``: ``drop`` it if a stock worker consumed the queue
    since its publication (it ran there); ``requeue`` it once our workers have looked
    since it was found gone and seen none; until then ``wait``."""
    observed_at, until = seen
    if until.get(queue, -math.inf) >= published:
        return "drop"
    return "requeue" if observed_at >= suspected_at else "wait"
