"""Broker health and the spool relay: one background thread per process.

``dispatch()`` never probes a broker it already knows is down: it consults
``BrokerMonitor.healthy`` (no I/O) and goes straight to the outage policy. The
monitor thread pings Redis, flips the state back when it answers and then relays the
spool, so a dispatch waits ``DISPATCH_PUBLISH_TIMEOUT`` at most once per outage and
``/healthz`` answers from memory.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from typing import Any

from ...store.client import REDIS_ERRORS
from .publisher import Publisher
from .spool import Spool

log = logging.getLogger("dispatcher.broker")

BROKER_ERRORS = REDIS_ERRORS


class BrokerMonitor:
    """Knows whether the broker answers; relays the spool when it does."""

    def __init__(
        self, publisher: Publisher, spool: Spool, interval: float = 0.5, batch: int = 200
    ) -> None:
        self.publisher = publisher
        self.spool = spool
        self.interval = interval
        self.batch = batch
        self._healthy = True
        self._checked_at = 0.0
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._pid = 0

    @property
    def healthy(self) -> bool:
        return self._healthy

    def mark_down(self, error: BaseException | None = None) -> None:
        """Record that a call failed; the monitor takes over probing."""
        if self._healthy:
            log.warning("broker unreachable, switching to the outage policy: %s", error)
        self._healthy = False
        self.start()
        self._wake.set()

    def start(self) -> None:
        """Start the thread in this process (again after a fork)."""
        with self._lock:
            alive = self._thread is not None and self._thread.is_alive()
            if alive and self._pid == os.getpid():
                return
            self._pid = os.getpid()
            self._thread = threading.Thread(
                target=self._run, name="dispatch-broker-monitor", daemon=True
            )
            self._thread.start()

    def status(self) -> dict[str, Any]:
        return {
            "reachable": self._healthy,
            "checked_at": self._checked_at or None,
            "spool_depth": self.spool.depth(),
        }

    def check_now(self) -> bool:
        """Ping once; on success relay whatever the spool holds."""
        try:
            self.publisher.client.ping()
        except BROKER_ERRORS:
            self._healthy = False
            return False
        finally:
            self._checked_at = time.time()
        try:
            self.relay()
        except BROKER_ERRORS as exc:
            log.warning("spool relay interrupted: %s", exc)
            self._healthy = False
            return False
        if not self._healthy:
            log.warning("broker reachable again")
        self._healthy = True
        return True

    def relay(self) -> int:
        """Publish spooled jobs in order; each lands in its queue exactly once."""
        sent = 0
        while True:
            rows = self.spool.peek(self.batch)
            if not rows:
                return sent
            self.publisher.publish([(r.job_id, r.queue_key, r.message, r.record, r.due)
                                    for r in rows])
            self.spool.remove([r.job_id for r in rows])
            sent += len(rows)
            log.info("relayed %d spooled job(s) to the broker", len(rows))

    def _run(self) -> None:
        while True:
            try:
                healthy = self.check_now()
            except Exception:  # never the end of the monitor: the spool waits on it
                log.exception("broker check failed")
                healthy = False
            self._wake.wait(1.0 if healthy else self.interval)
            self._wake.clear()
