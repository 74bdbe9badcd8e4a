"""FastAPI integration: ``install(app)`` binds each request to the dispatcher.

It adds an ASGI middleware that gives every request an id (``X-Request-ID``, or a new
one) and a batch for its inline jobs. Once the response has been sent, the batch goes
to the inline executor as one chain, which is when ``BackgroundTasks`` would start;
the connection is not held while the jobs run. It also maps the dispatcher's errors to
JSON answers and drains the executor at shutdown.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
from fastapi import FastAPI

from ..core.registry import import_task_modules
from ..core.settings import get_settings
from ..observability.logging import configure_logging
from ..ops.checks import check_configuration
from ..routes.celery.delayed import DelayRelay
from ..runtime.container import built, current
from .errors import add_error_handlers
from .middleware import DispatcherMiddleware


def install(app: FastAPI) -> FastAPI:
    """Bind ``app``'s requests to the dispatcher; call once, right after creating the app.

    Settings are read now (``DISPATCH_*``, ``.env``); change them later with
    ``dispatcher.configure(...)``, which the middleware follows from the next request.
    """
    settings = get_settings()
    configure_logging(settings)
    import_task_modules(settings.task_modules)
    check_configuration(settings)
    app.add_middleware(DispatcherMiddleware)
    add_error_handlers(app)

    inner = app.router.lifespan_context

    @asynccontextmanager
    async def lifespan(application: Any) -> AsyncIterator[Any]:
        # Report this process's inline executor for the fleet view (uvicorn --workers).
        await anyio.to_thread.run_sync(lambda: current().inline_fleet.start())
        relay = await anyio.to_thread.run_sync(_delay_relay)
        async with inner(application) as state:
            yield state
        if relay is not None:
            relay.stop()
        runtime = built()
        if runtime is not None:
            runtime.inline_fleet.stop()
        executor = runtime.inline.current_executor() if runtime is not None else None
        if executor is not None:
            await anyio.to_thread.run_sync(executor.drain, get_settings().shutdown_grace)
        celery = runtime.built_celery() if runtime is not None else None
        if celery is not None:  # spilled-over jobs still held: published or spooled
            await anyio.to_thread.run_sync(celery.close)

    app.router.lifespan_context = lifespan
    return app


def _delay_relay() -> DelayRelay | None:
    """This process's relay of due delayed jobs, with ``DISPATCH_RELAY_DELAYED_IN_API``
    (workers always run one)."""
    settings = get_settings()
    if not settings.relay_delayed_in_api or settings.broker_url is None:
        return None
    return DelayRelay(current().celery.monitor.publisher.client).start()
