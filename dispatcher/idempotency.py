"""Idempotency keys: a second dispatch with the same key returns the first job's handle.

Keys live in Redis (``SET NX`` with ``DISPATCH_IDEMPOTENCY_TTL``) when a records store
is configured, so every API process agrees; otherwise in this process's memory.
"""

from __future__ import annotations

import json
import logging
import threading
import time

from . import runtime
from .broker import BROKER_ERRORS
from .handle import TaskHandle
from .settings import get_settings
from .spec import RouteName

log = logging.getLogger("dispatcher.idempotency")
PREFIX = "dispatch:idem:"

_memory: dict[str, tuple[float, str]] = {}
_lock = threading.Lock()


_RELEASE = """
local held = redis.call('GET', KEYS[1])
if held and cjson.decode(held)['id'] == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


def release(task_name: str, key: str, job_id: str) -> None:
    """Free ``key`` if it still belongs to ``job_id`` (its dispatch failed)."""
    name = f"{PREFIX}{task_name}:{key}"
    client = runtime.redis_client()
    if client is None:
        with _lock:
            held = _memory.get(name)
            if held is not None and json.loads(held[1])["id"] == job_id:
                del _memory[name]
        return
    try:
        client.eval(_RELEASE, 1, name, job_id)
    except BROKER_ERRORS as exc:
        log.warning("could not release idempotency key %s: %s", key, exc)


def claim(
    task_name: str, key: str, job_id: str, route: RouteName, queue: str | None
) -> TaskHandle | None:
    """Claim ``key`` for a new job; the earlier job's handle if the key is taken."""
    ttl = get_settings().idempotency_ttl
    name = f"{PREFIX}{task_name}:{key}"
    value = json.dumps({"id": job_id, "name": task_name, "route": route, "queue": queue})
    client = runtime.redis_client()
    existing: str | bytes | None = None
    if client is not None:
        if not runtime.records_available():
            log.warning("idempotency store down, dispatching %s without the check", key)
            return None
        try:
            if client.set(name, value, nx=True, ex=ttl):
                return None
            existing = client.get(name)
        except BROKER_ERRORS as exc:
            runtime.records_failed(exc)
            log.warning("idempotency store unavailable, dispatching %s anyway: %s", key, exc)
            return None
    else:
        now = time.monotonic()
        with _lock:
            held = _memory.get(name)
            if held is None or held[0] < now:
                _memory[name] = (now + ttl, value)
                return None
            existing = held[1]
    if existing is None:  # expired in between: this dispatch takes the key
        return claim(task_name, key, job_id, route, queue)
    first = json.loads(existing)
    return TaskHandle(first["id"], first["name"], first["route"], first["queue"])
