"""What a service's health endpoint can report of the dispatcher, from memory only
(the broker monitor's last probe): no network call on the health check's path."""

from __future__ import annotations

from typing import Any

from ..core.redis_url import redact_url
from ..core.settings import get_settings
from ..runtime.container import current


def health() -> dict[str, Any]:
    """``status`` (``ok``, or ``degraded`` while the configured broker is unreachable),
    the broker (reachable, last checked, outage spool depth, URL without secrets),
    this process's inline executor and every API process's (``inline_fleet``)."""
    settings = get_settings()
    runtime = current()
    broker = runtime.celery.status()
    running, outstanding = runtime.inline_load()
    return {
        "status": "ok" if broker["reachable"] or settings.broker_url is None else "degraded",
        "broker": {
            "configured": settings.broker_url is not None,
            "reachable": broker["reachable"],
            "checked_at": broker["checked_at"],
            "spool_depth": broker["spool_depth"],
            "url": redact_url(settings.broker_url),
        },
        "inline": {
            "running": running,
            "outstanding": outstanding,
            "concurrency": settings.inline_concurrency,
        },
        # Every API process's executor as last reported (uvicorn --workers), and sums.
        "inline_fleet": runtime.inline_fleet.summary(),
    }
