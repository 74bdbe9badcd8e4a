"""The Celery route: publishing jobs to Redis, and running them inside a Celery worker.

Messages are plain Celery protocol-2 task messages (JSON body, the job id as task
id), so a stock Celery worker and Flower understand them. Our extra facts (attempt,
request id) ride in one ``dispatch`` header. Priorities map onto kombu's Redis
priority lists, where 0 is served first: our 9 (most urgent) becomes Celery's 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import threading
from typing import TYPE_CHECKING, Any

import redis
from celery import Celery
from celery.exceptions import Retry
from kombu.exceptions import OperationalError

from . import core, runtime
from .errors import BrokerUnavailable, ConfigurationError, TaskValidationError
from .events import emit
from .job import Job
from .registry import all_tasks
from .settings import DispatcherSettings

if TYPE_CHECKING:
    from .task import Task

HEADER = "dispatch"
VISIBILITY_TIMEOUT = 3600


def celery_priority(priority: int) -> int:
    """Our 0-9 scale (9 most urgent) onto kombu-Redis's (0 served first)."""
    return 9 - priority


def create_celery_app(settings: DispatcherSettings, main: str = "dispatcher") -> Celery:
    """A Celery app configured from our settings: JSON only, at-least-once, priorities on."""
    app = Celery(main, set_as_current=False)
    transport_options = {
        "priority_steps": list(range(10)),
        "visibility_timeout": VISIBILITY_TIMEOUT,
        "socket_timeout": settings.publish_timeout,
        "socket_connect_timeout": settings.publish_timeout,
    }
    app.conf.update(
        broker_url=settings.broker_url,
        result_backend=settings.results_url,
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],
        result_accept_content=["json"],
        event_serializer="json",
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        task_ignore_result=True,
        task_default_queue=settings.default_queue,
        task_publish_retry=False,
        broker_transport_options=transport_options,
        result_backend_transport_options={"visibility_timeout": VISIBILITY_TIMEOUT},
        broker_connection_retry_on_startup=True,
        broker_connection_timeout=settings.publish_timeout,
        worker_cancel_long_running_tasks_on_connection_loss=True,
        worker_send_task_events=True,
        enable_utc=True,
    )
    return app


class CeleryRoute:
    """Publishes jobs; the worker uses the same object to re-publish retries."""

    def __init__(self, settings: DispatcherSettings, app: Celery | None = None) -> None:
        self.settings = settings
        self.app = app if app is not None else create_celery_app(settings)

    def publish(self, job: Job, countdown: float | None = None) -> None:
        """Put ``job`` on its queue; ``BrokerUnavailable`` if the broker cannot take it."""
        if self.settings.broker_url is None:
            raise BrokerUnavailable(
                f"task {job.spec.name!r} is routed to Celery but no broker is configured "
                "(set DISPATCH_BROKER_URL)"
            )
        try:
            self.app.send_task(
                job.spec.name,
                args=(),
                kwargs=job.payload,
                task_id=job.id,
                queue=job.queue,
                priority=celery_priority(job.priority),
                countdown=countdown,
                headers={HEADER: job.meta()},
                retry=False,
            )
        except (OperationalError, ConnectionError, OSError, TimeoutError) as exc:
            raise BrokerUnavailable(f"could not publish task {job.id}: {exc}") from exc

    def ping(self, timeout: float = 0.5) -> bool:
        """Whether the broker answers within ``timeout`` seconds."""
        if self.settings.broker_url is None:
            return False
        client = redis.Redis.from_url(
            self.settings.broker_url, socket_timeout=timeout, socket_connect_timeout=timeout
        )
        try:
            return bool(client.ping())
        except (redis.RedisError, OSError):
            return False
        finally:
            client.close()

    def dispatch(self, job: Job, countdown: float | None) -> None:
        """Record, publish and announce a new job."""
        core.record(job, "PENDING")
        try:
            self.publish(job, countdown)
        except BrokerUnavailable:
            with contextlib.suppress(Exception):  # the store may be down with the broker
                runtime.status_store().delete(job.id)
            raise
        emit("task.dispatched", job)


