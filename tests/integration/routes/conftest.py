"""Fixtures shared by the tests of the direct consumer's scripts."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import redis

from dispatcher import DispatcherSettings, configure
from dispatcher.store.embedded import EmbeddedRedis
from dispatcher.store.scripts import TAKE


@pytest.fixture
def client(redis_server: EmbeddedRedis) -> Iterator[redis.Redis]:
    """A client of the suite's Redis, the dispatcher configured for it and the take
    script loaded (a module may define its own ``client`` instead)."""
    configure(DispatcherSettings(broker_url=redis_server.url, _env_file=None))  # type: ignore[call-arg]
    connection = redis.Redis.from_url(redis_server.url)
    connection.script_load(TAKE.source)
    yield connection
    connection.close()
