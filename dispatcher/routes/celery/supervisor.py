"""The worker supervisor behind ``dispatcher worker``: it keeps one Celery worker
process running and starts it again whenever it ends without being asked to (Celery can
exit, or hang, after an "unrecoverable error" when Redis vanishes at the wrong moment);
SIGTERM/SIGINT are passed on and end both.

Beside direct consumers, the Celery process (remote control and upkeep, no jobs) starts
once they are ready (``readiness``)."""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from .readiness import READY_WAIT, Readiness

CHILD_MARK = "DISPATCH_WORKER_CHILD"
METRICS_DIR = "PROMETHEUS_MULTIPROC_DIR"
SHUTDOWN_WATCHDOG = 10.0
CONFIG_ERROR = 2
#: Seconds before a direct consumer killed by a signal starts again.
KILLED_PAUSE = 0.2


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
#: In a direct consumer's environment: its worker hostname, the queues it consumes
#: (comma-separated; empty: every queue a registered task routes to) and its node.
DIRECT_NAME = "DISPATCH_DIRECT_CONSUMER"
DIRECT_QUEUES = "DISPATCH_DIRECT_QUEUES"
DIRECT_NODE = "DISPATCH_DIRECT_NODE"
#: In the Celery process beside direct consumers: their hostnames, comma-separated.
DIRECT_CONSUMERS = "DISPATCH_DIRECT_CONSUMERS"
#: The child's word to the supervisor that Celery met an unrecoverable error.
ALARM = signal.SIGUSR1


def once(action: Callable[[], None]) -> Callable[[int, object], None]:
    """A signal handler that runs ``action`` the first time only, whichever signal (or
    caller) comes first. A second signal can arrive while the first handler is inside
    ``Event.set``, holding its lock (Ctrl-C reaches the whole process group; and the
    supervisor used to pass SIGTERM on twice, again once the Celery worker had ended):
    running ``action`` again there would wait on that lock forever, and the process
    would never stop."""
    called: list[int] = []

    def handler(signum: int, frame: object) -> None:
        if not called:
            called.append(signum)
            action()

    return handler


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


#: ``prctl``'s option: the signal this process gets when its parent ends.
_PR_SET_PDEATHSIG = 1


def end_with_supervisor() -> bool:
    """In the supervisor's child: ask the kernel for SIGTERM (a warm shutdown, which
    gives back what it holds) when the supervisor ends, even killed by SIGKILL, rather
    than run on unsupervised. False: the supervisor is gone already (the caller ends).
    Linux only; elsewhere, and outside a supervisor, nothing is asked."""
    supervisor = int(os.environ.get(SUPERVISOR_PID) or 0)
    if not supervisor or not sys.platform.startswith("linux"):
        return True
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0)
    return os.getppid() == supervisor  # ended before we asked: no signal will come


@dataclass
class Child:
    """One process the supervisor keeps running: ``command`` with ``env`` added."""

    command: list[str]
    env: dict[str, str] = field(default_factory=dict)
    label: str = "the Celery worker"
    #: Killed by a signal, it starts again after ``KILLED_PAUSE`` (a direct consumer).
    quick_restart: bool = False
    popen: subprocess.Popen[bytes] | None = None


