"""The Redis limits, measured in the same run: redis-py ``LPUSH`` of one job-sized message
per call (a round trip each), and the same pushes pipelined 100 at a time (one round
trip per 100, no transaction). No worker: these rows bound what any enqueue on this
machine and this Redis can reach.
"""

from __future__ import annotations

import redis

from bench.peers.common import URL, Peer

#: About the size of one of our job messages (1,030 bytes for ``bench.drain``: a Celery
#: protocol 2 message, headers, properties and an empty argument list, as JSON).
MESSAGE = b"x" * 1024
KEY = "bench:limit"
PIPELINE = 100


class RedisLimits(Peer):
    batch_api = f"pipeline x{PIPELINE}"

    def __init__(self) -> None:
        self.client = redis.Redis.from_url(URL)

    def worker_command(self, python: str, slots: int, index: int) -> None:
        return None

    def enqueue_one(self, n: int) -> None:
        lpush = self.client.lpush
        for _ in range(n):
            lpush(KEY, MESSAGE)

    def enqueue_batch(self, n: int) -> None:
        for start in range(0, n, PIPELINE):
            pipe = self.client.pipeline(transaction=False)
            for _ in range(min(PIPELINE, n - start)):
                pipe.lpush(KEY, MESSAGE)
            pipe.execute()
