"""Rate and concurrency limits for the whole fleet, on the broker Redis (the
``Limits`` port; see ``dispatcher.core.limits`` for what they promise).

One script call admits a job or says how long it should wait (``lua/admit.lua``), on
the Redis clock, so processes on different machines agree. A concurrency slot is a
lease: a thread in each process that holds slots renews them every third of
``DISPATCH_CONCURRENCY_LEASE``; a holder that dies stops renewing, and its slot is
free when the lease runs out. Giving a slot back pushes the Celery job that has waited
longest for one onto its queue at once (``lua/release_slot.lua``). While Redis cannot
be asked, each process applies the limits by itself (``LocalLimits``).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import threading
import time

import redis

from ..core.job import Job
from ..core.limits import Admission, LimitReason, LocalLimits, slot_key
from . import keys
from .client import REDIS_ERRORS
from .link import as_text
from .scripts import ADMIT, RELEASE_SLOT, RENEW_SLOTS

log = logging.getLogger("dispatcher.limits")

_REASONS: dict[str, LimitReason] = {"rate_limit": "rate_limit", "concurrency": "concurrency"}
#: Seconds the limiter is not asked after a Redis error.
QUIET_AFTER_ERROR = 5.0


class RedisLimits:
    """The ``Limits`` port on Redis (see the module docstring)."""

    def __init__(self, client: redis.Redis, lease: float) -> None:
        self.client = client
        self.lease = lease
        self._admit = client.register_script(ADMIT.source)
        self._release = client.register_script(RELEASE_SLOT.source)
        self._renew = client.register_script(RENEW_SLOTS.source)
        self._lock = threading.Lock()
        #: Slots this process holds: (slot key, publication) -> how many deliveries hold it.
        self._held: dict[tuple[str, str], int] = {}
        self._renewer_pid = 0
        self._quiet_until = 0.0
        #: Asked instead while Redis cannot be.
        self._local = LocalLimits()

    def admit(self, job: Job) -> Admission:
        """Admit ``job`` or refuse it with a wait. After a Redis error, and for a few
        seconds after one without asking Redis (a job must not wait out a timeout each
        time while it is down), this process's own limiter answers: the limits then
        hold per process until Redis answers again."""
        if time.monotonic() < self._quiet_until:
            return self._locally(job)
        spec = job.spec
        rate, slots = spec.rate_limit, spec.concurrency
        slot = None if slots is None else slot_key(spec, job.payload)
        try:
            reply = self._admit(
                keys=[keys.rate(spec.name), keys.rate_waiting(spec.name),
                      keys.slots(slot or spec.name), keys.slot_waiters(slot or spec.name)],
                args=[job.publish_id, 0 if rate is None else rate.count,
                      0 if rate is None else rate.per, slots or 0, self.lease])
        except REDIS_ERRORS as exc:
            self._quiet_until = time.monotonic() + QUIET_AFTER_ERROR
            log.warning("limits held per process for %g s: the limiter's Redis failed (%s)",
                        QUIET_AFTER_ERROR, exc)
            return self._locally(job)
        admitted, reason, wait, now = (as_text(part) for part in reply)
        if admitted != "1":
            return Admission(False, float(now), max(0.001, float(wait)), _REASONS[reason],
                             slot)
        if slot is not None:
            self._hold(slot, job.publish_id)
        return Admission(True, float(now), slot=slot)

    def _locally(self, job: Job) -> Admission:
        """This process's own answer, counting the slots it holds from Redis too."""
        spec = job.spec
        key = None if spec.concurrency is None else slot_key(spec, job.payload)
        with self._lock:
            taken = sum(1 for slot, _ in self._held if slot == key)
        return dataclasses.replace(self._local.admit(job, taken), local=True)

    def release(self, job: Job, admission: Admission) -> None:
        """Give the slot back (raises on a Redis error: the lease then expires)."""
        slot = admission.slot
        if slot is None:
            return
        if admission.local:  # taken from this process's limiter while Redis was down
            self._local.release(job, admission)
            return
        holder = job.publish_id
        with self._lock:
            count = self._held.pop((slot, holder), 0) - 1
            if count > 0:
                self._held[(slot, holder)] = count
        if count > 0:  # a second delivery of the same publication holds it still (rare)
            return
        self._release(keys=[keys.slots(slot), keys.slot_waiters(slot), keys.DELAYED,
                            keys.INFLIGHT],
                      args=[holder, time.time(), keys.MARKER_PREFIX, keys.CANCEL_PREFIX])

    def held(self) -> int:
        """Slots this process holds now."""
        return len(self._held)

    def renewing(self) -> bool:
        """Whether this process runs a renewer (only while it holds slots)."""
        return self._renewer_pid == os.getpid()

    def renew(self) -> int:
        """Renew every lease this process holds; returns how many."""
        with self._lock:
            held = list(self._held)
        if held:
            self._renew(keys=[keys.slots(slot) for slot, _ in held],
                        args=[self.lease, *(holder for _, holder in held)])
        return len(held)

    def _hold(self, slot: str, holder: str) -> None:
        with self._lock:
            # One renewer per process while it holds slots (again after a fork: a child
            # holds none of its parent's slots).
            if self._renewer_pid != os.getpid():
                self._held = {}
                self._renewer_pid = os.getpid()
                threading.Thread(target=self._renew_loop, name="dispatch-leases",
                                 daemon=True).start()
            self._held[(slot, holder)] = self._held.get((slot, holder), 0) + 1

    def _renew_loop(self) -> None:
        pid = os.getpid()
        while True:
            time.sleep(self.lease / 3)
            with self._lock:
                if self._renewer_pid != pid:
                    return
                if not self._held:  # nothing to renew: the next slot taken starts one
                    self._renewer_pid = 0
                    return
            try:
                self.renew()
            except REDIS_ERRORS as exc:  # the next pass tries again, well within the lease
                log.warning("concurrency leases not renewed: %s", exc)
            except Exception:
                log.exception("renewing concurrency leases failed")
