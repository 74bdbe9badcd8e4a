"""Dead letters in Redis: jobs that ended in FAILURE, kept with their arguments so an
operator can look at them and dispatch them again.

The stored arguments keep secrets (a re-dispatch needs them); listings hide them
(``core.redaction``).
"""

from __future__ import annotations

import json
from typing import cast

import redis

from ..core.record import DeadLetter
from . import keys


class RedisDeadLetters:
    def __init__(self, client: redis.Redis) -> None:
        self._client = client

    def add(self, entry: DeadLetter) -> None:
        pipe = self._client.pipeline(transaction=True)
        pipe.hset(keys.DEAD_LETTERS, entry["task_id"], json.dumps(entry, default=str))
        pipe.zadd(keys.DEAD_LETTERS_INDEX, {entry["task_id"]: entry["dead_at"]})
        pipe.execute()

    def get(self, task_id: str) -> DeadLetter | None:
        raw = self._client.hget(keys.DEAD_LETTERS, task_id)
        return None if raw is None else cast(DeadLetter, json.loads(raw))

    def remove(self, task_id: str) -> None:
        pipe = self._client.pipeline(transaction=True)
        pipe.hdel(keys.DEAD_LETTERS, task_id)
        pipe.zrem(keys.DEAD_LETTERS_INDEX, task_id)
        pipe.execute()

    def list(self, limit: int = 100) -> list[DeadLetter]:
        ids = cast(list[bytes], self._client.zrevrange(keys.DEAD_LETTERS_INDEX, 0, limit - 1))
        if not ids:
            return []
        raws = self._client.hmget(keys.DEAD_LETTERS, ids)
        return [json.loads(raw) for raw in raws if raw is not None]


