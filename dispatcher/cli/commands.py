"""The ``dispatcher`` commands that load the whole package: the worker's children (the
Celery worker process and the direct consumers), ``routes``, ``schedules`` and ``redis``.
``dispatcher.cli`` imports this module only when one of them runs."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from celery.utils.nodenames import default_nodename, host_format

from ..core.errors import DispatchError
from ..core.registry import import_task_modules
from ..core.settings import DispatcherSettings, get_settings
from ..ops.routes_table import aligned, format_table
from ..routes.celery.liveness import beat_pause
from ..routes.celery.node_names import claim_name
from ..routes.celery.supervisor import CONFIG_ERROR, install_alarm
from ..routes.celery.worker import worker_queues
from ..runtime.container import current
from ..runtime.direct_worker import run_direct_consumer
from ..runtime.scheduler import schedule_rows
from ..runtime.worker_app import create_worker_app
from ..runtime.worker_layout import DEFAULT_NODE_NAME, is_direct_child, worker_option
from ..store.client import client_for
from ..store.embedded import EmbeddedRedis
from ..store.schedules import ScheduleState


def run_child(argv: list[str]) -> int:
    """A child of the worker's supervisor: a direct consumer, or the Celery worker."""
    return run_direct_consumer() if is_direct_child() else run_worker(argv)


def run_worker(argv: list[str]) -> int:
    """Run the Celery worker in this process (the supervisor's child)."""
    try:
        settings = get_settings()
        app = create_worker_app(settings)
    except DispatchError as exc:
        print(f"worker: {exc}", file=sys.stderr)
        return CONFIG_ERROR
    args = ["worker", "--loglevel", settings.log_level]
    if not settings.worker_mingle:
        # Mingle asks the other workers for revoked ids at start-up and waits ~1 s for
        # answers; we never revoke, so a worker starts a second sooner without it.
        args.append("--without-mingle")
    if not _given(argv, "-Q", "--queues"):
        args += ["--queues", ",".join(worker_queues(settings))]
    if not _given(argv, "-n", "--hostname"):
        # Not Celery's "celery@host": a stock worker on the same host must not share
        # the name, or the sweeper could not tell the two apart (see routes.celery.fleet).
        args += ["--hostname", DEFAULT_NODE_NAME]
    try:
        claim_name(current().celery.monitor.publisher.client, node_name([*args, *argv]),
                   settings.worker_dead_after,
                   beat_pause(settings.requeue_lost_after, settings.worker_dead_after))
    except DispatchError as exc:
        print(f"worker: {exc}", file=sys.stderr)
        return CONFIG_ERROR
    install_alarm()
    app.worker_main([*args, *argv])
    return 0


def node_name(argv: list[str]) -> str:
    """The node name Celery gives a worker started with ``argv``."""
    name, _ = worker_option(argv, "-n", "--hostname")
    return str(host_format(default_nodename(name or DEFAULT_NODE_NAME)))


def _given(argv: list[str], short: str, long: str) -> bool:
    return any(a in (short, long) or a.startswith(long + "=") for a in argv)


def _listing(read: Callable[[DispatcherSettings], list[dict[str, Any]]], as_json: bool,
             table: Callable[[list[dict[str, Any]]], str], nothing: str) -> int:
    """Print ``read``'s rows as JSON or as a table (``nothing`` when there are none)."""
    try:
        settings = get_settings()
        import_task_modules(settings.task_modules)
        rows = read(settings)
    except DispatchError as exc:
        print(f"dispatcher: {exc}", file=sys.stderr)
        return 2
    if as_json:
        print(json.dumps(rows, indent=2))
    elif rows:
        print(table(rows))
    else:
        print(nothing, file=sys.stderr)
    return 0


def routes(as_json: bool) -> int:
    return _listing(lambda _: current().route_table(), as_json, format_table,
                    "no tasks registered (set DISPATCH_TASK_MODULES)")


def schedules(as_json: bool) -> int:
    def read(settings: DispatcherSettings) -> list[dict[str, Any]]:
        url = settings.broker_url  # where the workers' schedulers keep their state
        return schedule_rows(settings, None if url is None
                             else ScheduleState(client_for(settings, url)))

    def table(rows: list[dict[str, Any]]) -> str:
        return aligned(["TASK", "SCHEDULE", "ARGUMENTS", "LAST RUN", "NEXT RUN", "LAST JOB"], [
            [row["task"], f"{row['schedule']} ({row['timezone']})", json.dumps(row["kwargs"]),
             _when(row["last_run"]), _when(row["next_run"]), row["last_task_id"] or "-"]
            for row in rows])

    return _listing(read, as_json, table,
                    "no schedules (@task(schedule=...) or DISPATCH_SCHEDULES)")


def _when(stamp: float | None) -> str:
    return "-" if stamp is None else time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(stamp))


def redis_server(port: int, data_dir: str) -> int:
    folder = Path(data_dir)
    folder.mkdir(parents=True, exist_ok=True)
    try:
        server = EmbeddedRedis(port=port, data_dir=str(folder)).start()
    except DispatchError as exc:
        print(f"dispatcher: {exc}; choose another with --port", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # Ctrl-C while it started: start() already stopped it
        return 130
    try:  # from here on, Ctrl-C (even during the print) stops the server
        print(f"embedded Redis on {server.url} (pid {server.pid}), data in {folder}; "
              f"set DISPATCH_BROKER_URL={server.url}; Ctrl-C stops it", flush=True)
        while server.process is not None and server.process.poll() is None:
            time.sleep(0.5)
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()
    return 0
