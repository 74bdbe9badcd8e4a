"""Isolation for the unit tests: no broker, no environment leaks, no leftover tasks.

Every unit test starts from broker-less settings (so the in-memory status store and
the inline executor are used), with every ``DISPATCH_*``/``REDIS_URL``/``BROKER_URL``
variable removed, and ends with the process-wide settings, services and task registry
as they were before it.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from dispatcher import DispatcherSettings, configure, runtime
from dispatcher import registry
from dispatcher import settings as settings_module

_LEAKY = {"REDIS_URL", "BROKER_URL"}


def unit_settings(**fields: Any) -> DispatcherSettings:
    """Settings that can never reach a broker and ignore any ``.env`` file."""
    fields.setdefault("broker_url", None)
    fields.setdefault("result_backend_url", None)
    return DispatcherSettings(_env_file=None, **fields)  # type: ignore[call-arg]


@pytest.fixture(autouse=True)
def _isolated_dispatcher(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    for key in list(os.environ):
        if key.upper().startswith("DISPATCH_") or key.upper() in _LEAKY:
            monkeypatch.delenv(key)
    # monkeypatch puts the previous process-wide settings back after our teardown.
    monkeypatch.setattr(settings_module, "_current", settings_module._current)
    configure(unit_settings())
    before = {t.name for t in registry.all_tasks()}
    yield
    runtime.reset()  # stop this test's inline executor, forget its in-memory store
    for t in registry.all_tasks():
        if t.name not in before:
            registry.unregister(t.name)


@pytest.fixture
def use_settings() -> Callable[..., DispatcherSettings]:
    """``use_settings(inline_concurrency=2, ...)``: configure broker-less settings."""

    def _use(**fields: Any) -> DispatcherSettings:
        return configure(unit_settings(**fields))

    return _use


class ListHandler(logging.Handler):
    """Keeps every record it sees (thread-safe)."""

    def __init__(self) -> None:
        super().__init__(level=logging.DEBUG)
        self.records: list[logging.LogRecord] = []
        self._records_lock = threading.Lock()

    def emit(self, record: logging.LogRecord) -> None:
        with self._records_lock:
            self.records.append(record)

    def events(self, task_id: str | None = None) -> list[logging.LogRecord]:
        """Records carrying dispatcher event fields, optionally for one job only."""
        with self._records_lock:
            records = list(self.records)
        return [
            r
            for r in records
            if isinstance(getattr(r, "dispatch", None), dict)
            and (task_id is None or r.dispatch["task_id"] == task_id)
        ]


@pytest.fixture
def dispatcher_log() -> Iterator[ListHandler]:
    """Our own handler on the ``dispatcher`` logger (which may not propagate)."""
    logger = logging.getLogger("dispatcher")
    handler = ListHandler()
    old_level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    yield handler
    logger.removeHandler(handler)
    logger.setLevel(old_level)
