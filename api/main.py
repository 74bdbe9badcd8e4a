"""The API: the seeds' examples as real endpoints, plus the dispatcher's operator
endpoints (job records, events, dead letters, routes) and health."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Query
from pydantic import BaseModel, Field

from dispatcher.fastapi import (
    Accepted,
    accepted,
    dashboard_router,
    guarded,
    health,
    install,
    jobs_router,
    metrics_router,
)

from .tasks import data_dir, generate_report, write_notification


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    """Refuse to start, saying why, when the tasks could not write their files
    (``API_DATA_DIR``): better than a failed notification after the first call."""
    data_dir()
    yield


app = FastAPI(title="Hybrid dispatcher example API", version="0.1.0", lifespan=lifespan)
install(app)
app.include_router(jobs_router)
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
    return health()
