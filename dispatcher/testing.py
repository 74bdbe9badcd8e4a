"""Helpers for users' own tests; they keep the real code path.

Tests written for plain ``BackgroundTasks`` read a side effect right after
``TestClient.post`` returns. With the dispatcher, inline jobs run after the response
on the executor, so either call ``wait_for_inline_jobs()`` before reading, or set
``inline_hold_request=True`` (``isolated_settings(inline_hold_request=True)``) to keep
inline jobs inside the request cycle. A task's exception is recorded (FAILURE,
``handle.get()`` raises ``TaskFailed``); it never reaches the test client.

``isolated_settings()`` keeps a developer's environment out of the tests: without it a
``.env`` file or ``REDIS_URL`` would move them onto a real Redis.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from .core.settings import DispatcherSettings
from .runtime.container import configure, current
from .runtime.container import reset as _reset
from .runtime.handle import TaskHandle
from .runtime.task import dispatch_listeners

__all__ = [
    "capture_dispatches",
    "isolated_settings",
    "reset",
    "wait_for_inline_jobs",
]


def wait_for_inline_jobs(timeout: float = 10.0) -> None:
    """Block until every inline job of this process has finished (retries included).

    Raises ``TimeoutError`` naming how many are still outstanding.
    """
    executor = current().inline.executor
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


def isolated_settings(**overrides: Any) -> DispatcherSettings:
    """Use the default settings plus ``overrides`` only, ignoring ``DISPATCH_*``
    variables, ``REDIS_URL`` and ``.env``, and reset every process-wide object.

    Call it in a fixture: ``dispatcher.testing.isolated_settings(inline_hold_request=True)``.
    """
    defaults = DispatcherSettings.model_construct()
    values = {name: getattr(defaults, name) for name in DispatcherSettings.model_fields}
    values.update(overrides)
    return configure(DispatcherSettings.model_validate(values))


def reset() -> None:
    """Forget every process-wide object (routes, stores, executor, caches); the next
    dispatch builds them again from the current settings."""
    _reset()
