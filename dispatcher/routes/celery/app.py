"""The Celery app of both sides (publisher and worker), configured from our settings:
JSON only, at-least-once (late acks, prefetch 1 and a spare while jobs are short),
priorities on, our consumer."""

from __future__ import annotations

from typing import Any

from celery import Celery

from ...core.redis_url import is_sentinel_url, parse_sentinel_url
from ...core.settings import DispatcherSettings
from ...store import keys
from .spare import SPARE_BELOW_OPTION
from .transport import COUNT_RUNS_OPTION, RUNS_TTL_OPTION, transport_for

#: How long kombu's restore lock outlives a worker that died holding it.
RESTORE_LOCK_SECONDS = 10


def create_celery_app(settings: DispatcherSettings, main: str = "dispatcher") -> Celery:
    """A Celery app configured from our settings: JSON only, at-least-once, priorities on."""
    app = Celery(main, set_as_current=False)
    keys.use_namespace(settings.namespace)
    prefix = {"global_keyprefix": keys.PREFIX} if keys.PREFIX else {}
    transport_options = {
        **prefix,
        "visibility_timeout": settings.visibility_timeout,
        # Sweep for jobs of dead workers often enough to honour the visibility timeout
        # (kombu's defaults only look every ~100 s).
        "unacked_restore_interval": max(1, min(10, settings.visibility_timeout // 10)),
        "unacked_restore_throttle": 1,
        # One restore pass takes milliseconds, but kombu keeps its lock 300 s by default:
        # a worker killed while it held the lock (SIGKILL, OOM) would stop every restore
        # in the fleet, its own lost jobs included, for five minutes.
        "unacked_mutex_expire": RESTORE_LOCK_SECONDS,
        # Our worker's delivery bookkeeping (``transport``): the run count is kept on
        # the broker when the records store is the broker's.
        RUNS_TTL_OPTION: settings.result_ttl,
        COUNT_RUNS_OPTION: settings.results_url == settings.broker_url,
        SPARE_BELOW_OPTION: settings.worker_spare_below,
        "socket_timeout": settings.publish_timeout,
        "socket_connect_timeout": settings.publish_timeout,
        **sentinel_options(settings, settings.broker_url),
    }
    app.conf.update(
        broker_url=settings.broker_url,
        broker_transport=transport_for(settings.broker_url),
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
        result_backend_transport_options={"visibility_timeout": settings.visibility_timeout,
                                          **prefix,
                                          **sentinel_options(settings, settings.results_url)},
        broker_connection_retry_on_startup=True,
        broker_connection_retry=True,
        broker_connection_max_retries=None,
        broker_connection_timeout=settings.publish_timeout,
        # A master that lost its replicas (a failover under way, see store.sentinel)
        # refuses the consumer's BRPOP with an error reply: reconnect through the
        # Sentinels rather than stop the worker.
        broker_channel_error_retry=is_sentinel_url(settings.broker_url or ""),
        # Running jobs finish when the broker connection drops. Cancelling them loses
        # them: Celery then fails to record the cancel in the (down) result backend,
        # takes the job for revoked and acknowledges it once Redis is back (the chaos
        # soak lost 0-12 jobs per Redis stop). Left running, a job whose ack is lost
        # stays in kombu's unacked hash, and the rescue drops it once its record is
        # terminal (or re-queues it if its worker dies).
        worker_cancel_long_running_tasks_on_connection_loss=False,
        worker_send_task_events=settings.worker_events,
        worker_consumer="dispatcher.routes.celery.consumer:DispatchConsumer",
        enable_utc=True,
    )
    return app


def sentinel_options(settings: DispatcherSettings, url: str | None) -> dict[str, Any]:
    """The transport options kombu's ``SentinelChannel`` and Celery's ``SentinelBackend``
    read for a ``sentinel://`` URL list (none for another URL): the master's name, and
    how to reach the Sentinels (their password; each asked for a share of the publish
    timeout, as ``store.sentinel`` does, since these options replace the timeouts
    redis-py would otherwise copy from the server connections)."""
    sentinel = settings.sentinel
    if url is None or sentinel is None or not is_sentinel_url(url):
        return {}
    share = settings.publish_timeout / len(parse_sentinel_url(url).nodes)
    sentinel_kwargs: dict[str, Any] = {"socket_timeout": share, "socket_connect_timeout": share}
    if sentinel.password is not None:
        sentinel_kwargs["password"] = sentinel.password.get_secret_value()
    return {"master_name": sentinel.master, "sentinel_kwargs": sentinel_kwargs}