# -- worker side ----------------------------------------------------------------------
_loop_lock = threading.Lock()
_loop: asyncio.AbstractEventLoop | None = None
_loop_pid = 0


def worker_loop() -> asyncio.AbstractEventLoop:
    """One persistent event loop per worker process for async tasks (not one per job)."""
    global _loop, _loop_pid
    with _loop_lock:
        if _loop is None or _loop.is_closed() or _loop_pid != os.getpid():
            _loop = asyncio.new_event_loop()
            _loop_pid = os.getpid()
        return _loop


def job_from_request(task: Task[Any, Any], request: Any, payload: dict[str, Any]) -> Job:
    meta = getattr(request, HEADER, None)
    meta = meta if isinstance(meta, dict) else {}
    delivery = getattr(request, "delivery_info", None) or {}
    priority = meta.get("priority")
    return Job(
        id=str(request.id),
        spec=task.spec,
        route="celery",
        queue=meta.get("queue") or delivery.get("routing_key"),
        priority=priority if isinstance(priority, int) else task.spec.priority,
        payload=payload,
        attempt=int(meta.get("attempt") or 1),
        request_id=meta.get("request_id"),
        dispatched_at=float(meta.get("dispatched_at") or 0.0),
    )


def execute(task: Task[Any, Any], request: Any, payload: dict[str, Any]) -> None:
    """Run one delivered message through the execution core and carry out its outcome."""
    job = job_from_request(task, request, payload)
    try:
        values = task.validator.decode(payload)
    except TaskValidationError as exc:
        core.reject(job, exc)
        return
    if task.spec.is_async:
        outcome = worker_loop().run_until_complete(core.run_async(job, values))
    else:
        outcome = core.run_sync(job, values)
    if outcome.retry_delay is not None:
        runtime.celery_route().publish(job.next_attempt(), countdown=outcome.retry_delay)
        # Tell Celery (and Flower) this run ended in a retry we already scheduled.
        raise Retry(str(outcome.error), when=outcome.retry_delay)  # type: ignore[arg-type]


def register_tasks(app: Celery) -> list[str]:
    """Register every ``@task`` with ``app`` under its own name; returns the names."""
    names = []
    for task in all_tasks():
        _register(app, task)
        names.append(task.spec.name)
    return names


def _register(app: Celery, task: Task[Any, Any]) -> None:
    def run(self: Any, /, **payload: Any) -> None:
        execute(task, self.request, payload)

    run.__name__ = task.spec.name.rsplit(".", 1)[-1]
    run.__doc__ = task.__doc__
    app.task(name=task.spec.name, bind=True, ignore_result=True, acks_late=True, typing=False)(run)


def require_broker(settings: DispatcherSettings) -> str:
    if settings.broker_url is None:
        raise ConfigurationError("DISPATCH_BROKER_URL is not set; a Celery worker needs a broker")
    return settings.broker_url


def worker_queues(settings: DispatcherSettings) -> list[str]:
    """Every queue a registered task can be routed to: the default, decorators', rules'."""
    queues = [settings.default_queue]
    queues += [t.spec.queue for t in all_tasks() if t.spec.queue]
    queues += [rule.queue for rule in settings.routes if rule.queue and rule.route == "celery"]
    return list(dict.fromkeys(queues))


def create_worker_app(settings: DispatcherSettings) -> Celery:
    """The worker's Celery app: imports task modules, registers every task, shares the route."""
    from .events import configure_logging
    from .registry import import_task_modules

    require_broker(settings)
    configure_logging(settings)
    import_task_modules(settings.task_modules)
    app = create_celery_app(settings, main="worker")
    register_tasks(app)
    runtime.use_celery_route(CeleryRoute(settings, app))
    return app
