"""The JSON answers ``install(app)`` gives the dispatcher's errors.

Every 422 has FastAPI's own shape, ``{"detail": [{"loc": [...], "msg": ..., "type": ...}]}``;
bad task arguments answer ``loc: ["arguments", <field>]``, ``type: "task_validation"``.
Like ``BackgroundTasks``, the inline jobs of a request that ends in an error never run.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Coroutine
from typing import Any

import redis
from fastapi import FastAPI, Request
from fastapi.exception_handlers import (
    http_exception_handler,
    request_validation_exception_handler,
)
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi.routing import APIRoute
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..core.context import batch_var
from ..core.errors import BrokerUnavailable, TaskValidationError, UnknownTaskError
from ..store.client import REDIS_UNREACHABLE

log = logging.getLogger("dispatcher.api")


def error_response(status: int, message: str, **extra: Any) -> JSONResponse:
    return JSONResponse({"detail": message, **extra}, status_code=status)


def too_large(limit: int) -> JSONResponse:
    return error_response(413, f"request body exceeds DISPATCH_MAX_PAYLOAD_BYTES={limit} bytes")


def validation_detail(exc: TaskValidationError) -> list[dict[str, Any]]:
    """``TaskValidationError`` in FastAPI's 422 shape, one item per bad argument."""
    return [{"loc": ["arguments", item.get("field") or "(arguments)"],
             "msg": str(item.get("message")), "type": "task_validation"}
            for item in exc.errors]


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
    return JSONResponse({"detail": validation_detail(exc)}, status_code=422)


async def _unknown_task(request: Request, exc: Exception) -> JSONResponse:
    _fail_batch()
    return error_response(404, str(exc))


async def _broker_unavailable(request: Request, exc: Exception) -> JSONResponse:
    _fail_batch()
    response = error_response(503, str(exc))
    response.headers["Retry-After"] = "5"
    return response


def store_unavailable(exc: BaseException) -> JSONResponse:
    """503 for an operator endpoint whose Redis (job records, queues) does not answer:
    the error's kind only, never its text (it may name hosts)."""
    response = error_response(
        503, f"the job store (Redis) is unavailable ({type(exc).__name__}); try again later")
    response.headers["Retry-After"] = "5"
    return response


class StoreRoute(APIRoute):
    """A route of the dispatcher's own endpoints: Redis unavailable answers
    ``store_unavailable``, not a 500 with a traceback in the log. Only these routes:
    an app's own endpoints keep their own handling of their own Redis errors."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def guarded(request: Request) -> Response:
            try:
                return await handler(request)
            except (redis.AuthenticationError, redis.exceptions.AuthorizationError):
                raise  # a wrong password will not pass by waiting: a 500, logged
            except REDIS_UNREACHABLE as exc:
                _fail_batch()
                log.warning("%s %s: Redis is unavailable (%s): answered 503",
                            request.method, request.url.path, type(exc).__name__)
                return store_unavailable(exc)

        return guarded


def add_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(StarletteHTTPException, _http_exception)
    app.add_exception_handler(RequestValidationError, _request_validation)
    app.add_exception_handler(TaskValidationError, _validation_error)
    app.add_exception_handler(UnknownTaskError, _unknown_task)
    app.add_exception_handler(BrokerUnavailable, _broker_unavailable)
