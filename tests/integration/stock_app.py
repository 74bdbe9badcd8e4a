"""A plain Celery app, configured the Celery way and knowing nothing of the dispatcher:
the stock consumer of the wire-compatibility test."""

from __future__ import annotations

import os

import redis
from celery import Celery

app = Celery("stock", broker=os.environ["DISPATCH_BROKER_URL"])
app.conf.update(task_serializer="json", accept_content=["json"], worker_hijack_root_logger=False)


@app.task(name="stock.echo")
def echo(key: str, value: int) -> None:
    redis.Redis.from_url(os.environ["DISPATCH_BROKER_URL"]).rpush(key, value)
