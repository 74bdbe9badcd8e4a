"""Isolation for the unit tests: no broker, no environment leaks, no leftover tasks.

Every unit test starts from broker-less settings (so the in-memory status store and
the inline executor are used), with every ``DISPATCH_*``/``REDIS_URL``/``BROKER_URL``
variable removed, and ends with the process-wide settings, services and task registry
as they were before it.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from dispatcher import DispatcherSettings, configure
from dispatcher.core import registry
from dispatcher.core import settings as settings_module
from dispatcher.runtime import container

from .helpers import ListHandler, unit_settings

_LEAKY = {"REDIS_URL", "BROKER_URL"}


@pytest.fixture(autouse=True)
def _isolated_dispatcher(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    for key in list(os.environ):
        if key.upper().startswith("DISPATCH_") or key.upper() in _LEAKY:
            monkeypatch.delenv(key)
    # monkeypatch puts the previous process-wide settings back after our teardown.
    monkeypatch.setattr(settings_module, "_current", settings_module._current)
    configure(unit_settings())
    before = {t.spec.name for t in registry.all_tasks()}
    yield
    container.reset()  # stop this test's inline executor, forget its in-memory store
    for t in registry.all_tasks():
        if t.spec.name not in before:
            registry.unregister(t.spec.name)


@pytest.fixture
def use_settings() -> Callable[..., DispatcherSettings]:
    """``use_settings(inline_concurrency=2, ...)``: configure broker-less settings."""

    def _use(**fields: Any) -> DispatcherSettings:
        return configure(unit_settings(**fields))

    return _use


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
