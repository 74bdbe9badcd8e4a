"""The inline route: a process-wide executor that runs jobs in this process.

It owns one event loop in a daemon thread: coroutine tasks run on that loop, sync
tasks in a bounded thread pool, so background work never takes the web server's
own threads or loop. At most ``DISPATCH_INLINE_CONCURRENCY`` jobs run at once; a
retry waits on a loop timer, holding neither a thread nor a slot.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import threading
from collections.abc import Sequence

from . import core, runtime
from .context import batch_var
from .errors import DispatchError, TaskValidationError
from .events import emit
from .job import Job
from .registry import get_task
from .routing import decide_route
from .settings import get_settings
from .spec import CallOptions

log = logging.getLogger("dispatcher.inline")


class InlineExecutor:
    """Runs chains of jobs with bounded concurrency; drains on shutdown."""

    def __init__(self, concurrency: int) -> None:
        self.concurrency = concurrency
        self._pool = concurrent.futures.ThreadPoolExecutor(
            max_workers=concurrency, thread_name_prefix="dispatch-inline"
        )
        self._cond = threading.Condition()
        self._outstanding: dict[str, Job] = {}
        self._running = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._semaphore: asyncio.Semaphore | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._closed = False
        #: Chains handed over by other threads, taken by the loop on its next wake-up.
        self._incoming: list[tuple[list[Job], float, concurrent.futures.Future[None]]] = []
        self._wake_pending = False

    # -- public API -------------------------------------------------------------------
    def submit(
        self, jobs: Sequence[Job], countdown: float | None = None
    ) -> concurrent.futures.Future[None]:
        """Run ``jobs`` one after another (after ``countdown`` seconds); thread-safe.

        The returned future completes when the last job of the chain has finished its
        attempt (retries continue on their own timers).
        """
        done: concurrent.futures.Future[None] = concurrent.futures.Future()
        with self._cond:
            if self._closed:
                raise DispatchError("the inline executor has been shut down")
            for job in jobs:
                self._outstanding[job.id] = job
            loop = self._ensure_loop()
            self._incoming.append((list(jobs), countdown or 0.0, done))
            wake, self._wake_pending = not self._wake_pending, True
        # One wake-up per burst, not per submit: waking the loop writes to a socket,
        # which hands the GIL to a background thread while the request thread waits.
        if wake:
            loop.call_soon_threadsafe(self._take_incoming)
        return done

    def outstanding(self) -> int:
        """Jobs accepted and not yet finished (running, queued or waiting to retry)."""
        with self._cond:
            return len(self._outstanding)

    def running(self) -> int:
        with self._cond:
            return self._running

    def waiting(self) -> int:
        """Jobs accepted and not running: queued for a slot, or waiting to retry."""
        with self._cond:
            return max(0, len(self._outstanding) - self._running)

    def wait_idle(self, timeout: float | None = None) -> bool:
        """Block until no job is outstanding; False if ``timeout`` passed first."""
        with self._cond:
            return self._cond.wait_for(lambda: not self._outstanding, timeout)

    def drain(self, grace: float) -> list[Job]:
        """Wait up to ``grace`` seconds for outstanding jobs, then record the rest as failed.

        Returns the jobs that did not finish. The executor stays usable.
        """
        if self.wait_idle(grace):
            runtime.status_store().flush(2.0)
            return []
        with self._cond:
            leftover = list(self._outstanding.values())
            self._outstanding.clear()
            self._cond.notify_all()
        # Running jobs are handed over too: servers end with their signal's default
        # action after shutdown (uvicorn re-raises SIGTERM), killing the pool threads
        # mid-job. A job that still finishes here then runs twice: at-least-once.
        stranded = hand_over([j for j in leftover if not j.pinned_inline])
        stranded += [j for j in leftover if j.pinned_inline]
        abandon(stranded, f"not finished within the shutdown grace of {grace:g}s", "shutdown")
        runtime.status_store().flush(2.0)
        return leftover

    def shutdown(self, grace: float) -> list[Job]:
        """Drain, then stop the loop thread and the pool; no new jobs are accepted."""
        with self._cond:
            self._closed = True
        leftover = self.drain(grace)
        loop = self._loop
        if loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(loop.stop)
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._pool.shutdown(wait=False, cancel_futures=True)
        return leftover

    # -- loop side --------------------------------------------------------------------
    def _ensure_loop(self) -> asyncio.AbstractEventLoop:
        if self._loop is not None and self._thread is not None and self._thread.is_alive():
            return self._loop
        loop = asyncio.new_event_loop()
        started = threading.Event()

        def run() -> None:
            asyncio.set_event_loop(loop)
            self._semaphore = asyncio.Semaphore(self.concurrency)
            loop.call_soon(started.set)
            loop.run_forever()
            # Stopped by shutdown(): cancel what is left so nothing dangles at exit.
            leftover = asyncio.all_tasks(loop)
            for pending in leftover:
                pending.cancel()
            loop.run_until_complete(asyncio.gather(*leftover, return_exceptions=True))
            loop.close()

        self._thread = threading.Thread(target=run, name="dispatch-inline-loop", daemon=True)
        self._loop = loop
        self._thread.start()
        started.wait()
        return loop

    def _spawn(self, coro: object) -> None:
        assert self._loop is not None
        task: asyncio.Task[None] = self._loop.create_task(coro)  # type: ignore[arg-type]
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _take_incoming(self) -> None:
        with self._cond:
            incoming, self._incoming = self._incoming, []
            self._wake_pending = False
        for jobs, delay, done in incoming:
            self._schedule_chain(jobs, delay, done)

    def _schedule_chain(
        self, jobs: list[Job], delay: float, done: concurrent.futures.Future[None]
    ) -> None:
        assert self._loop is not None
        if delay > 0:
            self._loop.call_later(delay, self._spawn, self._run_chain(jobs, done))
        else:
            self._spawn(self._run_chain(jobs, done))

    async def _run_chain(self, jobs: list[Job], done: concurrent.futures.Future[None]) -> None:
        try:
            for job in jobs:
                await self._run_one(job)
        finally:
            if not done.done():
                done.set_result(None)

    async def _run_one(self, job: Job) -> None:
        assert self._semaphore is not None
        with self._cond:
            if job.id not in self._outstanding:  # abandoned by a drain meanwhile
                return
        await self._semaphore.acquire()
        with self._cond:
            self._running += 1
        lingering = None
        try:
            outcome = await self._attempt(job)
            lingering = outcome.lingering
        except Exception:  # a bug here must not lose the job silently
            log.exception("inline executor failed while running task %s", job.id)
            self._finish(job)
            return
        finally:
            if lingering is None:
                self._release_slot()
            else:  # a timed-out thread still runs: its slot stays taken until it ends
                lingering.add_done_callback(lambda _: self._release_slot())
        if outcome.retry_delay is None:
            self._finish(job)
            return
        retry = job.next_attempt(outcome.retry_delay)
        with self._cond:
            if job.id not in self._outstanding:
                return
            self._outstanding[job.id] = retry
        assert self._loop is not None
        self._loop.call_later(outcome.retry_delay, self._spawn, self._run_one(retry))

    async def _attempt(self, job: Job) -> core.Outcome:
        # Every attempt decodes the JSON payload, exactly as a worker does: the task
        # gets fresh values (never the caller's objects) and the same types on both routes.
        try:
            values = get_task(job.spec.name).validator.decode(job.payload)
        except TaskValidationError as exc:
            return core.reject(job, exc)
        return await core.run_async(job, values, self._pool)

    def _release_slot(self) -> None:
        assert self._semaphore is not None
        with self._cond:
            self._running -= 1
        self._semaphore.release()

    def _finish(self, job: Job) -> None:
        with self._cond:
            self._outstanding.pop(job.id, None)
            self._cond.notify_all()


def dispatch_inline(job: Job, countdown: float | None, reason: str | None = None) -> None:
    """Record and announce ``job``, then attach it to the current request or run it."""
    core.record(job, "PENDING")
    emit("task.dispatched", job, reason=reason)
    batch = batch_var.get()
    if countdown is None and batch is not None and batch.add(job):
        return
    runtime.inline_executor().submit([job], countdown)


def hand_over(jobs: Sequence[Job]) -> list[Job]:
    """Give unfinished inline jobs to the Celery route (or its spool) instead of dropping
    them; returns those that could not be handed over (no broker configured).

    A job that was mid-run may then run twice: at-least-once, never lost.
    """
    settings = get_settings()
    if settings.broker_url is None:
        return list(jobs)
    stranded = []
    route = runtime.celery_route()
    for job in jobs:
        job.route = "celery"
        job.queue = decide_route(job.spec, CallOptions(route="celery"), settings).queue
        try:
            route.dispatch(job, None, outage="spool")
        except Exception as exc:
            log.error("could not hand over inline task %s: %s", job.id, exc)
            stranded.append(job)
    if len(stranded) < len(jobs):
        log.warning("handed %d unfinished inline job(s) to Celery", len(jobs) - len(stranded))
    return stranded


def abandon(jobs: Sequence[Job], message: str, reason: str) -> None:
    """Record jobs that will never run as failed, loudly: nothing is dropped silently."""
    error = DispatchError(message)
    for job in jobs:
        fields = {"type": "DispatchError", "message": message}
        core.record(job, "FAILURE", error=fields, reason=reason)
        core.dead_letter(job, fields, reason)
        emit("task.failed", job, level=logging.ERROR, error=error, reason=reason)
