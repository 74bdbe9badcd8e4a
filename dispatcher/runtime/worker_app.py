"""The worker process's composition: its Celery app, with every registered task, the
shared route and runtime, the sweeper, the scheduler and the metrics endpoint wired to
Celery's signals. ``worker.app`` (this repository) and ``dispatcher worker`` both use it."""

from __future__ import annotations

import logging
import os

from celery import Celery
from celery.signals import worker_process_init, worker_ready, worker_shutdown

from ..core.registry import import_task_modules
from ..core.settings import DispatcherSettings, get_settings
from ..observability.logging import configure_logging
from ..ops.checks import check_configuration
from ..routes.celery.app import create_celery_app
from ..routes.celery.supervisor import DIRECT_CONSUMERS
from ..routes.celery.upkeep import Upkeep, start_upkeep
from ..routes.celery.worker import CeleryWorker, require_broker
from ..routes.celery.worker_metrics import install_worker_metrics
from ..store.schedules import ScheduleState
from .container import configure, current, poll_records
from .scheduler import Scheduler

#: How often a pool process writes what a running job reported (progress); each job's
#: records are written before its message is acknowledged in any case.
WORKER_RECORDS_POLL = 0.1


#: Celery's loggers of per-job lines: "received" (main process), "succeeded" (pool).
CELERY_TASK_LOGGERS = ("celery.worker.strategy", "celery.app.trace")


def quiet_celery_task_logs() -> None:
    """Celery's per-job INFO lines off (warnings and errors stay): our events carry the
    same facts in our format. Celery reads the levels when its worker starts."""
    for name in CELERY_TASK_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)


def create_worker_app(settings: DispatcherSettings) -> Celery:
    """The worker's Celery app: imports task modules, registers every task, shares the
    route and the runtime with them."""
    require_broker(settings)
    if settings is not get_settings():
        configure(settings)
    configure_logging(settings)
    if not settings.worker_task_logs:
        quiet_celery_task_logs()
    import_task_modules(settings.task_modules)
    app = create_celery_app(settings, main="worker")
    # The process's current app, so Celery's tools that use ``current_app`` find our
    # result backend (Flower's /api/task/result reads job records through it).
    app.set_current()
    runtime = current()
    route = runtime.use_celery_app(app)
    worker = CeleryWorker(settings, route, runtime.execution, runtime.redis)
    app.dispatch_worker = worker  # type: ignore[attr-defined]  # read by our consumer
    worker.register_tasks(app)
    check_configuration(settings, app.conf)
    poll_records(WORKER_RECORDS_POLL)
    upkeep: list[Upkeep | Scheduler] = []

    def ready(sender: object, **_: object) -> None:
        direct = [n for n in os.environ.get(DIRECT_CONSUMERS, "").split(",") if n]
        upkeep.append(start_upkeep(route, sender, direct))
        upkeep.append(Scheduler(settings, ScheduleState(route.monitor.publisher.client)).start())

    worker_ready.connect(ready, weak=False)

    def stop_upkeep(**_: object) -> None:
        for duty in upkeep:
            duty.stop()

    worker_shutdown.connect(stop_upkeep, weak=False)
    worker_process_init.connect(lambda **_: worker.connect_early(), weak=False)
    install_worker_metrics(settings)  # /metrics from the main process, once the pool forked
    return app
