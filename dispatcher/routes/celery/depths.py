"""Celery queue depths and backlogs for ``/metrics``: one pipelined round trip (and a
bounded scan of the unacknowledged messages, when there are any) with a short timeout,
left alone for a while after a failure."""

from __future__ import annotations

import logging
import threading
import time

import redis

from ...core.settings import DispatcherSettings
from ...store.client import client_for, redis_client
from .backlog import QueueLoad, read_queue_load
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
        self._dashboard_client: redis.Redis | None = None
        self._down_until = 0.0

    def now(self) -> dict[str, int]:
        """Messages waiting per queue, read now with the ordinary timeouts (the
        dashboard); raises when the broker cannot answer."""
        url = self.settings.broker_url
        if url is None:
            return {}
        with self._lock:
            if self._dashboard_client is None:
                self._dashboard_client = client_for(self.settings, url)
            client = self._dashboard_client
        return queue_depths(client, worker_queues(self.settings))

    def read(self) -> QueueLoad | None:
        """Messages waiting, and the backlog, per queue of this app; None when they
        cannot be read now."""
        url = self.settings.broker_url
        if url is None or time.monotonic() < self._down_until:
            return None
        with self._lock:
            if self._client is None:
                timeout = min(QUEUE_DEPTH_TIMEOUT, self.settings.publish_timeout)
                self._client = redis_client(url, timeout, self.settings.sentinel)
            client = self._client
        try:
            return read_queue_load(client, worker_queues(self.settings))
        except Exception as exc:
            self._down_until = time.monotonic() + QUEUE_DEPTH_BACKOFF
            log.debug("queue depths not read: %s", exc)
            return None
