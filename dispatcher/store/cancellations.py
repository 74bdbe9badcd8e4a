"""Cancel marks in Redis, for every process of the fleet.

``cancel`` writes the mark (``dispatch:cancel:<id>``, kept for ``DISPATCH_RESULT_TTL``),
files the id in a sorted set by time, and publishes it on a Pub/Sub channel. Each
process that asks ``is_cancelled`` keeps a subscriber thread and a local set of the
cancelled ids, loaded from the sorted set each time it (re)subscribes: while that
subscription is up, the question costs a set lookup, not a round trip (the inline
executor asks it before every job). While it is down, each question asks Redis.
A Celery worker checks the mark itself before a run, in the round trip it makes anyway
(``routes.celery.worker``).
"""

from __future__ import annotations

import logging
import os
import threading
import time

import redis

from . import keys
from .client import REDIS_ERRORS
from .link import as_text

log = logging.getLogger("dispatcher.cancel")


class RedisCancellations:
    """The ``Cancellations`` port on Redis (see the module docstring)."""

    def __init__(self, client: redis.Redis, ttl: int) -> None:
        self.client = client
        self.ttl = ttl
        self._known: set[str] = set()
        self._live = False
        self._lock = threading.Lock()
        self._pid = 0
        #: After a failed read, no more reads until then (a running job's watcher asks
        #: every 0.25 s, on an event loop it must not hold up).
        self._quiet_until = 0.0

    def cancel(self, task_id: str) -> None:
        """Mark ``task_id`` cancelled, for every process; raises on a Redis error."""
        now = time.time()
        with self.client.pipeline(transaction=True) as pipe:
            pipe.set(keys.cancel(task_id), "1", ex=self.ttl)
            pipe.zadd(keys.CANCELS, {task_id: now})
            pipe.zremrangebyscore(keys.CANCELS, "-inf", now - self.ttl)
            pipe.publish(keys.CANCELS_CHANNEL, task_id)
            pipe.execute()
        self._known.add(task_id)

    def is_cancelled(self, task_id: str) -> bool:
        if task_id in self._known:
            return True
        self._subscribe()
        if self._live or time.monotonic() < self._quiet_until:
            return False
        try:
            return bool(self.client.exists(keys.cancel(task_id)))
        except REDIS_ERRORS as exc:  # unknown: the job runs (a mark is never invented)
            self._quiet_until = time.monotonic() + 5.0
            log.debug("cancel mark of %s not read: %s", task_id, exc)
            return False

    def _subscribe(self) -> None:
        """Start this process's subscriber (again after a fork)."""
        if self._pid == os.getpid():
            return
        with self._lock:
            if self._pid == os.getpid():
                return
            self._pid, self._live, self._known = os.getpid(), False, set(self._known)
            threading.Thread(target=self._listen, name="dispatch-cancels",
                             daemon=True).start()

    def _listen(self) -> None:
        while True:
            pubsub = self.client.pubsub(ignore_subscribe_messages=True)
            try:
                pubsub.subscribe(keys.CANCELS_CHANNEL)
                pubsub.get_message(timeout=1.0)  # the subscription is confirmed by now
                since = time.time() - self.ttl
                self._known.update(as_text(i) for i in
                                   self.client.zrangebyscore(keys.CANCELS, since, "+inf"))
                self._live = True
                while True:
                    message = pubsub.get_message(timeout=5.0)
                    if message is not None and message.get("type") == "message":
                        self._known.add(as_text(message["data"]))
            except REDIS_ERRORS as exc:
                log.debug("cancel subscription lost: %s", exc)
            finally:
                self._live = False
                pubsub.close()
            time.sleep(1.0)
