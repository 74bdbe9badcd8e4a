"""The ``dispatcher`` command (also ``python -m dispatcher``).

- ``dispatcher worker [celery worker options]``: a supervised Celery worker for every
  registered task (``DISPATCH_TASK_MODULES``), consuming every queue they route to;
- ``dispatcher routes [--json]``: every registered task and where it goes, and why;
- ``dispatcher schedules [--json]``: every schedule, its last dispatch and next tick;
- ``dispatcher redis [--port 6379] [--dir .dispatch/redis]``: the embedded
  Redis-compatible server for development, on 127.0.0.1, its data kept in ``--dir``.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import os
import sys
from types import ModuleType

from ..core.errors import DispatchError
from ..core.settings import get_settings
from ..routes.celery.supervisor import CHILD_MARK, CONFIG_ERROR, end_with_supervisor, supervise
from ..runtime.worker_layout import DEFAULT_NODE_NAME, direct_layout


def _commands() -> ModuleType:
    """``cli.commands``, loaded when a command that needs the whole package runs: the
    worker's supervisor never does, so it starts its children (which load Celery and
    the task modules themselves) without first loading all of it too."""
    return importlib.import_module(".commands", __name__)


def worker(argv: list[str]) -> int:
    if os.environ.get(CHILD_MARK):
        if not end_with_supervisor():
            print("worker: the supervisor that started this process has ended; not "
                  "starting", file=sys.stderr)
            return 0
        return int(_commands().run_child(argv))
    try:
        direct = get_settings().worker_consumer == "direct"
    except DispatchError as exc:
        print(f"worker: {exc}", file=sys.stderr)
        return CONFIG_ERROR
    if direct:
        try:
            celery_argv, celery_env, consumers = direct_layout(argv, DEFAULT_NODE_NAME)
        except ValueError as exc:  # --concurrency 0, or not a number
            print(f"worker: {exc}", file=sys.stderr)
            return CONFIG_ERROR
        return supervise(celery_argv, others=consumers, celery_env=celery_env)
    return supervise(argv)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    # As ``python -m dispatcher`` does: the task modules of an app run from its own
    # directory import (the ``dispatcher`` script alone would not find them).
    with contextlib.suppress(OSError):  # not with -P / PYTHONSAFEPATH, nor a cwd gone
        if not sys.flags.safe_path and "" not in sys.path and os.getcwd() not in sys.path:
            sys.path.insert(0, os.getcwd())
    if argv[:1] == ["worker"]:  # everything after it goes to Celery, unparsed
        return worker(argv[1:])
    parser = argparse.ArgumentParser(prog="dispatcher", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parsers = parser.add_subparsers(dest="command", required=True)
    parsers.add_parser("worker", help="a supervised Celery worker for every registered task")
    routes_cmd = parsers.add_parser("routes", help="print every task's effective route")
    routes_cmd.add_argument("--json", action="store_true", help="machine-readable output")
    schedules_cmd = parsers.add_parser("schedules", help="every schedule, last and next run")
    schedules_cmd.add_argument("--json", action="store_true", help="machine-readable output")
    redis_cmd = parsers.add_parser("redis", help="the embedded Redis for development")
    redis_cmd.add_argument("--port", type=int, default=6379)
    redis_cmd.add_argument("--dir", default=".dispatch/redis",
                           help="data directory, kept across restarts")
    args = parser.parse_args(argv)
    commands = _commands()
    if args.command == "routes":
        return int(commands.routes(args.json))
    if args.command == "schedules":
        return int(commands.schedules(args.json))
    return int(commands.redis_server(args.port, args.dir))
