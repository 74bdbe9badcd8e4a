"""Delivered jobs a rate or concurrency limit refused go back to the delay store, due
when the limiter said to ask again (or sooner: a freed slot pushes its waiting job at
once). The message is acknowledged only after that, so it is never dropped, and its
worker holds nothing in memory while it waits."""

from __future__ import annotations

import logging
import math
import time

import redis

from ...core.job import Job
from ...core.settings import DispatcherSettings
from ...store import keys
from ...store.scripts import DEFER
from .monitor import BROKER_ERRORS
from .prepare import prepared

log = logging.getLogger("dispatcher.worker")


def defer(client: redis.Redis, settings: DispatcherSettings, job: Job, delay: float) -> bool:
    """File ``job``'s publication in the delay store, due in ``delay`` seconds. Its
    marker keeps the message it was published with; one without (a plain Celery
    client's, or a redelivery after a crash) is given one. False on a Redis error: the
    caller then runs the job rather than lose it."""
    due = time.time() + delay
    ttl = settings.result_ttl + math.ceil(delay)
    script = client.register_script(DEFER.source)
    pid = job.publish_id
    try:
        if script(keys=[keys.marker(pid), keys.DELAYED, keys.INFLIGHT],
                  args=[pid, due, ttl, "", ""]):
            return True
        queue, message, _, _ = prepared(settings, job, fresh=False)
        script(keys=[keys.marker(pid), keys.DELAYED, keys.INFLIGHT],
               args=[pid, due, ttl, message, queue])
        return True
    except BROKER_ERRORS as exc:
        log.warning("task %s over its limit could not wait in the delay store (%s): "
                    "it runs now", job.id, exc)
        return False
