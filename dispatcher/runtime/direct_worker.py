"""The direct consumer process of ``dispatcher worker`` (``DISPATCH_WORKER_CONSUMER=direct``,
``routes.celery.direct``); ``worker_layout`` lays out the supervisor's children."""

from __future__ import annotations

import logging
import os
import signal
import sys

from ..core.errors import DispatchError
from ..core.settings import get_settings
from ..routes.celery.direct import DirectConsumer
from ..routes.celery.liveness import beat_pause
from ..routes.celery.node_names import claim_name
from ..routes.celery.readiness import say_ready
from ..routes.celery.supervisor import (
    CONFIG_ERROR,
    DIRECT_NAME,
    DIRECT_NODE,
    DIRECT_QUEUES,
    once,
)
from ..routes.celery.worker import worker_queues
from ..routes.celery.worker_metrics import use_multiprocess_files
from .worker_app import create_worker_app

log = logging.getLogger("dispatcher.worker")


def run_direct_consumer() -> int:
    """The direct consumer process: runs until SIGTERM/SIGINT, then finishes its job."""
    hostname = os.environ[DIRECT_NAME]
    try:
        settings = get_settings()
        use_multiprocess_files()  # its metrics in the files the Celery process serves
        app = create_worker_app(settings)
    except DispatchError as exc:  # a configuration error: the supervisor gives up
        print(f"worker: {exc}", file=sys.stderr)
        return CONFIG_ERROR
    queues = [q for q in os.environ.get(DIRECT_QUEUES, "").split(",") if q] \
        or worker_queues(settings)
    consumer = DirectConsumer(app.dispatch_worker, hostname, queues,  # type: ignore[attr-defined]
                              os.environ.get(DIRECT_NODE))
    try:  # before its first beat, and before it gives back what its name held
        claim_name(consumer.client, hostname, settings.worker_dead_after,
                   beat_pause(settings.requeue_lost_after, settings.worker_dead_after))
    except DispatchError as exc:
        print(f"worker: {exc}", file=sys.stderr)
        return CONFIG_ERROR
    stop = once(consumer.stop)  # one handler for both: a nested second signal returns
    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    consumer.run(ready=say_ready)
    return 0
