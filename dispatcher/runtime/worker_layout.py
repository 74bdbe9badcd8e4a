"""How ``dispatcher worker`` lays out its children with ``DISPATCH_WORKER_CONSUMER=direct``:
one Celery worker process, for what only Celery offers (``inspect``, Flower's remote
control, the upkeep: heartbeat, rescue, sweeper, delayed jobs, schedules), consuming a
control queue of its own only, and ``--concurrency`` direct consumers
(``direct_worker``), each taking and running the task queues' messages itself.

Light on purpose: the supervisor imports it, and starts its children before anything
heavier is loaded.
"""

from __future__ import annotations

import os
import socket
import sys

from ..routes.celery.supervisor import (
    CHILD_MARK,
    DIRECT_CONSUMERS,
    DIRECT_NAME,
    DIRECT_NODE,
    DIRECT_QUEUES,
    Child,
)

#: The Celery node name of ``dispatcher worker`` unless ``-n``/``--hostname`` is given.
DEFAULT_NODE_NAME = "dispatcher@%h"
#: The queue the Celery worker process beside direct consumers consumes: nothing is
#: published there; the process is for remote control and the upkeep.
CONTROL_QUEUE = "dispatch.control"


def worker_option(argv: list[str], short: str, long: str) -> tuple[str | None, list[str]]:
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
    concurrency, rest = worker_option(argv, "-c", "--concurrency")
    queues, rest = worker_option(rest, "-Q", "--queues")
    hostname, rest = worker_option(rest, "-n", "--hostname")
    count = os.cpu_count() or 1
    if concurrency:
        count = int(concurrency) if concurrency.isdigit() else 0
    if count < 1:
        raise ValueError(f"--concurrency must be a whole number of at least 1, "
                         f"not {concurrency!r}")
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
