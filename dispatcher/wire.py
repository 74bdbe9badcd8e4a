"""Celery protocol-2 messages, written straight to Redis the way kombu stores them.

Publishing through Celery's ``apply_async`` costs a producer, an exchange lookup and
several round trips per job; here a job is one ``EVALSHA``: a Lua script that pushes
the message onto kombu's list for (queue, priority) *and* sets a publish marker, so a
job re-sent after a timeout or from the outage spool lands in the queue exactly once.
A stock ``celery worker`` consumes these messages unchanged.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import json
import logging
import os
import socket
import time
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from .job import Job

log = logging.getLogger("dispatcher.wire")

#: kombu's Redis transport: priority lists ``queue``, ``queue\x06\x163`` ... (0 served first).
PRIORITY_STEPS = (0, 3, 6, 9)
QUEUE_SEP = "\x06\x16"
HEADER = "dispatch"
MARKER_PREFIX = "dispatch:published:"
_ORIGIN = f"{os.getpid()}@{socket.gethostname()}"

INFLIGHT = "dispatch:inflight"

# Publishes a batch: ARGV[1] marker ttl, ARGV[2] record ttl, ARGV[3] now, ARGV[4] a JSON
# array with four strings per job: publish id, queue key, message, record ('' for none).
# One argument for the whole batch: redis-py packs arguments one by one in Python.
# The marker holds "<queue key>\n<message>" until a worker starts the job (then "1"),
# so the sweeper can put back a message that Redis lost between queue and worker.
# Keys are built inside the script: the dispatcher needs a single (non-cluster) Redis.
_PUBLISH_ONCE = r"""
local pushed = 0
local jobs = cjson.decode(ARGV[4])
for base = 1, #jobs, 4 do
  local pid, queue, message, record = jobs[base], jobs[base + 1], jobs[base + 2], jobs[base + 3]
  if redis.call('SET', 'dispatch:published:' .. pid, queue .. '\n' .. message,
                'NX', 'EX', ARGV[1]) then
    redis.call('LPUSH', queue, message)
    redis.call('ZADD', 'dispatch:inflight', ARGV[3], pid)
    if record ~= '' then
      local job = string.match(pid, '^(.*):%d+$')
      redis.call('SET', 'celery-task-meta-' .. job, record, 'EX', ARGV[2])
      redis.call('ZADD', 'dispatch:jobs', ARGV[3], job)
    end
    pushed = pushed + 1
  end
end
return pushed
"""


def celery_priority(priority: int) -> int:
    """Our 0-9 scale (9 most urgent) onto kombu-Redis's (0 served first)."""
    return 9 - priority


def queue_key(queue: str, priority: int) -> str:
    """The Redis list kombu keeps for ``queue`` at our ``priority``."""
    wire = celery_priority(priority)
    step = max(s for s in PRIORITY_STEPS if s <= wire)
    return queue if step == 0 else f"{queue}{QUEUE_SEP}{step}"


def queue_keys(queue: str) -> list[str]:
    """Every Redis list kombu may keep for ``queue`` (one per priority step)."""
    return [queue if step == 0 else f"{queue}{QUEUE_SEP}{step}" for step in PRIORITY_STEPS]


def queue_depths(client: redis.Redis, queues: Sequence[str]) -> dict[str, int]:
    """Messages waiting in each queue, all priorities together (one round trip)."""
    pipe = client.pipeline(transaction=False)
    for queue in queues:
        for key in queue_keys(queue):
            pipe.llen(key)
    counts = pipe.execute()
    steps = len(PRIORITY_STEPS)
    return {q: int(sum(counts[i * steps:(i + 1) * steps])) for i, q in enumerate(queues)}


_EMBED = ', {"callbacks": null, "errbacks": null, "chain": null, "chord": null}]'


def encode_body(payload: dict[str, Any]) -> str:
    """Protocol 2's ``[args, kwargs, embed]`` body, JSON then base64 as kombu stores it."""
    body = "[[], " + json.dumps(payload) + _EMBED
    return base64.b64encode(body.encode()).decode()


def task_messages(jobs: Sequence[Job], countdown: float | None = None) -> list[str]:
    """JSON messages for jobs that differ only in id and arguments (a ``dispatch_many``
    batch): the envelope is serialised once and each job's id and body substituted."""
    first = jobs[0]
    token, body_token = f"<{os.urandom(8).hex()}>", f"<{os.urandom(8).hex()}>"
    envelope = task_message(dataclasses.replace(first, id=token), countdown)
    envelope["body"] = body_token
    template = json.dumps(envelope)
    return [
        template.replace(token, job.id).replace(body_token, encode_body(job.payload))
        for job in jobs
    ]


