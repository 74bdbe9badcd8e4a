"""The inline executors of every API process, shared through Redis.

Under ``uvicorn --workers N`` (or gunicorn) each process has its own inline executor,
and a scrape or a health check reaches one process at random. So each process writes
a small report of its executor (running, waiting, spilled over, concurrency) every
few seconds, with a lifetime of a few reports, and reads everyone's back: any process
can then answer for the fleet.
"""

from __future__ import annotations

import json
import time
from typing import Any, TypedDict

import redis

from . import keys
from .link import as_text

#: Processes whose last report is older than this are dropped from the index.
FORGET_AFTER = 3600.0


class InlineReport(TypedDict):
    process: str
    running: int
    waiting: int
    spilled: int
    concurrency: int
    at: float


class InlineReports:
    """Writes this process's report and reads every live process's."""

    def __init__(self, client: redis.Redis, lifetime: float) -> None:
        self.client = client
        self.lifetime = lifetime

    def write(self, report: InlineReport) -> None:
        with self.client.pipeline(transaction=False) as pipe:
            pipe.set(keys.inline_report(report["process"]), json.dumps(report),
                     px=max(1, int(self.lifetime * 1000)))
            pipe.zadd(keys.INLINE_PROCESSES, {report["process"]: report["at"]})
            pipe.zremrangebyscore(keys.INLINE_PROCESSES, "-inf", time.time() - FORGET_AFTER)
            pipe.execute()

    def read(self) -> list[InlineReport]:
        """Every process whose report has not expired, by name."""
        names = [as_text(n) for n in self.client.zrange(keys.INLINE_PROCESSES, 0, -1)]
        if not names:
            return []
        raws = self.client.mget([keys.inline_report(name) for name in names])
        reports = []
        for raw in raws:
            report = _parse(raw)
            if report is not None:
                reports.append(report)
        return sorted(reports, key=lambda r: r["process"])

    def remove(self, process: str) -> None:
        self.client.delete(keys.inline_report(process))
        self.client.zrem(keys.INLINE_PROCESSES, process)


def _parse(raw: Any) -> InlineReport | None:
    if raw is None:
        return None
    try:
        value = json.loads(raw)
        return {"process": str(value["process"]), "running": int(value["running"]),
                "waiting": int(value["waiting"]), "spilled": int(value["spilled"]),
                "concurrency": int(value["concurrency"]), "at": float(value["at"])}
    except (ValueError, TypeError, KeyError):
        return None


def fleet_summary(reports: list[InlineReport]) -> dict[str, Any]:
    """Per process and summed: what ``/healthz``, ``/metrics``, ``GET /routes`` and the
    dashboard show of the inline route."""
    total = {field: sum(r[field] for r in reports)
             for field in ("running", "waiting", "spilled", "concurrency")}
    return {"processes": reports, "total": {"processes": len(reports), **total}}
