"""``GET /metrics`` for a FastAPI app: ``app.include_router(metrics_router)``."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Header, Response

from ..observability.metrics import exposition

router = APIRouter()


# Annotations name only builtins and module globals: FastAPI resolves them here.
@router.get("/metrics", include_in_schema=False, response_model=None)
def metrics(accept: str | None = Header(default=None)) -> Any:
    """Prometheus metrics of this API (all its processes in multiprocess mode)."""
    body, content_type = exposition(accept)
    return Response(content=body, media_type=content_type)
