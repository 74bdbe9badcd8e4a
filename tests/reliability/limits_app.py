"""A small API for the limits scenario: each request dispatches one rate-limited job,
inline (it runs in this API process) or to Celery, as the request says."""

from __future__ import annotations

from typing import Any, Literal

from fastapi import FastAPI

from dispatcher.fastapi import health, install

from . import tasks

app = FastAPI(title="limits scenario")
install(app)


@app.post("/paced/{job}")
def paced(job: str, route: Literal["inline", "celery"]) -> dict[str, str]:
    handle = tasks.paced.options(route=route).dispatch(job)
    return {"id": handle.id, "route": handle.route}


@app.get("/healthz")
def healthz() -> dict[str, Any]:
    return health()
