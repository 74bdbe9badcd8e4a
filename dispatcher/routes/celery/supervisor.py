"""The worker supervisor behind ``dispatcher worker``: it keeps one Celery worker
process running and starts it again whenever it ends without being asked to (Celery can
exit, or hang, after an "unrecoverable error" when Redis vanishes at the wrong moment);
SIGTERM/SIGINT are passed on and end both."""

from __future__ import annotations

import contextlib
import logging
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


#: What Celery logs before its shutdown may hang (see ``UnrecoverableAlarm``).
UNRECOVERABLE = "Unrecoverable error"
#: Celery's logger of that line (``celery.worker.worker``, ``WorkController.start``).
UNRECOVERABLE_LOGGER = "celery.worker.worker"
#: The supervisor's pid, given to its child: the child signals nobody else.
SUPERVISOR_PID = "DISPATCH_SUPERVISOR_PID"
#: The child's word to the supervisor that Celery met an unrecoverable error.
ALARM = signal.SIGUSR1


class UnrecoverableAlarm(logging.Handler):
    """In the worker (the supervisor's child): tells the supervisor when Celery logs an
    "Unrecoverable error". Celery's own shutdown can hang for good after one (seen
    when Redis vanishes mid-restore), so the supervisor ends the worker from outside a
    little later and starts a fresh one; its jobs are redelivered (acks_late).

    A signal, not the supervisor reading the worker's output: the worker writes to the
    supervisor's stderr itself, since relaying a line or two per job through another
    process cost a busy worker ~3 % of its CPU."""

    def __init__(self, supervisor: int) -> None:
        super().__init__(logging.CRITICAL)
        self.supervisor = supervisor
        self.sent = False

    def emit(self, record: logging.LogRecord) -> None:
        if self.sent or UNRECOVERABLE not in str(record.msg):
            return
        if os.getppid() == self.supervisor:  # never another process
            self.sent = True
            os.kill(self.supervisor, ALARM)


def install_alarm() -> None:
    """In the supervisor's child: the ``UnrecoverableAlarm`` on Celery's logger."""
    supervisor = int(os.environ.get(SUPERVISOR_PID) or 0)
    if supervisor:
        logging.getLogger(UNRECOVERABLE_LOGGER).addHandler(UnrecoverableAlarm(supervisor))


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

    watchdogs: dict[int, threading.Timer] = {}

    def alarm(signum: int, frame: object) -> None:
        if child is not None and child.pid not in watchdogs:
            watchdogs[child.pid] = timer = threading.Timer(
                SHUTDOWN_WATCHDOG, _kill_tree, args=(child.pid,))
            timer.daemon = True
            timer.start()

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    signal.signal(ALARM, alarm)
    env = {**os.environ, CHILD_MARK: "1", SUPERVISOR_PID: str(os.getpid())}
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
                stdout=sys.stderr.fileno(),  # one stream, as Celery's own output
            )
            code = child.wait()
            if (watchdog := watchdogs.pop(child.pid, None)) is not None:
                watchdog.cancel()
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
