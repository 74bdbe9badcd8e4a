"""The ASGI middleware ``install(app)`` adds: a request id, a batch of inline jobs
handed to the executor once the response has been sent, the body size limit."""

from __future__ import annotations

import asyncio
import re

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ..core.context import RequestBatch, batch_var, request_id_var
from ..core.job import new_request_id
from ..core.settings import get_settings
from ..runtime.container import current
from .errors import too_large

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
            await too_large(limit)(scope, receive, send)
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
                        await too_large(limit)(scope, receive, send)
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
                    current().inline.abandon(jobs, "the request ended in an error answer",
                                           "request_failed")
                elif jobs and hold:
                    # The runtime of now, not of the request's start (a reset between).
                    await asyncio.wrap_future(current().inline.executor.submit(
                        jobs, tracked=True))
                elif jobs:
                    current().inline.executor.submit(jobs)

        current().load.watch_server_thread()
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
                    current().inline.abandon(
                        leftover,
                        "the request failed before its response was sent",
                        "request_failed",
                    )


#: Marks the request answered without sending anything (the 413 goes out directly).
_PASS_THROUGH: Message = {"type": "dispatcher.answered"}
