"""Celery queue depths for ``/metrics``: one pipelined round trip with a short
timeout, left alone for a while after a failure."""

from __future__ import annotations

import logging
import threading
import time

import redis

from ...core.settings import DispatcherSettings
from ...store.client import redis_client
from .protocol import queue_depths
from .worker import worker_queues

log = logging.getLogger("dispatcher.metrics")

QUEUE_DEPTH_TIMEOUT = 0.5
QUEUE_DEPTH_BACKOFF = 5.0


class QueueDepths:
    def __init__(self, settings: DispatcherSettings) -> None:
        self.settings = settings
        self._lock = threading.Lock()
        self._client: redis.Redis | None = None
        self._down_until = 0.0

    def read(self) -> dict[str, int] | None:
        """Messages waiting per queue of this app; None when they cannot be read now."""
        url = self.settings.broker_url
        if url is None or time.monotonic() < self._down_until:
            return None
        with self._lock:
            if self._client is None:
                timeout = min(QUEUE_DEPTH_TIMEOUT, self.settings.publish_timeout)
                self._client = redis_client(url, timeout)
            client = self._client
        try:
            return queue_depths(client, worker_queues(self.settings))
        except Exception as exc:
            self._down_until = time.monotonic() + QUEUE_DEPTH_BACKOFF
            log.debug("queue depths not read: %s", exc)
            return None
