"""The bearer token of the endpoints that show arguments, results or tracebacks.

Without ``DISPATCH_API_TOKEN`` those endpoints answer only this machine: a service
deployed without the token shows no job's arguments to the network, while ``make
run``, a developer's browser and tests keep working untouched.
"""

from __future__ import annotations

import hmac
import ipaddress

from fastapi import HTTPException, Request

from ..core.settings import get_settings

#: ASGI client hosts that are this machine: Starlette's ``TestClient`` names its
#: client ``testclient`` (no socket: the app runs in the same process).
_LOCAL_NAMES = frozenset({"localhost", "testclient"})


def require_api_token(request: Request) -> None:
    """FastAPI dependency: when ``DISPATCH_API_TOKEN`` is set, demand it as a bearer
    token; when it is not, answer loopback clients only (403 for any other)."""
    token = get_settings().api_token
    if token is None:
        if not is_local(request):
            raise HTTPException(
                status_code=403,
                detail="DISPATCH_API_TOKEN is not set, so this endpoint answers only "
                "clients on this machine (127.0.0.1, ::1); set DISPATCH_API_TOKEN to "
                "serve it to other hosts with Authorization: Bearer <token>",
            )
        return
    scheme, _, given = request.headers.get("authorization", "").partition(" ")
    expected = token.get_secret_value().encode()
    if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), expected):
        raise HTTPException(
            status_code=401,
            detail="a valid bearer token is required (Authorization: Bearer <token>)",
            headers={"WWW-Authenticate": "Bearer"},
        )


def is_local(request: Request) -> bool:
    """Whether the request's client is this machine: a loopback address, a Unix socket
    (no client address), or an in-process test client."""
    client = request.client
    if client is None or client.host in _LOCAL_NAMES:
        return True
    try:
        return ipaddress.ip_address(client.host.split("%", 1)[0]).is_loopback
    except ValueError:  # not an address: a name some server passed through
        return False
