"""``dispatcher redis``: the embedded server for a user's own app during development,
on a fixed port, its data kept across restarts."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import redis

from dispatcher.store.embedded import free_port

ROOT = Path(__file__).resolve().parents[3]


def _start(port: int, folder: Path, log: Path) -> subprocess.Popen[bytes]:
    """Start the command and wait for *its* announcement (the log is appended to)."""
    announced = log.read_text().count("embedded Redis on") if log.exists() else 0
    out = log.open("ab")
    process = subprocess.Popen(
        [sys.executable, "-m", "dispatcher", "redis", "--port", str(port), "--dir", str(folder)],
        cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    out.close()
    deadline = time.monotonic() + 60
    while log.read_text().count("embedded Redis on") == announced:
        assert process.poll() is None, log.read_text()
        assert time.monotonic() < deadline, log.read_text()
        time.sleep(0.05)
    return process


def _stop(process: subprocess.Popen[bytes], port: int) -> int:
    """Ctrl-C; the command must take its server down with it (never leave one behind)."""
    process.send_signal(signal.SIGINT)
    code = process.wait(timeout=30)
    with pytest.raises(redis.ConnectionError):
        redis.Redis(host="127.0.0.1", port=port, socket_timeout=5).ping()
    return code


def test_dispatcher_redis_keeps_its_data_across_restarts(tmp_path: Path) -> None:
    port, folder, log = free_port(), tmp_path / "redis-data", tmp_path / "redis.log"
    server = _start(port, folder, log)
    try:
        client = redis.Redis(host="127.0.0.1", port=port, socket_timeout=5)
        client.set("kept", "yes")
        assert f"redis://127.0.0.1:{port}/0" in log.read_text()
    finally:
        assert _stop(server, port) == 0
    assert folder.is_dir()
    server = _start(port, folder, log)
    try:
        assert redis.Redis(host="127.0.0.1", port=port, socket_timeout=5).get("kept") == b"yes"
    finally:
        assert _stop(server, port) == 0


def test_a_taken_port_is_a_clear_error(tmp_path: Path) -> None:
    port, log = free_port(), tmp_path / "first.log"
    first = _start(port, tmp_path / "one", log)
    try:
        second = subprocess.run(
            [sys.executable, "-m", "dispatcher", "redis", "--port", str(port),
             "--dir", str(tmp_path / "two")],
            cwd=ROOT, capture_output=True, text=True, timeout=60)
        assert second.returncode == 2
        assert f"did not start on port {port} (is the port taken?)" in second.stderr
    finally:
        _stop(first, port)
