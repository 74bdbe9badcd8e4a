"""The registry of tasks: only what is registered here can be dispatched or run."""

from __future__ import annotations

import importlib
import threading
from collections.abc import Iterable

from .errors import ConfigurationError, TaskDefinitionError, UnknownTaskError
from .ports import RegisteredTask
from .settings import get_settings

_lock = threading.Lock()
_tasks: dict[str, RegisteredTask] = {}


def _origin(task: RegisteredTask) -> tuple[str, str, str, int]:
    fn = task.spec.fn
    code = getattr(fn, "__code__", None)
    return (
        fn.__module__,
        fn.__qualname__,
        getattr(code, "co_filename", ""),
        getattr(code, "co_firstlineno", 0),
    )


def register(task: RegisteredTask) -> None:
    """Add ``task``; a second, different function under the same name is an error.

    Re-running the same definition (a module imported again) replaces the entry.
    """
    name = task.spec.name
    with _lock:
        existing = _tasks.get(name)
        if existing is not None and _origin(existing) != _origin(task):
            module, qualname, filename, line = _origin(existing)
            raise TaskDefinitionError(
                f"duplicate task name {name!r}: already registered by "
                f"{module}.{qualname} ({filename}:{line}); pass name=... to tell them apart"
            )
        _tasks[name] = task


def unregister(name: str) -> None:
    with _lock:
        _tasks.pop(name, None)


def get_task(name: str) -> RegisteredTask:
    """The task registered as ``name``; ``UnknownTaskError`` otherwise."""
    try:
        return _tasks[name]
    except KeyError:
        raise UnknownTaskError(name) from None


def secret_names(task_name: str) -> set[str]:
    """Argument names of ``task_name`` never shown: its ``SecretStr`` parameters plus
    ``DISPATCH_REDACT``; only the latter for a task this process does not know."""
    task = _tasks.get(task_name)
    names = set(get_settings().redact)
    return names | task.validator.secret_names if task is not None else names


def all_tasks() -> list[RegisteredTask]:
    with _lock:
        return sorted(_tasks.values(), key=lambda t: t.spec.name)


def import_task_modules(modules: Iterable[str]) -> None:
    """Import each module so its ``@task`` functions register themselves."""
    for module in modules:
        try:
            importlib.import_module(module)
        except ModuleNotFoundError as exc:
            if exc.name is not None and module.startswith(exc.name):
                raise ConfigurationError(
                    f"DISPATCH_TASK_MODULES names {module!r}, which cannot be imported: {exc}"
                ) from None
            raise
