"""``python -m bench.lean_probe [processes]``: a measuring probe, not a worker to run.

It answers one question for the redesign proposed in ``bench/README.md``: what does a
job cost when our own consumer takes it, instead of Celery's consumer and prefork pool?
Each process takes messages from the default queue itself (no hand-off to another
process) and runs each through the worker's own execution (``CeleryWorker.execute``:
validation, run count, cancel mark, records flushed before the ack, events, retries),
so the work per job is the product's. What it leaves out is what a real consumer must
add: Celery's remote control (``inspect``, Flower), the upkeep (heartbeat, rescue,
sweeper, delayed jobs), non-default queues, messages that are not ours or are
unreadable, and time limits. Run by the peers table as the opt-in ``lean-probe``
column (``BENCH_PEERS=ours,lean-probe ...``).

Per job: one write that carries the last job's acknowledgement and the next take
(``lua/take.lua``: the message popped and written down as kombu writes it, with our
bookkeeping), then the records flush. When the queue is empty, ``BRPOP`` waits, and the
message it returns is written down (kombu's entry, our bookkeeping) before it runs, in
one transaction: two round trips, as in our Celery worker.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import signal
import sys
import time
from types import SimpleNamespace
from typing import Any

#: kombu's Redis transport keys for unacknowledged messages (its defaults).
UNACKED, UNACKED_INDEX = "unacked", "unacked_index"


def serve() -> None:
    from dispatcher.core.registry import all_tasks
    from dispatcher.core.settings import get_settings
    from dispatcher.routes.celery.delivery import delivery_commands
    from dispatcher.routes.celery.protocol import queue_keys
    from dispatcher.runtime.worker_app import create_worker_app
    from dispatcher.store import keys
    from dispatcher.store.link import Link
    from dispatcher.store.scripts import TAKE

    settings = get_settings()
    worker = create_worker_app(settings).dispatch_worker  # type: ignore[attr-defined]
    client = worker.route.monitor.publisher.client
    client.script_load(TAKE.source)
    tasks = {t.spec.name: t for t in all_tasks()}
    link = Link(client)
    lists = queue_keys(settings.default_queue)
    fixed = [UNACKED_INDEX, UNACKED, keys.INFLIGHT]
    take = ("EVALSHA", TAKE.sha, len(fixed) + len(lists), *fixed, *lists)
    ttl = settings.result_ttl
    tail = (ttl, keys.MARKER_PREFIX, keys.CANCEL_PREFIX, keys.RUNS_PREFIX, keys.TAKEN_PREFIX)
    stopping: list[int] = []
    signal.signal(signal.SIGTERM, lambda number, _: stopping.append(number))
    owed: list[tuple[Any, ...]] = []  # the last job's acknowledgement, sent with the take
    while not stopping:
        link.send([*owed, (*take, repr(time.time()), *tail)])
        for _ in owed:
            link.read()
        owed = []
        reply = link.read()
        if reply:
            item, counted = reply[1], [int(reply[3]), int(reply[4])]
        else:
            popped = link.call("BRPOP", *lists, 1)
            if not popped:
                continue
            item = popped[1]
            counted = _write_down(link, json.loads(item), item, ttl, delivery_commands)
        message = json.loads(item)
        headers, properties = message["headers"], message["properties"]
        args, kwargs, _ = json.loads(base64.b64decode(message["body"]))
        runs, cancelled = counted
        request = SimpleNamespace(id=headers["id"], delivery_info=properties["delivery_info"],
                                  dispatch=headers.get("dispatch"),
                                  dispatch_delivery=[runs if runs >= 0 else None,
                                                     bool(cancelled)])
        with contextlib.suppress(Exception):  # a failed or retried job is acknowledged too
            worker.execute(tasks[headers["task"]], request, kwargs, tuple(args))
        owed = [("MULTI",), ("ZREM", UNACKED_INDEX, properties["delivery_tag"]),
                ("HDEL", UNACKED, properties["delivery_tag"]),
                ("DEL", keys.taken(headers["id"])), ("EXEC",)]
    for command in owed:
        link.send([command])
        link.read()


def _write_down(link: Any, message: dict[str, Any], item: bytes, ttl: int,
                delivery_commands: Any) -> list[int]:
    """kombu's unacknowledged entry and our bookkeeping for a message ``BRPOP`` took."""
    properties, headers = message["properties"], message["headers"]
    info = properties["delivery_info"]
    entry = json.dumps([json.loads(item), info["exchange"], info["routing_key"]])
    publication = f"{headers['id']}:{headers['dispatch'].get('attempt') or 1}"
    commands = [("MULTI",), ("ZADD", UNACKED_INDEX, time.time(), properties["delivery_tag"]),
                ("HSET", UNACKED, properties["delivery_tag"], entry),
                *delivery_commands(publication, ttl), ("EXEC",)]
    link.send(commands)
    replies = [link.read() for _ in commands]
    done = replies[-1]
    return [int(done[5]), int(done[4])]  # the run count and the cancel mark's answer


def main(argv: list[str]) -> None:
    sys.path.insert(0, os.getcwd())  # the task modules, as ``python -m worker`` finds them
    children = []
    for _ in range(int(argv[0]) if argv else 2):
        pid = os.fork()
        if pid == 0:
            serve()
            os._exit(0)
        children.append(pid)
    signal.signal(signal.SIGTERM, lambda *_: [os.kill(c, signal.SIGTERM) for c in children])
    for child in children:
        while True:
            try:
                os.waitpid(child, 0)
                break
            except InterruptedError:
                continue


if __name__ == "__main__":
    main(sys.argv[1:])
