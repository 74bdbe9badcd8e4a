"""Ours: ``@task`` ``bench.drain`` (weight 8: the Celery route) and ``bench.latency`` from
``bench/worker_tasks.py``, run by ``python -m worker`` at its default settings.

The runner sets only ``DISPATCH_BROKER_URL``, ``DISPATCH_TASK_MODULES``,
``DISPATCH_SPOOL_PATH`` and, for the worker, ``DISPATCH_METRICS_PORT`` (a free port, so
that workers running at once, or someone else's on this machine, do not collide on
9808; the endpoint stays on, as by default). No event, log-level or concurrency
setting: the worker's two slots are ``--concurrency 2``: two direct consumers (the
default consumer) beside one Celery process for remote control and the upkeep. The
``ours-celery`` column is the same with ``DISPATCH_WORKER_CONSUMER=celery`` (Celery's
consumer and a prefork pool of two).
"""

from __future__ import annotations

import redis

from bench.peers.common import URL, Peer


class Ours(Peer):
    batch_api = "dispatch_many"
    latency_key = "bench:latency:ours"  # what bench.worker_tasks.latency pushes to

    def __init__(self) -> None:
        # bench.worker_tasks reads DISPATCH_BROKER_URL; the runner sets it to URL.
        from bench.worker_tasks import drain, latency

        self.drain = drain
        self.latency = latency
        self.client = redis.Redis.from_url(URL)

    def worker_command(self, python: str, slots: int, index: int) -> list[str]:
        command = [python, "-m", "worker", "--concurrency", str(slots)]
        # Celery node names must differ between workers running at once.
        return command + (["--hostname", f"dispatcher{index}@%h"] if index else [])

    def enqueue_one(self, n: int) -> None:
        dispatch = self.drain.dispatch
        for _ in range(n):
            dispatch()

    def enqueue_batch(self, n: int) -> None:
        self.drain.dispatch_many([() for _ in range(n)])

    def send_latency(self, sent: float) -> object:
        return self.latency.dispatch(sent)

    def settled(self, handle: object) -> bool:
        # kombu keeps delivered, unacknowledged messages in the "unacked" hash.
        return not self.client.hlen("unacked")
