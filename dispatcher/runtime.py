"""Process-wide services built lazily from the settings: status store, inline executor,
Celery route. ``settings.configure()`` resets them."""

from __future__ import annotations

import threading
import time
from typing import TYPE_CHECKING

import redis

from .deadletter import DeadLetterStore, MemoryDeadLetters, RedisDeadLetters
from .settings import get_settings
from .status import BufferedStatusStore, MemoryStatusStore, StatusStore

if TYPE_CHECKING:
    from .celery_route import CeleryRoute
    from .inline import InlineExecutor

_lock = threading.RLock()
_store: StatusStore | None = None
_executor: InlineExecutor | None = None
_celery: CeleryRoute | None = None
_redis: redis.Redis | None = None
_dead: DeadLetterStore | None = None


def redis_client() -> redis.Redis | None:
    """A client for the records Redis (result backend, else broker); None without one."""
    global _redis
    with _lock:
        if _redis is None:
            settings = get_settings()
            url = settings.results_url
            if url is None:
                return None
            from .wire import redis_client as make_client

            _redis = make_client(url, settings.publish_timeout)
        return _redis


_records_down_until = 0.0
RECORDS_BACKOFF = 5.0


def records_available() -> bool:
    """Whether the records Redis is worth a call now; False while it is known down.

    A call that fails marks it down (``records_failed``); with the broker's Redis the
    broker monitor's probe decides, so a hanging Redis costs one timeout, not one per
    dispatch.
    """
    settings = get_settings()
    if _celery is not None and settings.results_url == settings.broker_url:
        monitor = _celery.current_monitor()
        if monitor is not None and not monitor.healthy:
            return False
    return time.monotonic() >= _records_down_until


def records_failed(error: BaseException) -> None:
    global _records_down_until
    _records_down_until = time.monotonic() + RECORDS_BACKOFF
    settings = get_settings()
    if _celery is not None and settings.results_url == settings.broker_url:
        monitor = _celery.current_monitor()
        if monitor is not None:
            monitor.mark_down(error)


def status_store() -> StatusStore:
    global _store
    store = _store
    if store is not None:  # asked on every dispatch: no lock once built
        return store
    with _lock:
        if _store is None:
            client = redis_client()
            ttl = get_settings().result_ttl
            _store = (
                MemoryStatusStore()
                if client is None
                else BufferedStatusStore(client, ttl, on_error=records_failed)
            )
            _configure_store(_store)
        return _store


#: Set by the worker: pool processes poll for records to write (see ``poll_records``).
_records_poll: float | None = None


def poll_records(interval: float) -> None:
    """Make this process's records writer poll every ``interval`` seconds instead of
    waking on each save (Celery pool processes flush each job's records before its ack
    anyway; waking a thread per job costs a GIL hand-off)."""
    global _records_poll
    _records_poll = interval
    with _lock:
        if _store is not None:
            _configure_store(_store)


def _configure_store(store: StatusStore) -> None:
    if _records_poll is not None and isinstance(store, BufferedStatusStore):
        store.poll_every(_records_poll)


def dead_letters() -> DeadLetterStore:
    global _dead
    with _lock:
        if _dead is None:
            client = redis_client()
            _dead = MemoryDeadLetters() if client is None else RedisDeadLetters(client)
        return _dead


def inline_executor() -> InlineExecutor:
    global _executor
    executor = _executor
    if executor is not None:
        return executor
    with _lock:
        if _executor is None:
            from .inline import InlineExecutor

            settings = get_settings()
            _executor = InlineExecutor(settings.inline_concurrency, settings.inline_busy_share,
                                       settings.inline_max_hold)
        return _executor


def current_inline_executor() -> InlineExecutor | None:
    """The executor if this process has started one (shutdown must not create it)."""
    return _executor


def celery_route() -> CeleryRoute:
    global _celery
    route = _celery
    if route is not None:
        return route
    with _lock:
        if _celery is None:
            from .celery_route import CeleryRoute

            _celery = CeleryRoute(get_settings())
        return _celery


def use_celery_route(route: CeleryRoute) -> None:
    """Make ``route`` the process's Celery route (the worker shares its app this way)."""
    global _celery
    with _lock:
        _celery = route


def reset() -> None:
    """Forget every built service; the next use rebuilds it from the current settings."""
    global _store, _executor, _celery, _redis, _dead, _records_down_until
    with _lock:
        _records_down_until = 0.0
        executor, _executor = _executor, None
        _store, _celery, _redis, _dead = None, None, None, None
    if executor is not None:
        executor.shutdown(grace=0)
