"""The dead-letter store: jobs that ended in FAILURE, kept with their arguments so an
operator can look at them and dispatch them again.

Listings hide secret arguments (``SecretStr``/``SecretBytes`` parameters and names in
``DISPATCH_REDACT``); the stored payload keeps them so a re-dispatch still works.
"""

from __future__ import annotations

import json
import threading
import time
from collections import OrderedDict
from typing import Any, Protocol, cast

import redis

from .job import Job

HASH = "dispatch:dead"
INDEX = "dispatch:dead:index"
REDACTED = "***"


def make_entry(job: Job, error: dict[str, str], reason: str, traceback: str) -> dict[str, Any]:
    return {
        "task_id": job.id,
        "task_name": job.spec.name,
        "route": job.route,
        "queue": job.queue,
        "priority": job.priority,
        "attempts": job.attempt,
        "max_attempts": job.spec.retry.max_attempts,
        "request_id": job.request_id,
        "arguments": job.payload,
        "error": error,
        "reason": reason,
        "traceback": traceback,
        "dead_at": time.time(),
    }


def redacted(entry: dict[str, Any], secret_names: set[str]) -> dict[str, Any]:
    """A copy of ``entry`` safe to show: secret arguments replaced."""
    arguments = {
        name: REDACTED if name in secret_names else value
        for name, value in (entry.get("arguments") or {}).items()
    }
    return {**entry, "arguments": arguments}


class DeadLetterStore(Protocol):
    def add(self, entry: dict[str, Any]) -> None: ...

    def get(self, task_id: str) -> dict[str, Any] | None: ...

    def remove(self, task_id: str) -> None: ...

    def list(self, limit: int = 100) -> list[dict[str, Any]]: ...


class RedisDeadLetters:
    def __init__(self, client: redis.Redis) -> None:
        self._client = client

    def add(self, entry: dict[str, Any]) -> None:
        pipe = self._client.pipeline(transaction=True)
        pipe.hset(HASH, entry["task_id"], json.dumps(entry, default=str))
        pipe.zadd(INDEX, {entry["task_id"]: entry["dead_at"]})
        pipe.execute()

    def get(self, task_id: str) -> dict[str, Any] | None:
        raw = self._client.hget(HASH, task_id)
        return None if raw is None else dict(json.loads(raw))

    def remove(self, task_id: str) -> None:
        pipe = self._client.pipeline(transaction=True)
        pipe.hdel(HASH, task_id)
        pipe.zrem(INDEX, task_id)
        pipe.execute()

    def list(self, limit: int = 100) -> list[dict[str, Any]]:
        ids = cast(list[bytes], self._client.zrevrange(INDEX, 0, limit - 1))
        if not ids:
            return []
        raws = self._client.hmget(HASH, ids)
        return [json.loads(raw) for raw in raws if raw is not None]


class MemoryDeadLetters:
    def __init__(self, limit: int = 10_000) -> None:
        self._entries: OrderedDict[str, dict[str, Any]] = OrderedDict()
        self._limit = limit
        self._lock = threading.Lock()

    def add(self, entry: dict[str, Any]) -> None:
        with self._lock:
            self._entries[entry["task_id"]] = entry
            while len(self._entries) > self._limit:
                self._entries.popitem(last=False)

    def get(self, task_id: str) -> dict[str, Any] | None:
        with self._lock:
            return self._entries.get(task_id)

    def remove(self, task_id: str) -> None:
        with self._lock:
            self._entries.pop(task_id, None)

    def list(self, limit: int = 100) -> list[dict[str, Any]]:
        with self._lock:
            return list(reversed(self._entries.values()))[:limit]
