"""The bearer token of the endpoints that show arguments, results or tracebacks.

Without ``DISPATCH_API_TOKEN`` those endpoints answer only a client that connected
from this machine's loopback address, directly (no proxy header): ``make run``, a
developer's browser and tests keep working, while a service deployed without the
token, or behind a reverse proxy (whose requests all come from loopback, or from a
Unix socket), shows no job's arguments to the network.
"""

from __future__ import annotations

import hmac
import ipaddress

from fastapi import HTTPException, Request

from ..core.settings import get_settings

#: Starlette's ``TestClient`` names its client so (no socket: the app runs in the
#: same process as the test).
_TEST_CLIENT = "testclient"
#: Headers a proxy adds: a request that carries one was passed on for another client.
_PROXY_HEADERS = ("forwarded", "x-forwarded-for", "x-real-ip")


def require_api_token(request: Request) -> None:
    """FastAPI dependency: when ``DISPATCH_API_TOKEN`` is set, demand it as a bearer
    token; when it is not, answer loopback clients only (403 for any other)."""
    token = get_settings().api_token
    if token is None:
        if not is_local(request):
            raise HTTPException(
                status_code=403,
                detail="DISPATCH_API_TOKEN is not set, so this endpoint answers only "
                "clients on this machine (127.0.0.1, ::1), not through a proxy; set "
                "DISPATCH_API_TOKEN to serve it to others with Authorization: Bearer <token>",
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
    """Whether the request came straight from this machine: a loopback address or an
    in-process test client, and no proxy header. A Unix socket (no client address) is
    not: reverse proxies use them."""
    client = request.client
    if client is None or any(name in request.headers for name in _PROXY_HEADERS):
        return False
    if client.host == _TEST_CLIENT:
        return True
    try:
        address = ipaddress.ip_address(client.host.split("%", 1)[0])
    except ValueError:  # not an address: a name some server passed through
        return False
    mapped = getattr(address, "ipv4_mapped", None)  # ::ffff:127.0.0.1 (a dual-stack server)
    return (mapped or address).is_loopback
