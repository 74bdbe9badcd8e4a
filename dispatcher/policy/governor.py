"""Inline jobs yield to request handling.

Inline jobs share the web server's process, and so its GIL: a job's bookkeeping
running while requests queue up makes every request slower, and with raw
``BackgroundTasks`` a busy server loses about half its throughput to them. Here the
inline executor asks the governor before it starts each job:

- while the server's event loop has time to spare, jobs start at once;
- while the loop is saturated (its thread used at least half of the last 10 ms of
  CPU), a job waits for the burst to end, up to ``DISPATCH_INLINE_MAX_HOLD`` seconds
  from when it became due (10 by default). A held job costs the server little (its
  memory); a started one costs it the job's CPU and the GIL's hand-offs;
- a job held that long starts even though the loop is still saturated, paced to keep
  the CPU time of such jobs within ``DISPATCH_INLINE_BUSY_SHARE`` of the time (0.02
  by default): a sustained overload cannot hold background work forever. The backlog
  drains as soon as the burst ends (or spills over to Celery past
  ``DISPATCH_INLINE_MAX_PENDING``).

The loop's own CPU clock is the signal, not a count of open requests: requests queue
in the server's sockets where no middleware sees them, and a request that awaits a
slow database holds no CPU.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

#: Share of wall time the server loop's thread must have used to count as saturated.
SATURATED = 0.5
#: How often the reading is refreshed.
WINDOW = 0.01
#: Longest sleep between two looks at whether the server is still busy, for a job
#: whose hold has passed (it is paced) ...
MAX_NAP = 0.005
#: ... and for a held one: it waits for the burst to end, so a later look only starts
#: it later, and each look takes the GIL from the saturated loop.
HOLD_NAP = 0.02
#: What a job costs the server beyond its own CPU time: each time a job's thread
#: wakes (to start, after a sleep or I/O, to finish) it takes the GIL from the loop,
#: which then waits its turn back. Measured on a 2-core machine: a raw
#: ``BackgroundTasks`` job with two hand-offs costs a saturated server ~0.25 ms.
HANDOFF = 0.00025

class ServerLoad:
    """How busy the server's event loop thread is, from its own CPU clock. One per
    process (``dispatcher.runtime`` owns it): the middleware shows it the thread, the
    executor's governor and the records writer ask it."""

    def __init__(self) -> None:
        self._thread: int | None = None
        self._clock: int | None = None
        self._sample = (0.0, 0.0)
        self._saturated = False

    def watch_server_thread(self) -> None:
        """Called by the middleware for each request: the thread running it is the one
        whose CPU clock tells how busy the server is."""
        ident = threading.get_ident()
        if ident != self._thread:
            try:
                self._clock = time.pthread_getcpuclockid(ident)
            except (AttributeError, OSError):  # no per-thread CPU clocks here: never yield
                self._clock = None
            self._thread = ident

    def server_cpu_seconds(self) -> float | None:
        """CPU time used so far by the server's loop thread (None: not known)."""
        clock = self._clock
        if clock is None:
            return None
        try:
            return time.clock_gettime(clock)
        except OSError:  # the thread has ended (a test client's loop, for instance)
            return None

    def busy(self) -> bool:
        """Whether the server loop's thread was saturated over the last window."""
        now = time.perf_counter()
        then, cpu_then = self._sample
        if now - then >= WINDOW:
            cpu = self.server_cpu_seconds()
            # A stale sample (idle for long) says nothing about now: start a new window.
            fresh = now - then < 10 * WINDOW
            self._saturated = (cpu is not None and fresh
                               and (cpu - cpu_then) / (now - then) >= SATURATED)
            self._sample = (now, cpu or 0.0)
        return self._saturated


def never_busy() -> bool:
    """The load signal of a process that serves no requests."""
    return False


class Governor:
    """Paces the start of inline jobs while the server is busy; see the module docstring."""

    def __init__(self, share: float, max_hold: float = 0.0,
                 busy: Callable[[], bool] = never_busy) -> None:
        self.share = share
        self.max_hold = max_hold
        self._busy = busy
        self._turn = threading.Lock()
        self._pace = threading.Lock()
        self._next_start = 0.0

    def wait_turn(self, due: float | None = None) -> None:
        """Return when a job that became due at ``due`` (``time.time()``; None: no hold)
        may start; one waiter at a time, the others queue behind it on a lock (blocked
        without the GIL)."""
        if self.share >= 1.0:
            return
        held_until = None if due is None else due + self.max_hold
        with self._turn:
            while self._busy():
                if held_until is not None:
                    hold = held_until - time.time()
                    if hold > 0:
                        time.sleep(min(hold, HOLD_NAP))
                        continue
                    held_until = None
                delay = self._next_start - time.perf_counter()
                if delay <= 0:
                    return
                time.sleep(min(delay, MAX_NAP))

    def spent(self, cpu_seconds: float) -> None:
        """A job used ``cpu_seconds``: while busy, the next start waits long enough to
        keep background work, hand-offs included, within its share."""
        if self.share >= 1.0 or not self._busy():
            return
        pause = (cpu_seconds + HANDOFF) * (1.0 - self.share) / self.share
        with self._pace:
            self._next_start = max(self._next_start, time.perf_counter()) + pause
