"""``dispatcher worker`` with ``DISPATCH_WORKER_CONSUMER=direct``: how the supervisor's
children are laid out, and the direct consumer process itself (``routes.celery.direct``).

The supervisor runs one Celery worker process, for what only Celery offers
(``inspect``, Flower's remote control, the upkeep: heartbeat, rescue, sweeper, delayed
jobs, schedules), consuming a control queue of its own only, and ``--concurrency``
direct consumers, each taking and running the task queues' messages itself.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import sys

from ..core.errors import DispatchError
from ..core.settings import get_settings
from ..routes.celery.direct import DirectConsumer
from ..routes.celery.supervisor import (
    CHILD_MARK,
    CONFIG_ERROR,
    DIRECT_CONSUMERS,
    DIRECT_NAME,
    DIRECT_NODE,
    DIRECT_QUEUES,
    Child,
)
from ..routes.celery.worker import worker_queues
from ..routes.celery.worker_metrics import use_multiprocess_files
from .worker_app import create_worker_app

log = logging.getLogger("dispatcher.worker")

#: The queue the Celery worker process beside direct consumers consumes: nothing is
#: published there; the process is for remote control and the upkeep.
CONTROL_QUEUE = "dispatch.control"


def _option(argv: list[str], short: str, long: str) -> tuple[str | None, list[str]]:
    """The value of a Celery worker option in ``argv``, and ``argv`` without it."""
    rest: list[str] = []
    value: str | None = None
    items = iter(argv)
    for arg in items:
        if arg in (short, long):
            value = next(items, None)
        elif arg.startswith(long + "="):
            value = arg.split("=", 1)[1]
        elif arg.startswith(short) and len(arg) > len(short) and not arg.startswith("--"):
            value = arg[len(short):]
        else:
            rest.append(arg)
    return value, rest


def direct_layout(argv: list[str], node_name: str,
                  ) -> tuple[list[str], dict[str, str], list[Child]]:
    """The Celery worker's options and environment, and the direct consumers to start
    beside it.

    ``--concurrency`` (default: the CPU count, as Celery's) is the number of direct
    consumers; ``--queues`` what they consume (default: every queue a registered task
    routes to, found by each consumer as it starts). The Celery process runs one
    ``solo`` slot on the control queue. Consumer ``i`` of node ``name@host`` is
    ``name-direct<i>@host``, the same after a restart: a worker started again on the
    same node name gives back at once what its consumers held when it died. So, as
    for Celery, no two running workers may share a node name."""
    concurrency, rest = _option(argv, "-c", "--concurrency")
    queues, rest = _option(rest, "-Q", "--queues")
    hostname, rest = _option(rest, "-n", "--hostname")
    count = int(concurrency) if concurrency else (os.cpu_count() or 1)
    if count < 1:
        raise ValueError("--concurrency must be at least 1")
    name, _, host = (hostname or node_name).partition("@")
    host = (host or "%h").replace("%h", socket.gethostname())
    node = f"{name}@{host}"
    names = [f"{name}-direct{i}@{host}" for i in range(1, count + 1)]
    consumers = [Child([sys.executable, "-m", "dispatcher", "worker"],
                       {DIRECT_NAME: hostname, DIRECT_QUEUES: queues or "", DIRECT_NODE: node},
                       label=f"direct consumer {i}", quick_restart=True)
                 for i, hostname in enumerate(names, 1)]
    celery = [*rest, "--pool", "solo", "--concurrency", "1", "--queues", CONTROL_QUEUE,
              "--hostname", node]
    return celery, {DIRECT_CONSUMERS: ",".join(names)}, consumers


def is_direct_child() -> bool:
    return bool(os.environ.get(CHILD_MARK) and os.environ.get(DIRECT_NAME))


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
    signal.signal(signal.SIGTERM, lambda *_: consumer.stop())
    signal.signal(signal.SIGINT, lambda *_: consumer.stop())
    consumer.run()
    return 0
