"""taskiq with taskiq-redis's ``RedisStreamBroker``: the broker its README puts first, and
the one of its three with acknowledgements (``ListQueueBroker`` has none, ``PubSubBroker``
broadcasts). No result backend: nothing reads the no-op jobs' results (as the broker-only
Celery row). Tasks are ``async def``, as taskiq's docs write them, with an asyncio Redis
client.

The worker is ``taskiq worker bench.peers.taskiq_peer:broker --workers 1
--max-async-tasks 2``: one worker process (under taskiq's process manager) running at
most two tasks at once, acknowledged at taskiq's default (``--ack-type when_saved``:
after the task ran and its result, here none, was saved). ``kiq`` is awaited one call
at a time. taskiq has no batch API: the batch row is empty.
"""

from __future__ import annotations

import time

import redis
from redis.asyncio import Redis as AsyncRedis
from taskiq_redis import RedisStreamBroker

from bench.peers.common import COUNTER, LATENCIES, URL, AsyncPeer

broker = RedisStreamBroker(url=URL)
_clients: dict[int, AsyncRedis] = {}


def _client() -> AsyncRedis:
    """One asyncio client per worker process (made in the process that uses it)."""
    import os

    pid = os.getpid()
    if pid not in _clients:
        _clients[pid] = AsyncRedis.from_url(URL)
    return _clients[pid]


@broker.task(task_name="drain")
async def drain() -> None:
    await _client().incr(COUNTER)


@broker.task(task_name="latency")
async def latency(sent: float) -> None:
    await _client().rpush(LATENCIES, time.time() - sent)


class Taskiq(AsyncPeer):
    def __init__(self) -> None:
        super().__init__()
        self.client = redis.Redis.from_url(URL)
        # The client side starts the broker too (it declares the consumer group, so
        # jobs sent before any worker starts are read by the first one).
        self.run(broker.startup())

    def worker_command(self, python: str, slots: int, index: int) -> list[str]:
        return [python, "-m", "taskiq", "worker", f"{__name__}:broker", "--workers", "1",
                "--max-async-tasks", str(slots)]

    def enqueue_one(self, n: int) -> None:
        async def send() -> None:
            for _ in range(n):
                await drain.kiq()

        self.run(send())

    def send_latency(self, sent: float) -> object:
        return self.run(latency.kiq(sent))

    def settled(self, handle: object) -> bool:
        # Read but unacknowledged stream entries are the group's pending entries.
        return not self.client.xpending("taskiq", "taskiq")["pending"]

    def close(self) -> None:
        self.run(broker.shutdown())
        super().close()
