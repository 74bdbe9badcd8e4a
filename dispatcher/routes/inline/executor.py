"""The inline route's executor: runs jobs in this process, after the response.

``DISPATCH_INLINE_CONCURRENCY`` worker threads are its slots: each takes a chain of
jobs and runs every attempt start to end in itself (decode, records, events, the task)
with no hop through another thread, so an inline job costs the web server's GIL as
little as it can. Sync tasks run in the worker thread; coroutine tasks on one shared
event loop in a daemon thread, while their worker thread waits (the slot stays taken).
Countdowns, retry delays and jobs over a limit wait on that loop's timers.
"""

from __future__ import annotations

import collections
import concurrent.futures
import logging
import queue
import threading
import time
from collections.abc import Callable, Sequence
from typing import Literal, overload

from ...core.errors import DispatchError
from ...core.execution import Execution, Outcome
from ...core.job import Job
from ...core.limits import SLOT_RECHECK, Admission, admit, release
from ...policy.governor import Governor
from .accepted import Accepted
from .attempt import run_attempt
from .chain import Chain, chain_of, due_at, links
from .loop import BackgroundLoop
from .slot_waits import SlotWaits

log = logging.getLogger("dispatcher.inline")


class InlineExecutor:
    """Runs chains of jobs with bounded concurrency; drains on shutdown."""

    def __init__(self, concurrency: int, busy_share: float = 1.0, max_hold: float = 0.0, *,
                 execution: Execution, busy: Callable[[], bool] | None = None,
                 on_leftover: Callable[[list[Job], float], None] | None = None) -> None:
        self.concurrency = concurrency
        self.execution = execution
        #: Told of the jobs a drain gave up on (the route hands them over or records them).
        self._on_leftover = on_leftover
        self.governor = (Governor(busy_share, max_hold) if busy is None
                         else Governor(busy_share, max_hold, busy))
        # A plain lock (no Python-level Condition on the hot path); the condition
        # shares it and is only notified when the last outstanding job finishes.
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)
        #: Jobs accepted and not finished, and what those waiting are expected to take.
        self.accepted = Accepted(self.governor)
        #: Chains waiting for a slot, oldest first.
        self._ready: collections.deque[Chain] = collections.deque()
        #: Wakes the thread waiting for work; rung only when the queue was empty.
        self._doorbell: queue.SimpleQueue[bool] = queue.SimpleQueue()
        self._listening = False
        #: One thread at a time takes the next chain (the others wait on this lock).
        self._pick = threading.Lock()
        self._threads: list[threading.Thread] = []
        self._idle_threads = 0
        self._running = 0
        #: Coroutine tasks, countdowns and retry delays run on it (started on first use).
        self._loop = BackgroundLoop("dispatch-inline-loop")
        #: Chains whose first job waits for a rate limit or a slot.
        self._slot_waits = SlotWaits(self._later, self._enqueue)
        self._closed = False

    @overload
    def submit(self, jobs: Sequence[Job], countdown: float | None = None) -> None: ...

    @overload
    def submit(self, jobs: Sequence[Job], countdown: float | None = None, *,
               tracked: Literal[True]) -> concurrent.futures.Future[None]: ...

    def submit(self, jobs: Sequence[Job], countdown: float | None = None, *,
               tracked: bool = False) -> concurrent.futures.Future[None] | None:
        """Run ``jobs`` one after another (after ``countdown`` seconds); thread-safe.
        With ``tracked=True`` it returns a future that completes when the last job of
        the chain has finished its attempt (retries continue on their own timers).
        Untracked chains allocate no future: jobs held back during a burst are many,
        and each future is several objects for the garbage collector to walk."""
        done = concurrent.futures.Future[None]() if tracked else None
        entry, ring = chain_of(jobs, done), False
        with self._lock:  # one critical section on the request path
            if self._closed:
                raise DispatchError("the inline executor has been shut down")
            for job in jobs:
                self.accepted.add(job)
            if not countdown:
                ring = self._append(entry)
        if countdown:
            self._later(countdown, self._enqueue, entry)
        elif ring:
            self._doorbell.put(True)
        return done

    def outstanding(self) -> int:
        """Jobs accepted and not yet finished (running, queued or waiting to retry)."""
        return len(self.accepted.jobs)

    def running(self) -> int:
        return self._running

    def waiting(self) -> int:
        """Jobs accepted and not running: queued for a slot, or waiting to retry."""
        return max(0, len(self.accepted.jobs) - self._running)

    def forget(self, job_id: str) -> bool:
        """Drop a job that waits for a countdown or a retry delay (it was cancelled): its
        timer finds it gone, and it no longer counts as outstanding. (One waiting for a
        limit meets its cancel mark when it asks again.)"""
        job = self.accepted.jobs.get(job_id)
        if job is None or job.due_at <= time.time():
            return False  # unknown here, or due: it meets its cancel mark when it starts
        self._finish(job)
        return True

    def wait_idle(self, timeout: float | None = None) -> bool:
        """Block until no job is outstanding; False if ``timeout`` passed first."""
        with self._idle:
            return self._idle.wait_for(lambda: not self.accepted.jobs, timeout)

    def drain(self, grace: float) -> list[Job]:
        """Wait up to ``grace`` seconds for outstanding jobs, then record the rest as failed.
        Jobs on a timer not due within ``grace`` (a countdown, a retry delay) are given
        up at once: waiting for them would only hold the shutdown up. Returns the jobs
        that did not finish. The executor stays usable."""
        due_by = time.time() + grace
        with self._idle:  # their timers find them gone and do nothing
            later = [j for j in list(self.accepted.jobs.values()) if j.due_at > due_by]
            for job in later:
                self.accepted.finished(job.id)
        later = [j for j in later if not self.execution.cancellations.is_cancelled(j.id)]
        if later and self._on_leftover is not None:
            self._on_leftover(later, grace)
        if self.wait_idle(grace):
            self.execution.records.flush(2.0)
            return later
        with self._idle:
            leftover = self.accepted.clear()
            self._idle.notify_all()
        if self._on_leftover is not None:
            self._on_leftover(leftover, grace)
        self.execution.records.flush(2.0)
        return later + leftover

    def shutdown(self, grace: float) -> list[Job]:
        """Drain, then stop the worker threads and the loop; no new jobs are accepted."""
        with self._lock:
            self._closed = True
        leftover = self.drain(grace)
        with self._lock:
            self._listening = False
        for _ in self._threads:
            self._doorbell.put(False)
        self._loop.stop(timeout=5)
        return leftover

    def _enqueue(self, chain: Chain) -> None:
        """Queue a chain; wake a thread only if none is already on its way to it.

        While the server is busy the governor holds jobs back and the queue is not
        empty, so a dispatch costs an append: no thread wakes up on the request's time.
        """
        with self._lock:
            ring = self._append(chain)
        if ring:
            self._doorbell.put(True)

    def _append(self, chain: Chain) -> bool:
        """Queue ``chain`` (callers hold ``_lock``); True if a thread must be woken."""
        self._ready.append(chain)
        ring, self._listening = self._listening, False
        if not self._threads:
            self._start_thread()
        return ring

    def _start_thread(self) -> None:
        """Add a worker thread (callers hold ``_lock``)."""
        thread = threading.Thread(target=self._work, daemon=True,
                                  name=f"dispatch-inline-{len(self._threads)}")
        self._threads.append(thread)
        self._idle_threads += 1
        thread.start()

    def _later(self, delay: float, call: Callable[..., None], *args: object) -> None:
        """``call(*args)`` after ``delay`` seconds, on the loop's timer."""
        loop = self._loop.get()
        loop.call_soon_threadsafe(loop.call_later, delay, call, *args)

    def _next_chain(self) -> Chain | None:
        """Wait for a chain and for the governor's go; None at shutdown."""
        with self._pick:
            while True:
                with self._lock:
                    if self._closed and not self._ready and not self.accepted.jobs:
                        return None
                    if self._ready:
                        # Only this thread takes chains: the head stays while it waits.
                        head = self._ready[0]
                        break
                    self._listening = True
                if not self._doorbell.get():
                    return None
            # Requests first while the server is saturated.
            self.governor.wait_turn(due_at(head))
            with self._lock:
                chain = self._ready.popleft()
                self._idle_threads -= 1
                # Someone must wait for the next chain while this one runs.
                if self._idle_threads == 0 and len(self._threads) < self.concurrency:
                    self._start_thread()
            return chain

    def _work(self) -> None:
        while True:
            chain = self._next_chain()
            if chain is None:  # shutdown
                return
            jobs, done = links(chain)
            try:
                for index, job in enumerate(jobs):
                    refused = self._run_one(job, paced=index > 0)
                    if refused is not None:  # over a limit: the rest of the chain waits too
                        self._slot_waits.defer(refused, chain_of(jobs[index:], done))
                        done = None  # set once the rest of the chain has run
                        break
            finally:
                if done is not None and not done.done():
                    done.set_result(None)
                with self._lock:
                    self._idle_threads += 1

    def _run_one(self, job: Job, *, paced: bool) -> Admission | None:
        """Run one attempt of ``job``; the limiter's refusal if a limit refused it."""
        if paced:  # the chain's first job waited for its turn when it was picked
            self.governor.wait_turn(job.due_at)
        admission = self._admit(job)
        if admission is None or not admission.granted:
            return admission
        with self._lock:
            self._running += 1
            self.accepted.started(job)
        cpu, began = time.thread_time(), time.perf_counter()
        outcome: Outcome | None = None
        try:
            outcome = run_attempt(self.execution, self._loop, job, admission.at)
        except BaseException:  # a bug here must not lose the job silently
            log.exception("inline executor failed while running task %s", job.id)
        with self._lock:  # in one step: a job that ended is neither running nor waiting
            self._running -= 1
            if outcome is None or outcome.retry_delay is None:
                self._finish(job, locked=True)
        self.governor.spent(time.thread_time() - cpu, time.perf_counter() - began,
                            job.spec.name)
        if outcome is not None and outcome.retry_delay is not None:
            retry = job.next_attempt(outcome.retry_delay)
            with self._lock:
                kept = job.id in self.accepted.jobs  # not abandoned by a drain meanwhile
                if kept:
                    self.accepted.add(retry)
            if kept:
                self._later(outcome.retry_delay, self._enqueue, retry)
        if outcome is not None and outcome.lingering is not None:  # a timed-out call
            # still runs (Python cannot stop a thread): it keeps both its slots, so hung
            # tasks cannot multiply.
            with self._lock:
                self._running += 1
            try:
                concurrent.futures.wait([outcome.lingering])
            finally:
                with self._lock:
                    self._running -= 1
        release(self.execution.limits, job, admission)
        self._slot_waits.wake(admission.slot)
        return None

    def _admit(self, job: Job) -> Admission | None:
        """The limiter's answer for ``job``; None if a drain abandoned it or if it was
        cancelled (it never starts)."""
        if job.id not in self.accepted.jobs:
            return None
        if self.execution.cancellations.is_cancelled(job.id):
            self.execution.skip_cancelled(job)
            self._finish(job)
            return None
        return admit(self.execution.limits, job, slot_recheck=SLOT_RECHECK)

    def _finish(self, job: Job, *, locked: bool = False) -> None:
        """``job`` ended: no longer outstanding (``locked``: the caller holds the lock)."""
        if not locked:
            with self._lock:
                return self._finish(job, locked=True)
        self.accepted.finished(job.id)
        if not self.accepted.jobs:
            self._idle.notify_all()

