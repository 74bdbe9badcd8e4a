"""The direct consumers' word to the supervisor that they are ready (``Readiness``,
``say_ready``): the supervisor starts the node's Celery process (control and upkeep, no
jobs) only then, so that on a small machine its start, an interpreter loading Celery,
does not take CPU from theirs."""

from __future__ import annotations

import contextlib
import os
import select
import threading
import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")

#: In a direct consumer's environment until the Celery process started: the file
#: descriptor on which it says it is ready (``say_ready``).
READY_FD = "DISPATCH_READY_FD"
#: Seconds the Celery process waits for the direct consumers at most (one that keeps
#: failing to start must not hold back the upkeep).
READY_WAIT = 10.0


class Readiness:
    """The direct consumers' word that they are ready: a byte each on a pipe, which
    every start of a consumer gets until the supervisor stopped waiting."""

    def __init__(self, count: int) -> None:
        self.count = count
        self._read, self._write = os.pipe()
        self._lock = threading.Lock()  # no start gets the pipe once it is closed

    def spawn(self, start: Callable[[dict[str, str], tuple[int, ...]], T]) -> T:
        """``start(env, pass_fds)`` with the pipe's writing end, while it is open."""
        with self._lock:
            if self._write < 0:
                return start({}, ())
            return start({READY_FD: str(self._write)}, (self._write,))

    def wait(self, stopping: threading.Event, timeout: float) -> int:
        """Until every consumer said it is ready, ``stopping`` is set or ``timeout``
        passed; how many said so. The pipe is closed then."""
        deadline = time.monotonic() + timeout
        ready = 0
        try:
            while ready < self.count and not stopping.is_set():
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                if select.select([self._read], [], [], min(left, 0.25))[0]:
                    ready += len(os.read(self._read, self.count))
        finally:
            with self._lock:
                os.close(self._read)
                os.close(self._write)
                self._write = -1
        return ready


def say_ready() -> None:
    """In a direct consumer: tell the supervisor it is ready (nothing if it does not
    wait, or no longer)."""
    fd = os.environ.pop(READY_FD, None)
    if fd is None or not fd.isdigit():
        return
    with contextlib.suppress(OSError):  # the supervisor stopped waiting meanwhile
        os.write(int(fd), b".")
    with contextlib.suppress(OSError):
        os.close(int(fd))
