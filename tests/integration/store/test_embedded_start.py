"""The embedded server never outlives an interrupted start (Ctrl-C while it boots)."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest
import redis

from dispatcher.store.embedded import EmbeddedRedis, free_port


def test_ctrl_c_while_starting_stops_the_server(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    server = EmbeddedRedis(port=free_port(), data_dir=str(tmp_path))
    started: list[subprocess.Popen[bytes]] = []

    def interrupted(self: redis.Redis, *args: Any, **kwargs: Any) -> Any:
        assert server.process is not None  # the real server process is running by now
        started.append(server.process)
        raise KeyboardInterrupt

    monkeypatch.setattr(redis.Redis, "info", interrupted)
    with pytest.raises(KeyboardInterrupt):
        server.start()
    assert started and started[0].poll() is not None  # stopped and reaped, not left behind
    assert server.process is None
