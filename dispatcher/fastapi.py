"""FastAPI integration: ``install(app)`` binds each request to the dispatcher.

It adds an ASGI middleware that gives every request an id (``X-Request-ID``, or a
new one) and a batch for its inline jobs. Once the response has been sent, the
batch goes to the inline executor as one chain, which is when ``BackgroundTasks``
would start; the connection is not held while the jobs run. It also maps the
dispatcher's errors to JSON answers and drains the executor at shutdown.
"""

from __future__ import annotations

import asyncio
import hmac
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
from fastapi import FastAPI, HTTPException, Request
from fastapi.exception_handlers import (
    http_exception_handler,
    request_validation_exception_handler,
)
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from . import runtime
from .checks import check_configuration
from .context import RequestBatch, batch_var, request_id_var
from .errors import BrokerUnavailable, TaskValidationError, UnknownTaskError
from .events import configure_logging
from .governor import watch_server_thread
from .inline import abandon
from .job import new_request_id
from .registry import import_task_modules
from .settings import get_settings

REQUEST_ID_HEADER = "x-request-id"
_VALID_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:\-]{1,128}$")


class DispatcherMiddleware:
    """One ASGI layer for every request: its id (``X-Request-ID``), its batch of inline
    jobs (handed to the executor once the response has been sent), the body size
    limit; it also shows the governor which thread serves requests.

    One layer rather than several: each ASGI layer costs every request an extra
    coroutine and wrapped ``send``, paid on the same GIL as the endpoint.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        settings = get_settings()
        limit = settings.max_payload_bytes
        request_id = None
        declared = None
        for key, value in scope.get("headers", ()):
            if key == b"x-request-id":
                candidate: str = value.decode("latin-1")
                if _VALID_REQUEST_ID.match(candidate):
                    request_id = candidate
            elif key == b"content-length" and value.isdigit():
                declared = int(value)
        if declared is not None and declared > limit:
            await _too_large(limit)(scope, receive, send)
            return
        if request_id is None:
            request_id = new_request_id()
        header = (REQUEST_ID_HEADER.encode(), request_id.encode())
        batch = RequestBatch()
        hold = settings.inline_hold_request
        answered = response_sent = rejected = False
        seen = 0

        async def counting_receive() -> Message:
            # Only without a Content-Length (chunked): the server enforces a declared one.
            nonlocal seen, rejected
            if rejected:
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    # Answer 413 now; the app sees the client go away and gives up.
                    rejected = True
                    if not answered:
                        await send_and_hand_off(_PASS_THROUGH)
                        await _too_large(limit)(scope, receive, send)
                    return {"type": "http.disconnect"}
            return message

        async def send_and_hand_off(message: Message) -> None:
            nonlocal answered, response_sent
            if message is _PASS_THROUGH or message["type"] == "http.response.start":
                answered = True
                if message is _PASS_THROUGH:
                    return
                message = {**message, "headers": [*message.get("headers", ()), header]}
            if rejected:
                return  # the 413 has been sent; drop whatever the app answers
            await send(message)
            if message["type"] == "http.response.body" and not message.get("more_body", False):
                response_sent = True
                jobs = batch.close()
                if jobs and batch.failed:
                    abandon(jobs, "the request ended in an error answer", "request_failed")
                elif jobs and hold:
                    await asyncio.wrap_future(runtime.inline_executor().submit(
                        jobs, tracked=True))
                elif jobs:
                    runtime.inline_executor().submit(jobs)

        watch_server_thread()
        request_token = request_id_var.set(request_id)
        batch_token = batch_var.set(batch)
        try:
            await self.app(scope, receive if declared is not None else counting_receive,
                           send_and_hand_off)
        except Exception:
            if not rejected:
                raise
        finally:
            batch_var.reset(batch_token)
            request_id_var.reset(request_token)
            if not response_sent:
                leftover = batch.close()
                if leftover:
                    abandon(
                        leftover,
                        "the request failed before its response was sent",
                        "request_failed",
                    )


#: Marks the request answered without sending anything (the 413 goes out directly).
_PASS_THROUGH: Message = {"type": "dispatcher.answered"}


def _too_large(limit: int) -> JSONResponse:
    return _error(413, f"request body exceeds DISPATCH_MAX_PAYLOAD_BYTES={limit} bytes")


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


def _error(status: int, message: str, **extra: Any) -> JSONResponse:
    return JSONResponse({"detail": message, **extra}, status_code=status)


def _fail_batch() -> None:
    """Like ``BackgroundTasks``, jobs of a request that ends in an error do not run."""
    batch = batch_var.get()
    if batch is not None:
        batch.failed = True


async def _http_exception(request: Request, exc: Exception) -> Response:
    _fail_batch()
    assert isinstance(exc, StarletteHTTPException)
    return await http_exception_handler(request, exc)


async def _request_validation(request: Request, exc: Exception) -> Response:
    _fail_batch()
    assert isinstance(exc, RequestValidationError)
    return await request_validation_exception_handler(request, exc)


async def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    _fail_batch()
    assert isinstance(exc, TaskValidationError)
    return _error(422, str(exc), field=exc.field, errors=exc.errors)


async def _unknown_task(request: Request, exc: Exception) -> JSONResponse:
    _fail_batch()
    return _error(404, str(exc))


async def _broker_unavailable(request: Request, exc: Exception) -> JSONResponse:
    _fail_batch()
    response = _error(503, str(exc))
    response.headers["Retry-After"] = "5"
    return response


def install(app: FastAPI) -> FastAPI:
    """Bind ``app``'s requests to the dispatcher; call once, right after creating the app."""
    settings = get_settings()
    configure_logging(settings)
    import_task_modules(settings.task_modules)
    check_configuration(settings)
    app.add_middleware(DispatcherMiddleware)
    app.add_exception_handler(StarletteHTTPException, _http_exception)
    app.add_exception_handler(RequestValidationError, _request_validation)
    app.add_exception_handler(TaskValidationError, _validation_error)
    app.add_exception_handler(UnknownTaskError, _unknown_task)
    app.add_exception_handler(BrokerUnavailable, _broker_unavailable)

    inner = app.router.lifespan_context

    @asynccontextmanager
    async def lifespan(application: Any) -> AsyncIterator[Any]:
        async with inner(application) as state:
            yield state
        executor = runtime.current_inline_executor()
        if executor is not None:
            await anyio.to_thread.run_sync(executor.drain, get_settings().shutdown_grace)

    app.router.lifespan_context = lifespan
    return app
