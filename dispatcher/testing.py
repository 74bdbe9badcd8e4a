"""Helpers for users' own tests; they keep the real code path.

Tests written for plain ``BackgroundTasks`` read a side effect right after
``TestClient.post`` returns. With the dispatcher, inline jobs run after the response
on the executor, so either call ``wait_for_inline_jobs()`` before reading, or set
``DISPATCH_INLINE_HOLD_REQUEST=true`` to keep inline jobs inside the request cycle.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from . import runtime
from .handle import TaskHandle
from .task import dispatch_listeners


def wait_for_inline_jobs(timeout: float = 10.0) -> None:
    """Block until every inline job of this process has finished (retries included).

    Raises ``TimeoutError`` naming how many are still outstanding.
    """
    executor = runtime.inline_executor()
    if not executor.wait_idle(timeout):
        raise TimeoutError(
            f"{executor.outstanding()} inline job(s) still outstanding after {timeout}s"
        )


@contextmanager
def capture_dispatches() -> Iterator[list[TaskHandle]]:
    """Collect the handles of every job dispatched inside the ``with`` block.

    The jobs are still validated, routed and run as usual.
    """
    captured: list[TaskHandle] = []
    dispatch_listeners.append(captured.append)
    try:
        yield captured
    finally:
        dispatch_listeners.remove(captured.append)
