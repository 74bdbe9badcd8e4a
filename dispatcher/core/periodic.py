"""A background pass repeated in a daemon thread (the delay relay, the scheduler, a
worker's upkeep, the inline fleet report): one shape for all of them, so none can end
by an error, and each stops the same way."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable


class Periodic:
    """Runs ``step`` in a thread of its own until ``stop()``; ``step`` returns the
    seconds to wait before the next pass (None: ``pause``). An ``expected`` error (Redis
    away) is logged at debug level and handed to ``on_expected``; any other is logged
    with its traceback. Either way the next pass tries again."""

    def __init__(self, name: str, step: Callable[[], float | None], pause: float, *,
                 expected: tuple[type[BaseException], ...], log: logging.Logger,
                 on_expected: Callable[[BaseException], None] | None = None) -> None:
        self.name = name
        self.step = step
        self.pause = pause
        self.expected = expected
        self.log = log
        self.on_expected = on_expected
        self._stopped = threading.Event()
        self.thread = threading.Thread(target=self._loop, name=name, daemon=True)

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self._stopped.set()

    @property
    def stopped(self) -> bool:
        return self._stopped.is_set()

    def _loop(self) -> None:
        while not self._stopped.is_set():
            wait = self.pause
            try:
                asked = self.step()
                if asked is not None:
                    wait = asked
            except self.expected as exc:
                self.log.debug("%s pass skipped: %s", self.name, exc)
                if self.on_expected is not None:
                    self.on_expected(exc)
            except Exception:  # never the end of the loop
                self.log.exception("%s pass failed", self.name)
            self._stopped.wait(wait)
