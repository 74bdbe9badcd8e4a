"""Hybrid task dispatcher: one ``@task``, run in-process or on Celery/Redis by policy.

Public API, grouped:

- declaring: ``task``, ``Task``, ``RetryPolicy``
- dispatching: ``TaskHandle``, ``cancel``; inside a task, ``progress``, ``cancelled``
  and ``current_job``
- configuring: ``DispatcherSettings``, ``get_settings``, ``configure``
- errors: ``DispatchError`` and its subclasses
"""

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
