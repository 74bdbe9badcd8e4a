"""How the execution core calls a task function: with a timeout in a thread of its own,
and which exceptions out of it are not the task's failures."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextvars
import threading
from typing import Any

from .job import Job


def must_propagate(error: BaseException, job: Job) -> bool:
    """Interrupts, a worker process being terminated, and the cancellation of *our*
    asyncio task are not failures of the task: the job is redelivered instead."""
    if isinstance(error, KeyboardInterrupt):
        return True
    if isinstance(error, SystemExit) and job.route == "celery":
        return True  # Celery terminating the pool process (e.g. on connection loss)
    if isinstance(error, asyncio.CancelledError):
        try:
            current = asyncio.current_task()
        except RuntimeError:
            return False
        return current is not None and current.cancelling() > 0
    return False


def call_with_timeout(
    fn: Any, values: dict[str, Any], timeout: float
) -> tuple[Any, concurrent.futures.Future[Any] | None]:
    """Call ``fn`` in a fresh daemon thread and wait at most ``timeout`` seconds:
    ``(result, None)``, or ``(None, the still running call)`` once the time is up.

    The clock starts when the call does. Python cannot stop the thread: a timed-out
    call finishes in the background, and being a daemon it never delays an exit.
    """
    future: concurrent.futures.Future[Any] = concurrent.futures.Future()

    def call() -> None:
        try:
            future.set_result(fn(**values))
        except BaseException as exc:
            future.set_exception(exc)

    context = contextvars.copy_context()  # progress() in the thread finds its attempt
    threading.Thread(target=context.run, args=(call,), name="dispatch-timed-call",
                     daemon=True).start()
    try:
        return future.result(timeout=timeout), None
    except concurrent.futures.TimeoutError:
        if future.done():
            raise
        return None, future