def supervise(argv: list[str], command: list[str] | None = None,
              others: Sequence[Child] = (), celery_env: dict[str, str] | None = None,
              ready_wait: float = READY_WAIT) -> int:
    """Keep the Celery worker (and ``others``: the direct consumers, started first) running
    until we are told to stop; the Celery worker's exit code (``CONFIG_ERROR`` when a
    consumer refused its settings)."""
    stopping = threading.Event()
    celery = Child(command or [sys.executable, "-m", "dispatcher", "worker", *argv],
                   celery_env or {})
    children = [celery, *others]

    def stop_all() -> None:
        stopping.set()
        for child in children:
            _terminate(child.popen)

    forward = once(stop_all)

    watchdogs: dict[int, threading.Timer] = {}

    def alarm(signum: int, frame: object) -> None:
        popen = celery.popen  # only the Celery worker raises the alarm
        if popen is not None and popen.pid not in watchdogs:
            watchdogs[popen.pid] = timer = threading.Timer(
                SHUTDOWN_WATCHDOG, _kill_tree, args=(popen.pid,))
            timer.daemon = True
            timer.start()

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    signal.signal(ALARM, alarm)
    env = {**os.environ, CHILD_MARK: "1", SUPERVISOR_PID: str(os.getpid())}
    # Each worker's pool processes write their metrics into files of a fresh directory
    # (prometheus-client's multiprocess mode); counters restart with it. With direct
    # consumers beside it, all of them share one for the supervisor's life.
    shared = tempfile.mkdtemp(prefix="dispatch-metrics-", dir=os.environ.get(METRICS_DIR)) \
        if others else None
    codes: dict[int, int] = {}
    readiness = Readiness(len(others)) if others else None

    def keep(index: int, child: Child) -> None:
        codes[index] = _keep_running(child, env, stopping, watchdogs, shared,
                                     readiness if index else None)
        if index == 0 or codes[index] == CONFIG_ERROR:
            forward(signal.SIGTERM, None)  # the others go with it

    # The Celery worker from this (the main) thread, the direct consumers each from a
    # thread of its own; signals reach the main thread while it waits.
    threads = [threading.Thread(target=keep, args=(i, c), name=f"supervise-{i}", daemon=True)
               for i, c in enumerate(children) if i]
    for thread in threads:
        thread.start()
    try:
        if readiness is not None and readiness.wait(stopping, ready_wait) < len(others) \
                and not stopping.is_set():
            print(f"worker: direct consumers not ready after {ready_wait:g}s; starting "
                  "the Celery worker anyway", file=sys.stderr, flush=True)
        keep(0, celery)
        for thread in threads:
            while thread.is_alive():
                thread.join(1.0)
    finally:
        if shared is not None:
            shutil.rmtree(shared, ignore_errors=True)
    # A consumer that refused its settings stopped everything, maybe before the Celery
    # worker started: the supervisor says so too.
    return CONFIG_ERROR if CONFIG_ERROR in codes.values() else codes.get(0, 0)


def _terminate(popen: subprocess.Popen[bytes] | None) -> None:
    if popen is not None and popen.poll() is None:
        # Always SIGTERM (a warm shutdown, idempotent in Celery): a terminal's Ctrl-C
        # already reached the child, and a second SIGINT would make it a cold one.
        popen.send_signal(signal.SIGTERM)


def _keep_running(child: Child, env: dict[str, str], stopping: threading.Event,
                  watchdogs: dict[int, threading.Timer], shared: str | None,
                  readiness: Readiness | None = None) -> int:
    """Start ``child`` again whenever it ends unasked; its last exit code."""
    pause = 1.0
    code = 0
    while not stopping.is_set():
        started = time.monotonic()
        metrics_dir = shared or tempfile.mkdtemp(prefix="dispatch-metrics-",
                                                 dir=os.environ.get(METRICS_DIR))
        def start(ready: dict[str, str], fds: tuple[int, ...],
                  metrics_dir: str = metrics_dir) -> subprocess.Popen[bytes]:
            return subprocess.Popen(
                child.command, env={**env, **child.env, METRICS_DIR: metrics_dir, **ready},
                stdout=sys.stderr.fileno(),  # one stream, as Celery's own output
                pass_fds=fds)

        try:
            child.popen = popen = (readiness.spawn(start) if readiness is not None
                                   else start({}, ()))
            if stopping.is_set():  # told to stop while it started
                _terminate(popen)
            code = popen.wait()
            if (watchdog := watchdogs.pop(popen.pid, None)) is not None:
                watchdog.cancel()
        finally:
            if shared is None:
                shutil.rmtree(metrics_dir, ignore_errors=True)
        if stopping.is_set():
            return code
        if code == CONFIG_ERROR and time.monotonic() - started < 30:
            return code  # refused its settings at start-up: starting again cannot help
        # Anything else we did not ask for is a crash, even exit code 0: Celery can end
        # "successfully" after an unrecoverable error when Redis vanished under it.
        if time.monotonic() - started > 60:
            pause = 1.0
        # A direct consumer killed by a signal (its job killed it, or the OOM killer)
        # comes back at once, as Celery replaces a pool process; the job it held is
        # given back as it starts, and counted a death each time (poison after a few).
        wait = KILLED_PAUSE if code < 0 and child.quick_restart else pause
        print(f"worker: {child.label} exited with {code}; starting it again in "
              f"{wait:g}s", file=sys.stderr, flush=True)
        stopping.wait(wait)
        if wait == pause:
            pause = min(pause * 2, 30.0)
    return code
