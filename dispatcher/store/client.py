"""Redis clients as the dispatcher uses them: every call bounded, no hidden retries."""

from __future__ import annotations

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

#: What a Redis call raises when Redis is down or does not answer in time.
REDIS_ERRORS: tuple[type[BaseException], ...] = (redis.RedisError, OSError)


def redis_client(url: str, timeout: float) -> redis.Redis:
    """A client whose every call gives up after ``timeout`` seconds, with no hidden retries."""
    return redis.Redis.from_url(
        url,
        socket_timeout=timeout,
        socket_connect_timeout=timeout,
        retry=Retry(NoBackoff(), 0),
        health_check_interval=0,
    )
