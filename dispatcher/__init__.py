"""Hybrid task dispatcher: one ``@task``, run in-process or on Celery/Redis by policy.

Public API, grouped:

- declaring: ``task``, ``Task``, ``RetryPolicy``
- dispatching: ``TaskHandle``, ``cancel``; inside a task, ``progress``, ``cancelled``
  and ``current_job``
- configuring: ``DispatcherSettings``, ``get_settings``, ``configure``
- errors: ``DispatchError`` and its subclasses
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .core.cancellation import cancelled
    from .core.context import JobInfo, current_job
    from .core.errors import (
        BrokerUnavailable,
        ConfigurationError,
        DispatchError,
        TaskCancelled,
        TaskDefinitionError,
        TaskFailed,
        TaskTimeout,
        TaskValidationError,
        UnknownJobError,
        UnknownTaskError,
    )
    from .core.progress import progress
    from .core.retry import RetryPolicy
    from .core.settings import DispatcherSettings, get_settings
    from .runtime.cancel import cancel
    from .runtime.container import configure
    from .runtime.decorator import task
    from .runtime.handle import TaskHandle
    from .runtime.task import Task

#: Where each public name lives. They are loaded on first use, so that a process that
#: needs little of the package (the worker's supervisor, which starts its children
#: before anything else) does not pay for Celery, redis-py and pydantic first.
_HOMES = {
    "cancelled": ".core.cancellation",
    "JobInfo": ".core.context", "current_job": ".core.context",
    **dict.fromkeys(["BrokerUnavailable", "ConfigurationError", "DispatchError",
                     "TaskCancelled", "TaskDefinitionError", "TaskFailed", "TaskTimeout",
                     "TaskValidationError", "UnknownJobError", "UnknownTaskError"],
                    ".core.errors"),
    "progress": ".core.progress",
    "RetryPolicy": ".core.retry",
    "DispatcherSettings": ".core.settings", "get_settings": ".core.settings",
    "cancel": ".runtime.cancel",
    "configure": ".runtime.container",
    "task": ".runtime.decorator",
    "TaskHandle": ".runtime.handle",
    "Task": ".runtime.task",
}


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(home, __name__), name)
    globals()[name] = value  # found here directly from now on
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_HOMES])


__all__ = [
    "BrokerUnavailable",
    "ConfigurationError",
    "DispatchError",
    "DispatcherSettings",
    "JobInfo",
    "RetryPolicy",
    "Task",
    "TaskCancelled",
    "TaskDefinitionError",
    "TaskFailed",
    "TaskHandle",
    "TaskTimeout",
    "TaskValidationError",
    "UnknownJobError",
    "UnknownTaskError",
    "cancel",
    "cancelled",
    "configure",
    "current_job",
    "get_settings",
    "progress",
    "task",
]
