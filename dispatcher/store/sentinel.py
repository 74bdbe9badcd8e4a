"""Clients of the master that Redis Sentinels name, for ``sentinel://`` URL lists.

Each new connection asks the Sentinels where the master is (redis-py's
``SentinelConnectionPool``), so after a failover a client reaches the new master as
soon as its connection to the old one is dropped. A connection is dropped, and the
call fails as a ``ConnectionError`` (what the callers treat as "Redis is down": the
spool takes the job), when its server answers that it is not a master that may take
writes:

- ``READONLY``: it was demoted to a replica (redis-py does this for the plain reply;
  here also when a script's error carries it);
- ``NOREPLICAS``: with ``min-replicas-to-write`` (which a Sentinel deployment needs,
  see docs/deployment.md), a master that lost its replicas, as the old master does the
  moment its replica is promoted; without this it keeps taking writes until the
  Sentinels demote it, seconds later, and those writes are then lost.
"""

from __future__ import annotations

from typing import Any, cast

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry
from redis.sentinel import Sentinel, SentinelManagedConnection

from ..core.redis_url import SentinelOptions, parse_sentinel_url

#: Error replies meaning "this server is not a master that may take writes now".
NOT_A_WRITABLE_MASTER = ("NOREPLICAS", "READONLY")


class MasterConnection(SentinelManagedConnection):
    """A connection to the master named by the Sentinels when it connected, dropped
    as soon as that server stops being a writable master."""

    def read_response(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return super().read_response(*args, **kwargs)
        except redis.ResponseError as error:
            if not any(code in str(error) for code in NOT_A_WRITABLE_MASTER):
                raise
            self.disconnect()  # type: ignore[no-untyped-call]
            raise redis.ConnectionError(
                f"the master refuses writes, a failover may be under way: {error}"
            ) from error


def master_client(url: str, options: SentinelOptions, timeout: float) -> redis.Redis:
    """A client of ``options.master`` found through the Sentinels of ``url``: every
    call bounded by ``timeout``, no hidden retries. Finding the master asks the
    Sentinels in turn, each for a share of ``timeout``."""
    target = parse_sentinel_url(url)
    share = timeout / len(target.nodes)
    sentinel_kwargs: dict[str, Any] = {
        "socket_timeout": share,
        "socket_connect_timeout": share,
        "retry": Retry(NoBackoff(), 0),
    }
    if options.password is not None:
        sentinel_kwargs["password"] = options.password.get_secret_value()
    sentinels = Sentinel(list(target.nodes), sentinel_kwargs=sentinel_kwargs)
    client = sentinels.master_for(
        options.master,
        connection_class=MasterConnection,
        socket_timeout=timeout,
        socket_connect_timeout=timeout,
        retry=Retry(NoBackoff(), 0),
        health_check_interval=0,
        db=target.db,
        username=target.username,
        password=target.password,
    )
    return cast(redis.Redis, client)
