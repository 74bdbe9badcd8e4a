"""Spill-over publishing off the request path: ``SpillPublisher``.

A job spills over to Celery when the inline executor is full, which is when the server
is busiest. Publishing it there and then would cost the request a Redis round trip on
the event loop. Instead the job is filed here (a ``deque.append``) and a background
thread publishes whatever has gathered in pipelined batches (``CeleryRoute
.dispatch_many``). While the server is saturated the thread lets jobs gather for
``BUSY_LINGER`` before each batch: each of its wake-ups costs a saturated loop more than
the thread's own work (see ``policy.governor.HOLD_NAP``). The buffer is bounded; a job
that finds it full, a job the broker cannot take and whatever is still filed when the
process stops all go to the outage spool, so nothing accepted is lost. Until its batch
is confirmed, a filed job is visible through ``filed()`` (the records store reads it,
so its handle answers PENDING at once).
"""

from __future__ import annotations

import atexit
import logging
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence

from ...core.errors import TaskValidationError
from ...core.job import Job
from ...core.spec import RouteName
from ...policy.governor import never_busy

log = logging.getLogger("dispatcher.celery")

#: Jobs taken off the buffer per ``dispatch_many`` call.
BATCH = 2000
#: While the server is saturated, how long jobs gather before a batch (seconds).
BUSY_LINGER = 0.1

#: ``dispatch_many(jobs, countdown, outage)``: publishes (or spools) jobs, returns routes.
Publish = Callable[[Sequence[Job], "float | None", str], list[RouteName]]
#: Takes jobs the broker refused outright (too large): the route they were headed for.
Fallback = Callable[[Sequence[Job], "float | None"], object]


class SpillPublisher:
    """Publishes spilled-over jobs from a background thread, ``BATCH`` per call."""

    def __init__(self, publish: Publish, fallback: Fallback, capacity: int, *,
                 busy: Callable[[], bool] = never_busy) -> None:
        self._publish = publish
        #: Whether the web server is saturated (``policy.governor.ServerLoad.busy``).
        self._busy = busy
        self._load_unread = False
        self._fallback = fallback
        self.capacity = capacity
        #: (job, countdown, outage mode) in the order filed.
        self._queue: deque[tuple[Job, float | None, str]] = deque()
        #: Filed and not yet confirmed, by job id (dict get/set/pop are atomic).
        self._filed: dict[str, Job] = {}
        self._wake = threading.Event()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._pid = os.getpid()
        self._stopping = False
        self._exit_hook = False

    def put(self, job: Job, countdown: float | None, outage: str) -> bool:
        """File ``job`` for publishing; False (nothing filed) when the buffer is full or
        the publisher is stopping: the caller takes the outage path instead."""
        if self._pid != os.getpid():
            self._after_fork()
        if self._stopping or len(self._filed) >= self.capacity:
            return False
        self._filed[job.id] = job
        self._queue.append((job, countdown, outage))
        thread = self._thread
        if thread is None or not thread.is_alive():
            self._start()
        if not self._wake.is_set():  # a new thread waits for it too
            self._wake.set()
        return True

    def filed(self, task_id: str) -> Job | None:
        """The job if it is filed here and not yet confirmed by the broker."""
        return self._filed.get(task_id)

    def pending(self) -> int:
        return len(self._filed)

    def _start(self) -> None:
        with self._lock:
            if self._thread is not None and self._thread.is_alive():
                return
            self._thread = threading.Thread(target=self._run, name="dispatch-spill",
                                            daemon=True)
            self._thread.start()
            if not self._exit_hook:  # a plain script's exit must not drop filed jobs
                atexit.register(self.stop)
                self._exit_hook = True

    def _after_fork(self) -> None:
        """A forked child owns none of its parent's filed jobs (the parent publishes
        them), nor its thread."""
        self._pid = os.getpid()
        self._queue = deque()
        self._filed = {}
        self._wake = threading.Event()
        self._lock = threading.Lock()
        self._thread = None

    def _run(self) -> None:
        while True:
            self._wake.wait()
            if not self._stopping and self._reads_busy():
                time.sleep(BUSY_LINGER)  # the set event spares ``put`` waking us again
            self._wake.clear()
            self._publish_filed()
            if self._stopping:
                return

    def _reads_busy(self) -> bool:
        """The load signal; a failing one reads "not busy" (the jobs go out at once)
        rather than ending the thread, which would leave them filed until ``stop``."""
        try:
            return self._busy()
        except Exception:
            if not self._load_unread:  # once: a wake-up per batch must not flood the log
                self._load_unread = True
                log.exception("the server's load could not be read; publishing at once")
            return False

    def _publish_filed(self) -> None:
        """Publish everything filed so far, ``BATCH`` at a time, grouped by (countdown,
        outage mode) as ``dispatch_many`` takes one of each per call."""
        while self._queue:
            groups: dict[tuple[float | None, str], list[Job]] = {}
            for _ in range(min(BATCH, len(self._queue))):
                job, countdown, outage = self._queue.popleft()
                groups.setdefault((countdown, outage), []).append(job)
            for (countdown, outage), jobs in groups.items():
                try:
                    self._publish_group(jobs, countdown, outage)
                finally:
                    for job in jobs:
                        self._filed.pop(job.id, None)

    def _publish_group(self, jobs: list[Job], countdown: float | None, outage: str) -> None:
        try:
            self._publish(jobs, countdown, outage)
            return
        except TaskValidationError:  # one message is too large: the others still go
            pass
        except Exception:
            log.exception("could not publish %d spilled-over job(s); running them inline",
                          len(jobs))
            self._fallback(jobs, countdown)
            return
        refused = []
        for job in jobs:
            try:
                self._publish([job], countdown, outage)
            except TaskValidationError as exc:
                log.warning("spilled-over job %s cannot go to Celery (%s); running it inline",
                            job.id, exc)
                refused.append(job)
        if refused:
            self._fallback(refused, countdown)

    def stop(self, timeout: float = 10.0) -> None:
        """Publish (or spool) what is filed and stop the thread; later ``put`` calls
        are refused. Runs at exit too, so a stopping process loses nothing filed."""
        if self._pid != os.getpid():
            return
        self._stopping = True
        thread = self._thread
        if thread is not None and thread.is_alive():
            self._wake.set()
            thread.join(timeout)
        if self._queue:  # no thread (or it is stuck): publish from here
            self._publish_filed()
