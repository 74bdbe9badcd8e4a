"""This API process's part in the fleet view of the inline route: it reports its
executor to Redis every ``REPORT_EVERY`` seconds and keeps the last view of every
process's report, so ``/healthz``, ``/metrics``, ``GET /routes`` and the dashboard
answer for all processes from memory, whichever process is asked."""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Callable
from typing import Any

from ..core.periodic import Periodic
from ..store.client import REDIS_ERRORS
from ..store.inline_reports import InlineReport, InlineReports, fleet_summary

log = logging.getLogger("dispatcher.fleet")

#: Seconds between two reports; a report lives for ``REPORT_LIFETIME`` reports.
REPORT_EVERY = 2.0
REPORT_LIFETIME = 5


def process_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


class InlineFleet:
    """``load`` gives (running, outstanding) of this process's executor, ``spilled`` how
    many jobs it spilled over to Celery; ``reports`` is None without Redis."""

    def __init__(self, load: Callable[[], tuple[int, int]], spilled: Callable[[], int],
                 concurrency: int, reports: InlineReports | None) -> None:
        self.load = load
        self.spilled = spilled
        self.concurrency = concurrency
        self.reports = reports
        self.process = process_name()
        self._others: list[InlineReport] = []
        self._loop: Periodic | None = None

    def own(self) -> InlineReport:
        running, outstanding = self.load()
        return {"process": self.process, "running": running,
                "waiting": max(0, outstanding - running), "spilled": self.spilled(),
                "concurrency": self.concurrency, "at": time.time()}

    def summary(self) -> dict[str, Any]:
        """Every process's last report (this one's as of now), and their sums."""
        return fleet_summary(sorted([*self._others, self.own()], key=lambda r: r["process"]))

    @property
    def started(self) -> bool:
        """Whether this process reports (an API process with Redis)."""
        return self._loop is not None

    def start(self) -> None:
        """Report from now on (an API process at start-up); does nothing without Redis."""
        if self.reports is None or self._loop is not None:
            return
        self._loop = Periodic("dispatch-inline-report", self.report_once, REPORT_EVERY,
                              expected=REDIS_ERRORS, log=log, on_expected=self._forget_others)
        self._loop.start()

    def report_once(self) -> None:
        if self.reports is None:
            return
        self.reports.write(self.own())
        self._others = [r for r in self.reports.read() if r["process"] != self.process]

    def stop(self) -> None:
        if self._loop is not None:
            self._loop.stop()
        if self.reports is not None and self._loop is not None:
            try:
                self.reports.remove(self.process)
            except REDIS_ERRORS as exc:
                log.debug("inline report not removed: %s", exc)

    def _forget_others(self, error: BaseException) -> None:
        self._others = []  # nothing known of the others while Redis is away
