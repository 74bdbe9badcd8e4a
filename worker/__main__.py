"""``python -m worker [celery worker options]``: a supervised worker for every task queue.

The command supervises one Celery worker process and starts it again if it dies on
its own (Celery can exit on an "unrecoverable error" when Redis vanishes at the
wrong moment); SIGTERM/SIGINT are passed on and end both. ``celery -A worker.app
worker`` runs the same app unsupervised, for a process manager of your own.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from typing import Any

from dispatcher.errors import DispatchError

CHILD_MARK = "DISPATCH_WORKER_CHILD"
SHUTDOWN_WATCHDOG = 10.0
CONFIG_ERROR = 2


def _watch_failed_stop(sender: Any, **_: Any) -> None:
    """After an "Unrecoverable error" Celery stops with a failure code, and that warm
    shutdown can hang for good (seen when Redis vanishes mid-restore). End the process
    a little later so the supervisor starts a fresh worker; the jobs it held are
    redelivered (acks_late)."""
    stop = sender.stop

    def stop_or_exit(*args: Any, **kwargs: Any) -> Any:
        if kwargs.get("exitcode") not in (None, 0):
            timer = threading.Timer(SHUTDOWN_WATCHDOG, os._exit, args=(1,))
            timer.daemon = True
            timer.start()
        return stop(*args, **kwargs)

    sender.stop = stop_or_exit


def run_worker(argv: list[str]) -> int:
    """Run the Celery worker in this process."""
    from celery.signals import worker_init

    worker_init.connect(_watch_failed_stop, weak=False)
    try:
        from worker.app import app
    except DispatchError as exc:
        print(f"worker: {exc}", file=sys.stderr)
        return CONFIG_ERROR
    from dispatcher.celery_worker import worker_queues
    from dispatcher.settings import get_settings

    settings = get_settings()
    args = ["worker", "--loglevel", settings.log_level]
    if not any(a in ("-Q", "--queues") or a.startswith("--queues=") for a in argv):
        args += ["--queues", ",".join(worker_queues(settings))]
    app.worker_main([*args, *argv])
    return 0


def supervise(argv: list[str]) -> int:
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
        child = subprocess.Popen([sys.executable, "-m", "worker", *argv], env=env)
        code = child.wait()
        if stopping or code in (0, CONFIG_ERROR):
            return code
        if time.monotonic() - started > 60:
            pause = 1.0
        print(f"worker: the Celery worker exited with {code}; starting it again in "
              f"{pause:g}s", file=sys.stderr, flush=True)
        time.sleep(pause)
        pause = min(pause * 2, 30.0)
        if stopping:
            return code


if __name__ == "__main__":
    args = sys.argv[1:]
    sys.exit(run_worker(args) if os.environ.get(CHILD_MARK) else supervise(args))
