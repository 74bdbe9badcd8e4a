"""The bearer token of the endpoints that show arguments, results or tracebacks."""

from __future__ import annotations

import hmac

from fastapi import HTTPException, Request

from ..core.settings import get_settings


def require_api_token(request: Request) -> None:
    """FastAPI dependency: when ``DISPATCH_API_TOKEN`` is set, demand it as a bearer token."""
    token = get_settings().api_token
    if token is None:
        return
    scheme, _, given = request.headers.get("authorization", "").partition(" ")
    expected = token.get_secret_value().encode()
    if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), expected):
        raise HTTPException(
            status_code=401,
            detail="a valid bearer token is required (Authorization: Bearer <token>)",
            headers={"WWW-Authenticate": "Bearer"},
        )
