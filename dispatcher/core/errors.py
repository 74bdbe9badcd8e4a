"""Errors raised by the dispatcher: one root, drawn once.

DispatchError
 ├── TaskDefinitionError   bad ``@task`` options or a duplicate task name (also TypeError)
 ├── TaskValidationError   bad arguments for ``.dispatch()`` (also ValueError)
 ├── UnknownTaskError      a task name that is not registered (also LookupError)
 ├── BrokerUnavailable     the broker cannot take the job in time
 ├── ConfigurationError    settings that contradict each other
 ├── TaskTimeout           one run of a task exceeded its ``timeout`` (also TimeoutError)
 ├── TaskFailed            the job ended in FAILURE (raised by ``TaskHandle.get``)
 ├── TaskCancelled         the job was cancelled (``progress()`` in it, ``TaskHandle.get``)
 └── UnknownJobError       no job has this id (``dispatcher.cancel``; also LookupError)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


class DispatchError(Exception):
    """Base class of every error this library raises on purpose."""


class TaskDefinitionError(DispatchError, TypeError):
    """A ``@task`` declaration is invalid; raised at decoration time."""


class TaskValidationError(DispatchError, ValueError):
    """Dispatch arguments do not fit the task's signature.

    ``errors`` lists ``{"field": ..., "message": ...}`` items; ``field`` is the first
    offending parameter name so callers can point at it.
    """

    def __init__(self, task_name: str, errors: Sequence[dict[str, Any]]) -> None:
        self.task_name = task_name
        self.errors = [dict(e) for e in errors]
        self.field: str | None = self.errors[0]["field"] if self.errors else None
        detail = "; ".join(f"{e['field']}: {e['message']}" for e in self.errors)
        super().__init__(f"invalid arguments for task {task_name!r}: {detail}")


class UnknownTaskError(DispatchError, LookupError):
    """No task is registered under this name (only registered tasks can run)."""

    def __init__(self, name: str) -> None:
        self.name = name
        super().__init__(f"no task named {name!r} is registered")


class BrokerUnavailable(DispatchError):
    """The Celery broker could not accept the job within the publish timeout."""


class ConfigurationError(DispatchError):
    """Settings are missing or contradict each other."""


class TaskTimeout(DispatchError, TimeoutError):
    """A run of the task took longer than its ``timeout``; counts as a failure."""

    def __init__(self, task_name: str, timeout: float) -> None:
        self.task_name = task_name
        self.timeout = timeout
        super().__init__(f"task {task_name!r} exceeded its timeout of {timeout:g}s")


class TaskFailed(DispatchError):
    """The job ended in FAILURE; carries the task's error type and message."""

    def __init__(self, task_id: str, error_type: str, error_message: str) -> None:
        self.task_id = task_id
        self.error_type = error_type
        self.error_message = error_message
        super().__init__(f"task {task_id} failed: {error_type}: {error_message}")

    def __reduce__(self) -> tuple[type[TaskFailed], tuple[str, str, str]]:
        # Pickles (Celery's prefork pool sends it to the parent process) with all three.
        return type(self), (self.task_id, self.error_type, self.error_message)


class TaskCancelled(DispatchError):
    """The job was cancelled: raised inside it by ``progress()`` once it is told (a task
    may raise it too), and by ``TaskHandle.get`` for a job that ended ``REVOKED``."""

    def __init__(self, task_id: str | None = None) -> None:
        self.task_id = task_id
        super().__init__("the job was cancelled" if task_id is None
                         else f"task {task_id} was cancelled")


class UnknownJobError(DispatchError, LookupError):
    """No job with this id is known to the record store."""

    def __init__(self, task_id: str) -> None:
        self.task_id = task_id
        super().__init__(f"no task with id {task_id!r}")
