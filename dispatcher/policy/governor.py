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
  by default): a sustained overload cannot hold background work forever;
- once the burst ends, the held backlog drains paced to ``RECOVERY_SHARE`` of the time
  until the loop has gone ``RECOVERY`` seconds without saturation. Draining it flat
  out starved the loop: its thread waited for the GIL behind the job threads, so its
  own CPU clock read "idle" and the whole backlog ran at once. With the 2-connection
  no-op load of ``bench/``, ~1,000 held jobs ran in 60-220 ms stalls that held up to
  50 requests each (p99 ~6 ms, against ~2.5 ms at a quarter share). Jobs that wait
  rather than compute (I/O, sleeps) use little CPU and are hardly paced.

What does not fit spills over to Celery (``DISPATCH_INLINE_MAX_PENDING``,
``DISPATCH_INLINE_MAX_BACKLOG``).

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
#: it later, and each look takes the GIL from the saturated loop. That costs the loop
#: more than the look: while a thread waits for the GIL, CPython wakes it at each of
#: the loop's GIL releases (every socket call) until the switch interval (5 ms) makes
#: the loop yield, and each wake-up is a system call on the loop's time.
HOLD_NAP = 0.1
#: A reading further apart than this from the previous one says nothing about now.
STALE = 1.0
#: What a job costs the server beyond its own CPU time: each time a job's thread
#: wakes (to start, after a sleep or I/O, to finish) it takes the GIL from the loop,
#: which then waits its turn back. Measured on a 2-core machine: a raw
#: ``BackgroundTasks`` job with two hand-offs costs a saturated server ~0.25 ms.
HANDOFF = 0.00025
#: Share of the time a backlog held during a burst may use as it drains, and how long
#: after the loop's last saturated reading that pacing lasts (see the module docstring).
RECOVERY_SHARE = 0.25
RECOVERY = 1.0
#: Weight of the newest job in ``Governor.mean_run``.
RUN_WEIGHT = 0.05

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
            self._sample = (0.0, 0.0)  # another thread's clock: the next reading starts anew

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
            fresh = now - then < STALE
            self._saturated = (cpu is not None and fresh
                               and (cpu - cpu_then) / (now - then) >= SATURATED)
            self._sample = (now, cpu or 0.0)
        return self._saturated


def _moved(mean: float | None, sample: float) -> float:
    """``mean`` moved toward ``sample`` by ``RUN_WEIGHT`` (the first sample sets it)."""
    return sample if mean is None else mean + RUN_WEIGHT * (sample - mean)


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
        #: When the next job may start while the loop is saturated ...
        self._next_start = 0.0
        #: ... and while a held backlog drains after a burst (``perf_counter`` times).
        self._next_drained = 0.0
        #: When the loop last read as saturated.
        self._busy_at = float("-inf")
        #: Mean wall time of a job (seconds, moving average; None until one has run),
        #: of any task, and of each task by name: the spill-over limit weighs a waiting
        #: job at its task's mean (``Accepted.weighed_run``).
        self.mean_run: float | None = None
        self._task_means: dict[str, float] = {}

    def wait_turn(self, due: float | None = None) -> None:
        """Return when a job that became due at ``due`` (``time.time()``; None: no hold)
        may start; one waiter at a time, the others queue behind it on a lock (blocked
        without the GIL)."""
        if self.share >= 1.0:
            return
        held_until = None if due is None else due + self.max_hold
        with self._turn:
            while True:
                if self._saturated():
                    if held_until is not None:
                        hold = held_until - time.time()
                        if hold > 0:
                            time.sleep(min(hold, HOLD_NAP))
                            continue
                        held_until = None
                    next_start = self._next_start
                elif self._recovering():
                    next_start = self._next_drained
                else:
                    return
                delay = next_start - time.perf_counter()
                if delay <= 0:
                    return
                time.sleep(min(delay, MAX_NAP))

    def task_mean(self, task: str) -> float | None:
        """The mean wall time of ``task``'s jobs here (None: none has run yet)."""
        return self._task_means.get(task)

    def spent(self, cpu_seconds: float, wall_seconds: float = 0.0,
              task: str | None = None) -> None:
        """A job (of ``task``) used ``cpu_seconds`` in ``wall_seconds``, which moves
        ``mean_run`` and the task's mean: while busy (or draining after a burst), the
        next start waits long enough to keep background work within its share (while
        busy, hand-offs included)."""
        self.mean_run = _moved(self.mean_run, wall_seconds)
        if task is not None:
            self._task_means[task] = _moved(self._task_means.get(task), wall_seconds)
        if self.share >= 1.0:
            return
        if self._saturated():
            pause = (cpu_seconds + HANDOFF) * (1.0 - self.share) / self.share
            with self._pace:
                self._next_start = max(self._next_start, time.perf_counter()) + pause
        elif self._recovering():
            pause = cpu_seconds * (1.0 - RECOVERY_SHARE) / RECOVERY_SHARE
            with self._pace:
                self._next_drained = max(self._next_drained, time.perf_counter()) + pause

    def _saturated(self) -> bool:
        if self._busy():
            self._busy_at = time.perf_counter()
            return True
        return False

    def _recovering(self) -> bool:
        """Whether the loop read as saturated less than ``RECOVERY`` seconds ago."""
        return time.perf_counter() - self._busy_at < RECOVERY
