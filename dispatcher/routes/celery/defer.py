"""Delivered jobs a rate or concurrency limit refused go back to the delay store, due
when the limiter said to ask again (or sooner: a freed slot pushes its waiting job at
once). The delivery is acknowledged only after that, so the job is never dropped, and
no worker holds it in memory while it waits."""

from __future__ import annotations

import json
import logging
import math
import os
import time

import redis

from ...core.job import Job
from ...core.limits import Admission
from ...core.settings import DispatcherSettings
from ...store import keys
from ...store.scripts import DEFER
from .monitor import BROKER_ERRORS
from .protocol import queue_key, task_message

log = logging.getLogger("dispatcher.worker")


def defer(client: redis.Redis, settings: DispatcherSettings, job: Job,
          refused: Admission, counted: bool = False) -> bool:
    """File ``job``'s publication in the delay store, due in ``refused.wait`` seconds,
    with a fresh message: the same job and publication, under a new delivery tag, since
    the refused delivery is acknowledged after this and kombu acknowledges by tag. A job
    waiting for a slot is also filed as its waiter (and queued at once if a slot freed
    meanwhile). ``counted``: the worker counted this delivery as a run when it took
    it (``transport``); it did not run, so the count is taken back in the same step.
    False on a Redis error: the caller then runs the job rather than lose it.
    """
    envelope = task_message(job)
    envelope["properties"]["delivery_tag"] = f"{job.publish_id}~{os.urandom(6).hex()}"
    # A refusal of this process's own limiter (Redis was down a moment ago) knows no
    # slot in Redis: the job waits its time, with no waiter filed.
    slot = refused.slot if refused.reason == "concurrency" and not refused.local else None
    now = time.time()
    try:
        client.register_script(DEFER.source)(
            keys=[keys.marker(job.publish_id), keys.DELAYED, keys.INFLIGHT,
                  keys.slots(slot or job.spec.name), keys.slot_waiters(slot or job.spec.name),
                  keys.runs(job.id), keys.taken(job.id)],
            args=[job.publish_id, now + refused.wait,
                  settings.result_ttl + math.ceil(refused.wait), json.dumps(envelope),
                  queue_key(job.queue or settings.default_queue, job.priority),
                  (job.spec.concurrency or 0) if slot else 0, now, int(counted)])
        return True
    except BROKER_ERRORS as exc:
        log.warning("task %s over its limit could not wait in the delay store (%s): "
                    "it runs now", job.id, exc)
        return False