def task_message(job: Job, countdown: float | None = None) -> dict[str, Any]:
    """The kombu envelope of a Celery protocol-2 message for ``job``."""
    eta = None
    if countdown:
        eta = (datetime.now(UTC) + timedelta(seconds=countdown)).isoformat()
    wire_priority = celery_priority(job.priority)
    return {
        "body": encode_body(job.payload),
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
            "delivery_tag": job.publish_id,  # unique per publication, as kombu needs
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


# KEYS[1] marker, KEYS[2] in-flight index, KEYS[3] kombu's unacked hash; ARGV[1] publish
# id, ARGV[2] now. Puts back a job that was published, never started, and is neither
# waiting in its queue nor reserved by a worker: Redis lost it (a crash between a
# worker's BRPOP and its bookkeeping). Atomic, so it cannot race a consumer's pop.
_RECOVER = r"""
local held = redis.call('GET', KEYS[1])
if not held or held == '1' then
  redis.call('ZREM', KEYS[2], ARGV[1])
  return 0
end
local cut = string.find(held, '\n', 1, true)
local queue = string.sub(held, 1, cut - 1)
local message = string.sub(held, cut + 1)
local tag = cjson.decode(message)['properties']['delivery_tag']
if redis.call('HEXISTS', KEYS[3], tag) == 1 then return 0 end
if redis.call('LPOS', queue, message) then return 0 end
redis.call('LPUSH', queue, message)
redis.call('ZADD', KEYS[2], ARGV[2], ARGV[1])
return 1
"""


def mark_started(pipe: Any, publish_id: str) -> None:
    """Queue the commands that tell the sweeper this publication reached a worker."""
    pipe.zrem(INFLIGHT, publish_id)
    pipe.set(MARKER_PREFIX + publish_id, "1", xx=True, keepttl=True)


class Sweeper:
    """Finds publications that never reached a worker and were lost, and re-queues them.

    Runs in the worker's main process; looks only at jobs published more than
    ``after`` seconds ago and still not started, at most ``batch`` per pass.
    """

    def __init__(self, client: redis.Redis, after: float, batch: int = 200) -> None:
        self.client = client
        self.after = after
        self.batch = batch
        self._script = client.register_script(_RECOVER)

    def sweep(self) -> int:
        now = time.time()
        stale = self.client.zrangebyscore(INFLIGHT, "-inf", now - self.after, 0, self.batch)
        recovered = 0
        for raw in stale:
            publish_id = raw.decode() if isinstance(raw, bytes) else str(raw)
            keys = [MARKER_PREFIX + publish_id, INFLIGHT, "unacked"]
            if self._script(keys=keys, args=[publish_id, now]):
                recovered += 1
                log.warning("re-queued job %s: published but lost before a worker took it",
                            publish_id)
        return recovered


class Publisher:
    """Pushes prepared messages onto their queues, each exactly once per job id."""

    def __init__(self, client: redis.Redis, marker_ttl: int, record_ttl: int) -> None:
        self.client = client
        self.marker_ttl = marker_ttl
        self.record_ttl = record_ttl
        # EVALSHA straight away: redis-py's Script in a pipeline asks SCRIPT EXISTS first,
        # a second round trip per publication.
        self._sha = hashlib.sha1(_PUBLISH_ONCE.encode()).hexdigest()

    def publish(self, items: Sequence[tuple[str, str, str, str | None]]) -> int:
        """Publish ``(publish_id, queue_key, message_json, record_json)`` items in one round
        trip; returns how many were pushed now (the others had been published already).

        Raises ``redis.RedisError``/``OSError`` when Redis does not answer in time.
        """
        try:
            return self._send(items)
        except redis.exceptions.NoScriptError:  # Redis restarted and forgot the script
            self.client.script_load(_PUBLISH_ONCE)
            return self._send(items)

    def _send(self, items: Sequence[tuple[str, str, str, str | None]]) -> int:
        flat: list[str] = []
        for publish_id, key, message, record in items:
            flat += (publish_id, key, message, record or "")
        return int(self.client.evalsha(
            self._sha, 0, self.marker_ttl, self.record_ttl, time.time(), json.dumps(flat)
        ))
