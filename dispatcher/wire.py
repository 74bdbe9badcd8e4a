"""Celery protocol-2 messages, written straight to Redis the way kombu stores them.

Publishing through Celery's ``apply_async`` costs a producer, an exchange lookup and
several round trips per job; here a job is one ``EVALSHA``: a Lua script that pushes
the message onto kombu's list for (queue, priority) *and* sets a publish marker, so a
job re-sent after a timeout or from the outage spool lands in the queue exactly once.
A stock ``celery worker`` consumes these messages unchanged.
"""

from __future__ import annotations

import base64
import json
import os
import socket
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from .job import Job

#: kombu's Redis transport: priority lists ``queue``, ``queue\x06\x163`` ... (0 served first).
PRIORITY_STEPS = (0, 3, 6, 9)
QUEUE_SEP = "\x06\x16"
HEADER = "dispatch"
MARKER_PREFIX = "dispatch:published:"
_ORIGIN = f"{os.getpid()}@{socket.gethostname()}"

# KEYS[1] marker, KEYS[2] list (queue), KEYS[3] record key (optional)
# ARGV[1] message, ARGV[2] marker ttl, ARGV[3] record json, ARGV[4] record ttl
_PUBLISH_ONCE = """
if redis.call('SET', KEYS[1], '1', 'NX', 'EX', ARGV[2]) then
  redis.call('LPUSH', KEYS[2], ARGV[1])
  if KEYS[3] and ARGV[3] ~= '' then
    redis.call('SET', KEYS[3], ARGV[3], 'EX', ARGV[4])
  end
  return 1
end
return 0
"""


def celery_priority(priority: int) -> int:
    """Our 0-9 scale (9 most urgent) onto kombu-Redis's (0 served first)."""
    return 9 - priority


def queue_key(queue: str, priority: int) -> str:
    """The Redis list kombu keeps for ``queue`` at our ``priority``."""
    wire = celery_priority(priority)
    step = max(s for s in PRIORITY_STEPS if s <= wire)
    return queue if step == 0 else f"{queue}{QUEUE_SEP}{step}"


def task_message(job: Job, countdown: float | None = None) -> dict[str, Any]:
    """The kombu envelope of a Celery protocol-2 message for ``job``."""
    eta = None
    if countdown:
        eta = (datetime.now(UTC) + timedelta(seconds=countdown)).isoformat()
    body = json.dumps(
        [[], job.payload, {"callbacks": None, "errbacks": None, "chain": None, "chord": None}]
    )
    wire_priority = celery_priority(job.priority)
    return {
        "body": base64.b64encode(body.encode()).decode(),
        "content-encoding": "utf-8",
        "content-type": "application/json",
        "headers": {
            "lang": "py",
            "task": job.spec.name,
            "id": job.id,
            "shadow": None,
            "eta": eta,
            "expires": None,
            "group": None,
            "group_index": None,
            "retries": job.attempt - 1,
            "timelimit": [None, None],
            "root_id": job.id,
            "parent_id": None,
            "argsrepr": "()",
            "kwargsrepr": "{...}",  # arguments may hold secrets: never echoed in events
            "origin": _ORIGIN,
            "ignore_result": True,
            "replaced_task_nesting": 0,
            "stamped_headers": None,
            "stamps": {},
            HEADER: job.meta(),
        },
        "properties": {
            "correlation_id": job.id,
            "reply_to": "",
            "delivery_mode": 2,
            "delivery_info": {"exchange": "", "routing_key": job.queue},
            "priority": wire_priority,
            "body_encoding": "base64",
            "delivery_tag": str(uuid.uuid4()),
        },
    }


def redis_client(url: str, timeout: float) -> redis.Redis:
    """A client whose every call gives up after ``timeout`` seconds, with no hidden retries."""
    return redis.Redis.from_url(
        url,
        socket_timeout=timeout,
        socket_connect_timeout=timeout,
        retry=Retry(NoBackoff(), 0),
        health_check_interval=0,
    )


class Publisher:
    """Pushes prepared messages onto their queues, each exactly once per job id."""

    def __init__(self, client: redis.Redis, marker_ttl: int, record_ttl: int) -> None:
        self.client = client
        self.marker_ttl = marker_ttl
        self.record_ttl = record_ttl
        self._script = client.register_script(_PUBLISH_ONCE)

    def publish(self, items: Sequence[tuple[str, str, str, str | None]]) -> list[bool]:
        """Publish ``(job_id, queue_key, message_json, record_json)`` items in one round trip.

        Returns, per item, whether it was pushed now (False: it was already published).
        Raises ``redis.RedisError``/``OSError`` when Redis does not answer in time.
        """
        from .status import KEY_PREFIX

        pipe = self.client.pipeline(transaction=False)
        for job_id, key, message, record in items:
            keys = [MARKER_PREFIX + job_id, key, KEY_PREFIX + job_id]
            args: list[str | int] = [message, self.marker_ttl, record or "", self.record_ttl]
            self._script(keys=keys, args=args, client=pipe)
        return [bool(result) for result in pipe.execute()]
