"""The API: the seeds' examples as real endpoints, plus the dispatcher's operator
endpoints (job records, events, dead letters, routes) and health."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Query
from pydantic import BaseModel, Field

from dispatcher import get_settings, ops, runtime
from dispatcher.dashboard import router as dashboard_router
from dispatcher.fastapi import install
from dispatcher.metrics import router as metrics_router
from dispatcher.ops import Accepted, accepted, guarded
from dispatcher.settings import redact_url

from .tasks import generate_report, write_notification

app = FastAPI(title="Hybrid dispatcher example API", version="0.1.0")
install(app)
app.include_router(ops.router)
app.include_router(metrics_router)  # GET /metrics (Prometheus)
app.include_router(dashboard_router)  # GET /dashboard (live page) and /dashboard/data


class ReportRequest(BaseModel):
    report_id: int = Field(ge=1, description="Which report to build.")


@app.post("/send-notification/{email}", status_code=202, response_model=Accepted,
          dependencies=guarded)
async def send_notification(
    email: str, message: str = Query("some notification", max_length=1000)
) -> Accepted:
    """Write a notification after the response (light task: inline route)."""
    return accepted(write_notification.dispatch(email, message=message))


@app.post("/reports", status_code=202, response_model=Accepted, dependencies=guarded)
async def create_report(request: ReportRequest) -> Accepted:
    """Generate a report (heavy task: Celery route)."""
    return accepted(generate_report.dispatch(request.report_id))


@app.get("/healthz")
async def healthz() -> dict[str, Any]:
    """Liveness, whether the broker answers, and the outage spool's depth (fast: no
    network call on this path)."""
    settings = get_settings()
    broker = runtime.celery_route().status()  # from the monitor's last probe: no I/O wait
    executor = runtime.current_inline_executor()
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
            "running": executor.running() if executor else 0,
            "outstanding": executor.outstanding() if executor else 0,
            "concurrency": settings.inline_concurrency,
        },
    }
