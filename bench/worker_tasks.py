"""Tasks the benchmark's workers run: ours through the dispatcher, raw through Celery."""

from __future__ import annotations

import os
import time

import redis
from celery import Celery

from dispatcher import task

_client = redis.Redis.from_url(os.environ.get("DISPATCH_BROKER_URL", "redis://127.0.0.1:6379/0"))


@task(name="bench.drain", weight=8)
def drain() -> None:
    _client.incr("bench:drained")


@task(name="bench.latency", weight=8)
def latency(sent: float) -> None:
    _client.rpush("bench:latency:ours", time.time() - sent)


raw = Celery("raw", broker=os.environ.get("DISPATCH_BROKER_URL"), set_as_current=False)
raw.conf.update(
    task_serializer="json", accept_content=["json"], task_acks_late=True,
    task_reject_on_worker_lost=True, worker_prefetch_multiplier=1, task_ignore_result=True,
    broker_connection_retry_on_startup=True, worker_hijack_root_logger=False,
)


@raw.task(name="raw.drain")
def raw_drain() -> None:
    _client.incr("bench:drained")


@raw.task(name="raw.latency")
def raw_latency(sent: float) -> None:
    _client.rpush("bench:latency:raw", time.time() - sent)
