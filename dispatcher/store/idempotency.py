"""Idempotency keys: a second dispatch with the same key gets the first job back.

``RedisIdempotency`` keeps keys in Redis (``SET NX`` with ``DISPATCH_IDEMPOTENCY_TTL``)
so every API process agrees; ``MemoryIdempotency`` keeps them in this process for a
process without Redis.
"""

from __future__ import annotations

import json
import logging
import threading
import time

import redis

from ..core.ports import Claimed, Health
from ..core.spec import RouteName, parse_route
from . import keys
from .client import REDIS_ERRORS
from .scripts import IDEMPOTENCY_RELEASE

log = logging.getLogger("dispatcher.idempotency")


def _value(job_id: str, task_name: str, route: RouteName, queue: str | None) -> str:
    return json.dumps({"id": job_id, "name": task_name, "route": route, "queue": queue})


def _claimed(raw: str | bytes) -> Claimed:
    first = json.loads(raw)
    return Claimed(first["id"], first["name"], parse_route(first["route"]), first["queue"])


class RedisIdempotency:
    def __init__(self, client: redis.Redis, ttl: int, health: Health) -> None:
        self._client = client
        self._ttl = ttl
        self._health = health

    def claim(self, task_name: str, key: str, job_id: str, route: RouteName,
              queue: str | None) -> Claimed | None:
        if not self._health.available():
            log.warning("idempotency store down, dispatching %s without the check", key)
            return None
        name = keys.idempotency(task_name, key)
        try:
            if self._client.set(name, _value(job_id, task_name, route, queue), nx=True,
                                ex=self._ttl):
                return None
            existing: bytes | None = self._client.get(name)  # type: ignore[assignment]
        except REDIS_ERRORS as exc:
            self._health.failed(exc)
            log.warning("idempotency store unavailable, dispatching %s anyway: %s", key, exc)
            return None
        if existing is None:  # expired in between: this dispatch takes the key
            return self.claim(task_name, key, job_id, route, queue)
        return _claimed(existing)

    def release(self, task_name: str, key: str, job_id: str) -> None:
        try:
            self._client.eval(IDEMPOTENCY_RELEASE.source, 1,
                              keys.idempotency(task_name, key), job_id)
        except REDIS_ERRORS as exc:
            log.warning("could not release idempotency key %s: %s", key, exc)


class MemoryIdempotency:
    def __init__(self, ttl: int) -> None:
        self._ttl = ttl
        self._held: dict[str, tuple[float, str]] = {}
        self._lock = threading.Lock()

    def claim(self, task_name: str, key: str, job_id: str, route: RouteName,
              queue: str | None) -> Claimed | None:
        name = keys.idempotency(task_name, key)
        now = time.monotonic()
        with self._lock:
            held = self._held.get(name)
            if held is None or held[0] < now:
                self._held[name] = (now + self._ttl, _value(job_id, task_name, route, queue))
                return None
        return _claimed(held[1])

    def release(self, task_name: str, key: str, job_id: str) -> None:
        name = keys.idempotency(task_name, key)
        with self._lock:
            held = self._held.get(name)
            if held is not None and json.loads(held[1])["id"] == job_id:
                del self._held[name]
