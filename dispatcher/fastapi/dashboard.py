"""The live dashboard page: ``app.include_router(dashboard_router)``.

``GET /dashboard`` is plain HTML, CSS and JavaScript shipped with the package (no build
step, no third-party code); it polls ``GET /dashboard/data`` every second or two and
draws its own SVG charts. The data endpoint shows tracebacks and arguments, so it
needs the bearer token when ``DISPATCH_API_TOKEN`` is set; the page itself holds no
data and asks for the token.
"""

from __future__ import annotations

from functools import cache
from importlib import resources
from typing import Any

import anyio
from fastapi import APIRouter, Depends
from fastapi.responses import HTMLResponse, Response

from ..runtime.container import current
from .auth import require_api_token

router = APIRouter(tags=["dashboard"])

_ASSETS = {
    "dashboard.js": "text/javascript; charset=utf-8",
    "dashboard.css": "text/css; charset=utf-8",
}


@cache
def _asset(name: str) -> str:
    return resources.files(__package__).joinpath("static", name).read_text("utf-8")


@router.get("/dashboard", response_class=HTMLResponse, include_in_schema=False)
async def dashboard_page() -> HTMLResponse:
    """The dashboard page (it fetches its data from ``dashboard/data``)."""
    return HTMLResponse(_asset("dashboard.html"), headers={"Cache-Control": "no-cache"})


def _snapshot() -> dict[str, Any]:
    runtime = current()
    return runtime.dashboard.snapshot(runtime.dashboard_sources())


@router.get("/dashboard/data", dependencies=[Depends(require_api_token)])
async def dashboard_data() -> dict[str, Any]:
    """One snapshot of jobs, queues, failures, dead letters and routes."""
    return await anyio.to_thread.run_sync(_snapshot)


@router.get("/dashboard/{asset}", include_in_schema=False)
async def dashboard_asset(asset: str) -> Response:
    media_type = _ASSETS.get(asset)
    if media_type is None:
        return Response(status_code=404)
    return Response(_asset(asset), media_type=media_type,
                    headers={"Cache-Control": "no-cache"})
