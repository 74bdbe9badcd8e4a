"""Redis clients as the dispatcher uses them: every call bounded, no hidden retries."""

from __future__ import annotations

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from ..core.errors import ConfigurationError
from ..core.redis_url import SentinelOptions, is_sentinel_url
from ..core.settings import DispatcherSettings
from .sentinel import NOT_A_WRITABLE_MASTER, master_client

#: What a Redis call raises when Redis is down or does not answer in time.
REDIS_ERRORS: tuple[type[BaseException], ...] = (redis.RedisError, OSError)
#: Of those, the connection's own failures (Redis away, too slow), not an error reply.
REDIS_UNREACHABLE: tuple[type[BaseException], ...] = (
    redis.ConnectionError, redis.TimeoutError, OSError)

#: Error replies of a server that takes no writes for now (full, lost its replicas,
#: demoted, failing to save, busy with a script), as redis-py raises them.
_REFUSING_CLASSES = (redis.exceptions.OutOfMemoryError, redis.exceptions.ReadOnlyError,
                     redis.exceptions.TryAgainError)
_REFUSING_CODES = (*NOT_A_WRITABLE_MASTER, "MISCONF", "MASTERDOWN", "BUSY ", "OOM")


def refuses_writes(error: BaseException) -> bool:
    """Whether ``error`` says Redis takes no writes *for now* (try again later), as
    opposed to refusing this command for good (a bad script, a missing permission).
    A script's error carries the code of the command that failed inside it."""
    if isinstance(error, _REFUSING_CLASSES):
        return True
    text = str(error)
    return isinstance(error, redis.ResponseError) and any(
        text.startswith(code) or f" {code}" in text or f"-{code}" in text
        for code in _REFUSING_CODES)


def redis_client(url: str, timeout: float, sentinel: SentinelOptions | None = None
                 ) -> redis.Redis:
    """A client whose every call gives up after ``timeout`` seconds, with no hidden retries.

    For a ``sentinel://`` URL list (``sentinel`` then names the master), a client of
    whichever server the Sentinels name master when it connects: after a failover its
    next connection goes to the new master.
    """
    if is_sentinel_url(url):
        if sentinel is None:
            raise ConfigurationError("a sentinel:// URL needs DISPATCH_SENTINEL_MASTER")
        return master_client(url, sentinel, timeout)
    return redis.Redis.from_url(
        url,
        socket_timeout=timeout,
        socket_connect_timeout=timeout,
        retry=Retry(NoBackoff(), 0),
        health_check_interval=0,
    )


def client_for(settings: DispatcherSettings, url: str) -> redis.Redis:
    """``redis_client`` for one of the URLs of ``settings``: bounded by their publish
    timeout, with their Sentinel options."""
    return redis_client(url, settings.publish_timeout, settings.sentinel)
