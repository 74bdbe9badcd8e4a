"""RQ at its defaults: the forking ``Worker`` (a fresh work horse process per job, which
RQ's docs present as its robustness model), results kept 500 s, pickle serializer.

An RQ worker runs one job at a time ("if you want to perform jobs concurrently, simply
start more workers"), so "one worker process with two slots" is RQ's own
``rq worker-pool -n 2``: one pool process supervising two workers, each forking its
horses. The batch row is ``Queue.enqueue_many`` (one Redis pipeline for the batch).
"""

from __future__ import annotations

import time

import redis
from rq import Queue
from rq.job import Job, JobStatus

from bench.peers.common import COUNTER, LATENCIES, URL, Peer

_client = redis.Redis.from_url(URL)


def drain() -> None:
    _client.incr(COUNTER)


def latency(sent: float) -> None:
    _client.rpush(LATENCIES, time.time() - sent)


class Rq(Peer):
    batch_api = "enqueue_many"

    def __init__(self) -> None:
        self.queue = Queue("default", connection=_client)

    def worker_command(self, python: str, slots: int, index: int) -> list[str]:
        return [python, "-m", "rq.cli", "worker-pool", "--num-workers", str(slots),
                "--url", URL, "default"]

    def enqueue_one(self, n: int) -> None:
        enqueue = self.queue.enqueue
        for _ in range(n):
            enqueue(drain)

    def enqueue_batch(self, n: int) -> None:
        self.queue.enqueue_many([Queue.prepare_data(drain) for _ in range(n)])

    def send_latency(self, sent: float) -> object:
        return self.queue.enqueue(latency, sent)

    def settled(self, handle: object) -> bool:
        assert isinstance(handle, Job)
        # FINISHED is set as the job leaves the started registry, in one pipeline.
        return handle.get_status(refresh=True) == JobStatus.FINISHED
