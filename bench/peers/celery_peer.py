"""Raw Celery on Redis, three ways (each a Celery app of its own, JSON, prefork ``-c 2``):

- ``alo``: broker only, at the at-least-once settings ours runs with: late acks, a
  task lost with its worker is redelivered (``task_reject_on_worker_lost``), prefetch 1,
  no results (``task_ignore_result``). Celery's "Optimizing" guide recommends
  ``acks_late`` with a prefetch multiplier of 1 for long or must-run tasks.
- ``defaults``: Celery as it ships: early acks, prefetch multiplier 4, no result
  backend configured.
- ``results``: ``alo`` plus the Redis result backend (results kept for Celery's default
  of one day), as an app that reads results would run.

Celery has no batch publish: a ``group`` publishes each of its tasks with its own
``apply_async``, so the batch row is left empty rather than time the same calls again.
"""

from __future__ import annotations

from typing import Any

import redis
from celery import Celery

from bench.peers.common import COUNTER, LATENCIES, URL, Peer

_client = redis.Redis.from_url(URL)


def _noop() -> None:
    _client.incr(COUNTER)


def _latency(sent: float) -> None:
    import time

    _client.rpush(LATENCIES, time.time() - sent)


def _app(name: str, **conf: Any) -> Celery:
    app = Celery(name, broker=URL, set_as_current=False)
    app.conf.update(broker_connection_retry_on_startup=True, **conf)
    app.task(name="peer.drain")(_noop)
    app.task(name="peer.latency")(_latency)
    return app


_SAME_AS_OURS = {"task_acks_late": True, "task_reject_on_worker_lost": True,
                 "worker_prefetch_multiplier": 1}
alo = _app("alo", task_ignore_result=True, **_SAME_AS_OURS)
defaults = _app("defaults")
results = _app("results", result_backend=URL, **_SAME_AS_OURS)


class _CeleryPeer(Peer):
    app_name = ""

    def __init__(self) -> None:
        app: Celery = globals()[self.app_name]
        self.drain = app.tasks["peer.drain"]
        self.latency = app.tasks["peer.latency"]

    def worker_command(self, python: str, slots: int, index: int) -> list[str]:
        command = [python, "-m", "celery", "-A", f"{__name__}:{self.app_name}", "worker",
                   "--pool", "prefork", "--concurrency", str(slots)]
        return command + (["--hostname", f"celery{index}@%h"] if index else [])

    def enqueue_one(self, n: int) -> None:
        apply_async = self.drain.apply_async
        for _ in range(n):
            apply_async()

    def send_latency(self, sent: float) -> object:
        return self.latency.apply_async((sent,))

    def settled(self, handle: object) -> bool:
        # Delivered but unacknowledged messages sit in kombu's "unacked" hash (with
        # early acks the ack comes before the task runs).
        return not _client.hlen("unacked")


class AtLeastOnce(_CeleryPeer):
    app_name = "alo"


class Defaults(_CeleryPeer):
    app_name = "defaults"


class WithResults(_CeleryPeer):
    app_name = "results"
