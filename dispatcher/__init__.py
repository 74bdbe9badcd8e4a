"""Hybrid task dispatcher: one ``@task``, run in-process or on Celery/Redis by policy.

Public API, grouped:

- declaring: ``task``, ``Task``, ``RetryPolicy``
- dispatching: ``TaskHandle``; inside a task, ``progress``
- configuring: ``DispatcherSettings``, ``get_settings``, ``configure``
- errors: ``DispatchError`` and its subclasses
"""

from .errors import (
    BrokerUnavailable,
    ConfigurationError,
    DispatchError,
    TaskDefinitionError,
    TaskFailed,
    TaskTimeout,
    TaskValidationError,
    UnknownTaskError,
)
from .handle import TaskHandle
from .progress import progress
from .retry import RetryPolicy
from .settings import DispatcherSettings, configure, get_settings
from .task import Task, task

__all__ = [
    "BrokerUnavailable",
    "ConfigurationError",
    "DispatchError",
    "DispatcherSettings",
    "RetryPolicy",
    "Task",
    "TaskDefinitionError",
    "TaskFailed",
    "TaskHandle",
    "TaskTimeout",
    "TaskValidationError",
    "UnknownTaskError",
    "configure",
    "get_settings",
    "progress",
    "task",
]
