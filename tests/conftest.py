"""Shared test configuration: every test starts from settings without a broker."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

for _name in list(os.environ):
    if _name.startswith("DISPATCH_") or _name == "REDIS_URL":
        del os.environ[_name]


@pytest.fixture(autouse=True)
def _fresh_dispatcher_settings() -> Iterator[None]:
    """Each test gets default settings (no broker) unless it configures its own."""
    from dispatcher import DispatcherSettings, configure

    configure(DispatcherSettings(broker_url=None, _env_file=None))  # type: ignore[call-arg]
    yield
    configure(DispatcherSettings(broker_url=None, _env_file=None))  # type: ignore[call-arg]
