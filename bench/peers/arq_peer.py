"""arq (asyncio, Redis only), run from its own venv, ``.venv-bench-arq``: every arq
release, 0.28 too, requires redis-py < 6, which taskiq-redis 1.2 does not accept.

Settings are arq's defaults but ``max_jobs=2`` (the worker's two slots; the default is
10): results kept for an hour (``keep_result``), the queue polled every 0.5 s while
idle (``poll_delay``). Tasks use the worker's own connection (``ctx["redis"]``), as
arq's docs do. The worker is ``arq bench.peers.arq_peer.WorkerSettings``: one process,
one event loop. ``enqueue_job`` is awaited one call at a time; arq has no batch API:
the batch row is empty.
"""

from __future__ import annotations

import time
from typing import Any, ClassVar

from arq import create_pool
from arq.connections import ArqRedis, RedisSettings
from arq.jobs import Job, JobStatus

from bench.peers.common import COUNTER, LATENCIES, URL, AsyncPeer


async def drain(ctx: dict[str, Any]) -> None:
    await ctx["redis"].incr(COUNTER)


async def latency(ctx: dict[str, Any], sent: float) -> None:
    await ctx["redis"].rpush(LATENCIES, time.time() - sent)


class WorkerSettings:
    functions: ClassVar[list[Any]] = [drain, latency]
    redis_settings = RedisSettings.from_dsn(URL)
    max_jobs = 2


class Arq(AsyncPeer):
    def __init__(self) -> None:
        super().__init__()
        self.pool: ArqRedis = self.run(create_pool(RedisSettings.from_dsn(URL)))

    def worker_command(self, python: str, slots: int, index: int) -> list[str]:
        if slots != WorkerSettings.max_jobs:
            raise ValueError(f"WorkerSettings.max_jobs is {WorkerSettings.max_jobs}")
        return [python, "-m", "arq", f"{__name__}.WorkerSettings"]

    def enqueue_one(self, n: int) -> None:
        async def send() -> None:
            for _ in range(n):
                await self.pool.enqueue_job("drain")

        self.run(send())

    def send_latency(self, sent: float) -> object:
        return self.run(self.pool.enqueue_job("latency", sent))

    def settled(self, handle: object) -> bool:
        assert isinstance(handle, Job)
        # "complete": the result is stored, and the in-progress key and the job itself
        # were removed in the same transaction.
        return bool(self.run(handle.status()) == JobStatus.complete)

    def close(self) -> None:
        self.run(self.pool.aclose())
        super().close()
