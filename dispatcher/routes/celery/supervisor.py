"""The worker supervisor behind ``dispatcher worker``: it keeps one Celery worker
process running and starts it again whenever it ends without being asked to (Celery can
exit, or hang, after an "unrecoverable error" when Redis vanishes at the wrong moment);
SIGTERM/SIGINT are passed on and end both."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time

CHILD_MARK = "DISPATCH_WORKER_CHILD"
METRICS_DIR = "PROMETHEUS_MULTIPROC_DIR"
SHUTDOWN_WATCHDOG = 10.0
CONFIG_ERROR = 2


def _descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (Linux /proc; empty elsewhere)."""
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as listing:
            children = [int(p) for p in listing.read().split()]
    except OSError:
        return []
    return [d for child in children for d in (child, *_descendants(child))]


def _kill_tree(pid: int) -> None:
    for target in [*_descendants(pid), pid]:
        with contextlib.suppress(ProcessLookupError):
            os.kill(target, signal.SIGKILL)


#: What Celery logs before its shutdown may hang (see ``_relay_output``).
UNRECOVERABLE = b"Unrecoverable error"


def _relay_output(child: subprocess.Popen[bytes]) -> None:
    """Pass the worker's output on; after an "Unrecoverable error" Celery's own shutdown
    can hang for good (seen when Redis vanishes mid-restore), so end the worker from
    outside a little later and let the loop start a fresh one. Its jobs are redelivered
    (acks_late).

    Copied as it comes, in chunks: a worker logs a line or two per job, and relaying
    each line through Python cost this process ~5 % of a busy worker's CPU."""
    assert child.stdout is not None
    source, target = child.stdout.fileno(), sys.stderr.fileno()
    tail = b""  # the end of the previous chunk: the mark may straddle two
    armed = False
    while chunk := os.read(source, 65536):
        view = memoryview(chunk)
        while view:
            view = view[os.write(target, view):]
        if not armed and UNRECOVERABLE in tail + chunk:
            armed = True
            timer = threading.Timer(SHUTDOWN_WATCHDOG, _kill_tree, args=(child.pid,))
            timer.daemon = True
            timer.start()
        tail = chunk[-len(UNRECOVERABLE):]


def supervise(argv: list[str], command: list[str] | None = None) -> int:
    """Keep one worker process running until we are told to stop."""
    stopping = False
    child: subprocess.Popen[bytes] | None = None

    def forward(signum: int, frame: object) -> None:
        nonlocal stopping
        stopping = True
        if child is not None and child.poll() is None:
            # Always SIGTERM (a warm shutdown, idempotent in Celery): a terminal's Ctrl-C
            # already reached the child, and a second SIGINT would make it a cold one.
            child.send_signal(signal.SIGTERM)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    env = {**os.environ, CHILD_MARK: "1"}
    pause = 1.0
    while True:
        started = time.monotonic()
        # Each worker's pool processes write their metrics into files of a fresh
        # directory (prometheus-client's multiprocess mode); counters restart with it.
        metrics_dir = tempfile.mkdtemp(prefix="dispatch-metrics-", dir=os.environ.get(METRICS_DIR))
        try:
            child = subprocess.Popen(
                command or [sys.executable, "-m", "dispatcher", "worker", *argv],
                env={**env, METRICS_DIR: metrics_dir},
                stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            )
            relay = threading.Thread(target=_relay_output, args=(child,), daemon=True)
            relay.start()
            code = child.wait()
            relay.join(timeout=5)
        finally:
            shutil.rmtree(metrics_dir, ignore_errors=True)
        if stopping:
            return code
        if code == CONFIG_ERROR and time.monotonic() - started < 30:
            return code  # refused its settings at start-up: starting again cannot help
        # Anything else we did not ask for is a crash, even exit code 0: Celery can end
        # "successfully" after an unrecoverable error when Redis vanished under it.
        if time.monotonic() - started > 60:
            pause = 1.0
        print(f"worker: the Celery worker exited with {code}; starting it again in "
              f"{pause:g}s", file=sys.stderr, flush=True)
        time.sleep(pause)
        pause = min(pause * 2, 30.0)
        if stopping:
            return code
