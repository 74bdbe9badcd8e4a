"""Rate and concurrency limits for the whole fleet, on the broker Redis (the
``Limits`` port; see ``dispatcher.core.limits`` for what they promise).

One script call admits a job or says how long it should wait (``lua/admit.lua``), on
the Redis clock, so processes on different machines agree. A concurrency slot is a
lease: a thread in each process that holds slots renews them every third of
``DISPATCH_CONCURRENCY_LEASE``; a holder that dies stops renewing, and its slot is
free when the lease runs out. Giving a slot back pushes the Celery job that has waited
longest for one onto its queue at once (``lua/release_slot.lua``).
"""

from __future__ import annotations

import logging
import os
import threading
import time

import redis

from ..core.job import Job
from ..core.limits import Admission, LimitReason, slot_key
from . import keys
from .client import REDIS_ERRORS
from .link import as_text
from .scripts import ADMIT, RELEASE_SLOT, RENEW_SLOTS

log = logging.getLogger("dispatcher.limits")

_REASONS: dict[str, LimitReason] = {"rate_limit": "rate_limit", "concurrency": "concurrency"}


class RedisLimits:
    """The ``Limits`` port on Redis (see the module docstring)."""

    def __init__(self, client: redis.Redis, lease: float) -> None:
        self.client = client
        self.lease = lease
        self._admit = client.register_script(ADMIT.source)
        self._release = client.register_script(RELEASE_SLOT.source)
        self._renew = client.register_script(RENEW_SLOTS.source)
        self._lock = threading.Lock()
        #: Slots this process holds: (slot key, job id) -> how many attempts hold it.
        self._held: dict[tuple[str, str], int] = {}
        self._renewer_pid = 0

    def admit(self, job: Job, waiter: str | None = None) -> Admission:
        """Admit ``job`` or refuse it with a wait; raises on a Redis error."""
        spec = job.spec
        rate, slots = spec.rate_limit, spec.concurrency
        slot = None if slots is None else slot_key(spec, job.payload)
        reply = self._admit(
            keys=[keys.rate(spec.name), keys.rate_waiting(spec.name),
                  keys.slots(slot or spec.name), keys.slot_waiters(slot or spec.name)],
            args=[job.id, 0 if rate is None else rate.count, 0 if rate is None else rate.per,
                  slots or 0, self.lease, waiter or ""])
        admitted, reason, wait, now = (as_text(part) for part in reply)
        if admitted != "1":
            return Admission(False, float(now), max(0.001, float(wait)), _REASONS[reason])
        if slot is not None:
            self._hold(slot, job.id)
        return Admission(True, float(now), slot=slot)

    def release(self, job: Job, admission: Admission) -> None:
        """Give the slot back (raises on a Redis error: the lease then expires)."""
        slot = admission.slot
        if slot is None:
            return
        with self._lock:
            count = self._held.pop((slot, job.id), 0) - 1
            if count > 0:
                self._held[(slot, job.id)] = count
        if count > 0:  # another attempt of the same job holds it still (rare)
            return
        self._release(keys=[keys.slots(slot), keys.slot_waiters(slot), keys.DELAYED,
                            keys.INFLIGHT],
                      args=[job.id, time.time(), keys.MARKER_PREFIX, keys.CANCEL_PREFIX])

    def held(self) -> int:
        """Slots this process holds now."""
        return len(self._held)

    def renew(self) -> int:
        """Renew every lease this process holds; returns how many."""
        with self._lock:
            held = list(self._held)
        if held:
            self._renew(keys=[keys.slots(slot) for slot, _ in held],
                        args=[self.lease, *(job_id for _, job_id in held)])
        return len(held)

    def _hold(self, slot: str, job_id: str) -> None:
        with self._lock:
            self._held[(slot, job_id)] = self._held.get((slot, job_id), 0) + 1
            if self._renewer_pid != os.getpid():  # one renewer per process (after a fork too)
                self._renewer_pid = os.getpid()
                threading.Thread(target=self._renew_loop, name="dispatch-leases",
                                 daemon=True).start()

    def _renew_loop(self) -> None:
        pid = os.getpid()
        while self._renewer_pid == pid:
            time.sleep(self.lease / 3)
            try:
                self.renew()
            except REDIS_ERRORS as exc:  # the next pass tries again, well within the lease
                log.warning("concurrency leases not renewed: %s", exc)
            except Exception:
                log.exception("renewing concurrency leases failed")
