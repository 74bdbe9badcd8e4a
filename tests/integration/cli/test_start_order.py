"""The supervisor starts the direct consumers first and the Celery process (control and
upkeep, no jobs) once they said they are ready: real processes, stand-ins for both
kinds of child, the supervisor in a process of its own (it installs signal handlers)."""

from __future__ import annotations

import contextlib
import os
import signal
import sys
from pathlib import Path

from dispatcher.routes.celery.supervisor import CONFIG_ERROR
from tests.support import ROOT, Process, wait_until

# A direct consumer's stand-in: says it started, waits for the test's word ("release",
# or "refuse" to exit as a consumer that refuses its settings), then says it is ready
# the way a consumer does, and stays until it is stopped.
CONSUMER = """
import os, pathlib, signal, sys, time
from dispatcher.routes.celery.readiness import say_ready
from dispatcher.routes.celery.supervisor import CONFIG_ERROR
signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
here = pathlib.Path(sys.argv[1])
(here / ("started-" + os.environ["N"])).touch()
while not (here / "release").exists():
    if (here / "refuse").exists():
        sys.exit(CONFIG_ERROR)
    time.sleep(0.01)
say_ready()
while True:
    time.sleep(1)
"""
# The Celery process's stand-in: says it started and stays until it is stopped.
CELERY = """
import pathlib, signal, sys, time
signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
(pathlib.Path(sys.argv[1]) / "celery-started").touch()
while True:
    time.sleep(1)
"""
SUPERVISOR = f"""
import sys
from dispatcher.routes.celery.supervisor import Child, supervise
here, wait = sys.argv[1], float(sys.argv[2])
consumer = [sys.executable, "-c", {CONSUMER!r}, here]
others = [Child(consumer, {{"N": str(n)}}, label=f"consumer {{n}}") for n in (1, 2)]
sys.exit(supervise([], command=[sys.executable, "-c", {CELERY!r}, here], others=others,
                   ready_wait=wait))
"""


def _children(pid: int) -> list[int]:
    """Every child of ``pid``, whichever of its threads started it."""
    return [int(child) for listing in Path(f"/proc/{pid}/task").glob("*/children")
            for child in listing.read_text().split()]


def _kill_all(supervisor: Process) -> None:
    """The supervisor and every stand-in it started (its process group), by its pid."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(supervisor.pid, signal.SIGKILL)
    supervisor.popen.wait()


def _supervisor(tmp_path: Path, ready_wait: float) -> Process:
    return Process([sys.executable, "-c", SUPERVISOR, str(tmp_path), str(ready_wait)],
                   {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT)}, tmp_path / "log",
                   cwd=ROOT)


def _both_started(tmp_path: Path) -> bool:
    return all((tmp_path / f"started-{n}").exists() for n in (1, 2))


def test_the_celery_process_starts_once_the_consumers_are_ready(tmp_path: Path) -> None:
    supervisor = _supervisor(tmp_path, ready_wait=600)
    try:
        wait_until(lambda: _both_started(tmp_path), "both consumers started")
        # Both consumers run and neither is ready: the Celery process is not started.
        assert len(_children(supervisor.pid)) == 2, supervisor.output()
        assert not (tmp_path / "celery-started").exists()
        (tmp_path / "release").touch()
        wait_until(lambda: (tmp_path / "celery-started").exists(), "the Celery process")
        assert len(_children(supervisor.pid)) == 3
        assert supervisor.stop(signal.SIGTERM, timeout=30) == 0, supervisor.output()
    finally:
        _kill_all(supervisor)


def test_consumers_that_never_get_ready_do_not_hold_back_the_celery_process(
    tmp_path: Path,
) -> None:
    supervisor = _supervisor(tmp_path, ready_wait=0.5)
    try:
        wait_until(lambda: _both_started(tmp_path), "both consumers started")
        wait_until(lambda: (tmp_path / "celery-started").exists(), "the Celery process")
        assert not (tmp_path / "release").exists()  # no consumer ever said it is ready
        assert "direct consumers not ready after 0.5s" in supervisor.output()
        assert supervisor.stop(signal.SIGTERM, timeout=30) == 0, supervisor.output()
    finally:
        _kill_all(supervisor)


def test_a_consumer_refusing_its_settings_ends_the_supervisor_with_its_code(
    tmp_path: Path,
) -> None:
    supervisor = _supervisor(tmp_path, ready_wait=600)
    try:
        wait_until(lambda: _both_started(tmp_path), "both consumers started")
        (tmp_path / "refuse").touch()
        wait_until(lambda: supervisor.popen.poll() is not None, "the supervisor's exit")
        assert supervisor.popen.returncode == CONFIG_ERROR, supervisor.output()
        assert not (tmp_path / "celery-started").exists()  # stopped before it started
    finally:
        _kill_all(supervisor)
