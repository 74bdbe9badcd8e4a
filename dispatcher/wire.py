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
import math
import os
import socket
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, Generic, TypeVar

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from .job import Job
from .link import LUA_HELPERS, Link, as_text, join_fields

log = logging.getLogger("dispatcher.wire")

#: kombu's Redis transport: priority lists ``queue``, ``queue\x06\x163`` ... (0 served first).
PRIORITY_STEPS = (0, 3, 6, 9)
QUEUE_SEP = "\x06\x16"
HEADER = "dispatch"
MARKER_PREFIX = "dispatch:published:"
_ORIGIN = f"{os.getpid()}@{socket.gethostname()}"

INFLIGHT = "dispatch:inflight"

# Publishes a batch: ARGV[1] marker ttl, ARGV[2] record ttl, ARGV[3] now, ARGV[4] the
# number of jobs, ARGV[5] four fields per job (``join_fields``): publish id, queue key,
# message, record ('' for none).
# The marker holds "<queue key>\n<message>" until a worker starts the job (then "1"),
# so the sweeper can put back a message that Redis lost between queue and worker.
# Pushes and index entries are gathered and sent as one command per run of jobs: each
# redis.call has a fixed cost that dominated the script's time when paid per job.
# Keys are built inside the script: the dispatcher needs a single (non-cluster) Redis.
_PUBLISH_ONCE = LUA_HELPERS + r"""
local marker_ttl, record_ttl, now = ARGV[1], ARGV[2], ARGV[3]
local field = fields(ARGV[5])
local pushed, run_queue, run, inflight, index = 0, nil, {}, {}, {}
for _ = 1, tonumber(ARGV[4]) do
  local pid, queue, message, record = field(), field(), field(), field()
  if redis.call('SET', 'dispatch:published:' .. pid, queue .. '\n' .. message,
                'NX', 'EX', marker_ttl) then
    if queue ~= run_queue then
      if run_queue then bulk('LPUSH', run_queue, run) end
      run_queue, run = queue, {}
    end
    run[#run + 1] = message
    inflight[#inflight + 1] = now
    inflight[#inflight + 1] = pid
    if record ~= '' then
      local job = string.match(pid, '^(.*):%d+$')
      redis.call('SET', 'celery-task-meta-' .. job, record, 'EX', record_ttl)
      index[#index + 1] = now
      index[#index + 1] = job
    end
    pushed = pushed + 1
  end
end
if run_queue then bulk('LPUSH', run_queue, run) end
bulk('ZADD', 'dispatch:inflight', inflight)
bulk('ZADD', 'dispatch:jobs', index)
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


class MessageTemplate:
    """The message of jobs that differ only in id and arguments (a ``dispatch_many``
    batch), serialised once: each job's message is the template with its id and body
    substituted, and its size is known before it is built."""

    def __init__(self, first: Job, countdown: float | None = None) -> None:
        self._id_token, self._body_token = f"<{os.urandom(8).hex()}>", f"<{os.urandom(8).hex()}>"
        envelope = task_message(dataclasses.replace(first, id=self._id_token), countdown)
        envelope["body"] = self._body_token
        self.text = json.dumps(envelope)
        self._ids = self.text.count(self._id_token)
        self._fixed = (len(self.text) - self._ids * len(self._id_token)
                       - len(self._body_token))

    def size(self, job_id: str, body: str) -> int:
        """The length of ``render(job_id, body)``, without building it."""
        return self._fixed + self._ids * len(job_id) + len(body)

    def render(self, job_id: str, body: str) -> str:
        return self.text.replace(self._id_token, job_id).replace(self._body_token, body)


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
# ARGV[3] (``Verdict``) 'ask': only answer such a job's queue key; 'drop': stop watching
# it (-1: a stock worker ran it); otherwise re-queue it (1). Anything else answers 0.
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
if ARGV[3] == 'ask' then return queue end
if ARGV[3] == 'drop' then
  redis.call('ZREM', KEYS[2], ARGV[1])
  return -1
end
redis.call('LPUSH', queue, message)
redis.call('ZADD', KEYS[2], ARGV[2], ARGV[1])
return 1
"""


def started_commands(publish_id: str) -> list[tuple[Any, ...]]:
    """The commands that tell the sweeper this publication reached a worker."""
    return [("ZREM", INFLIGHT, publish_id),
            ("SET", MARKER_PREFIX + publish_id, "1", "XX", "KEEPTTL")]


class Sweeper:
    """Finds publications that never reached a worker and were lost, and re-queues them.

    Runs in the worker's main process; looks only at jobs published more than
    ``after`` seconds ago and still not started, at most ``batch`` per pass.

    A lost publication looks exactly like one a stock Celery worker ran: only our
    workers mark a job started. ``sightings`` (read once a job looks lost) tells when
    our workers last looked for other kinds of worker, and per queue until when one
    counts as consuming it (``fleet``). A job that left such a queue after its
    publication is presumed run there, and no longer watched; one that left any other
    queue is re-queued once our workers have looked since it was found gone (a later
    pass: a stock worker that took it would have been seen then).
    """

    def __init__(self, client: redis.Redis, after: float, batch: int = 200,
                 sightings: Callable[[], tuple[float, Mapping[str, float]]] | None = None
                 ) -> None:
        self.client = client
        self.after = after
        self.batch = batch
        self.sightings = sightings
        #: Publication -> when a pass first found it gone from its queue, unstarted.
        self._suspects: dict[str, float] = {}
        self._script = client.register_script(_RECOVER)

    def sweep(self) -> int:
        """One pass; returns how many publications were re-queued."""
        now = time.time()
        stale: list[tuple[Any, float]] = self.client.zrangebyscore(  # type: ignore[assignment]
            INFLIGHT, "-inf", now - self.after, 0, self.batch, withscores=True)
        seen: tuple[float, Mapping[str, float]] | None = None
        recovered = left = 0
        for raw, published in stale:
            publish_id = as_text(raw)
            keys = [MARKER_PREFIX + publish_id, INFLIGHT, "unacked"]
            if self.sightings is None:
                outcome = self._script(keys=keys, args=[publish_id, now])
            else:
                outcome = self._script(keys=keys, args=[publish_id, now, "ask"])
                if isinstance(outcome, bytes | str):  # it looks lost: its queue key
                    if seen is None:
                        seen = self.sightings()
                    queue = as_text(outcome).split(QUEUE_SEP)[0]
                    suspected_at = self._suspects.setdefault(publish_id, now)
                    verdict = _verdict(seen, queue, published, suspected_at)
                    if verdict == "wait":
                        continue
                    outcome = self._script(keys=keys, args=[publish_id, now, verdict])
                self._suspects.pop(publish_id, None)
            if outcome == 1:
                recovered += 1
                log.warning("re-queued job %s: published but lost before a worker took it",
                            publish_id)
            elif outcome == -1:
                left += 1
        # Forget suspects no longer among the oldest (resolved, maybe by another worker).
        looked_at = {as_text(raw) for raw, _ in stale}
        self._suspects = {p: at for p, at in self._suspects.items() if p in looked_at}
        if left:
            log.info("%d job(s) left their queue without a dispatcher worker starting them; "
                     "presumed run by the other Celery workers seen on their queues", left)
        return recovered


def _verdict(seen: tuple[float, Mapping[str, float]], queue: str, published: float,
             suspected_at: float) -> str:
    """What to do with a job published at ``published`` and found gone from ``queue``,
    unstarted, at ``suspected_at``: ``drop`` it if a stock worker consumed the queue
    since its publication (it ran there); ``requeue`` it once our workers have looked
    since it was found gone and seen none; until then ``wait``."""
    observed_at, until = seen
    if until.get(queue, -math.inf) >= published:
        return "drop"
    return "requeue" if observed_at >= suspected_at else "wait"


PublishItem = tuple[str, str, str, str | None]
"""``(publish_id, queue_key, message_json, record_json)``: one job to publish."""

Tag = TypeVar("Tag")


class Publisher:
    """Pushes prepared messages onto their queues, each exactly once per job id."""

    def __init__(self, client: redis.Redis, marker_ttl: int, record_ttl: int) -> None:
        self.client = client
        self.marker_ttl = marker_ttl
        self.record_ttl = record_ttl
        # EVALSHA straight away: redis-py's Script in a pipeline asks SCRIPT EXISTS first,
        # a second round trip per publication.
        self._sha = hashlib.sha1(_PUBLISH_ONCE.encode()).hexdigest()

    def publish(self, items: Sequence[PublishItem]) -> int:
        """Publish ``items`` in one round trip; returns how many were pushed now (the
        others had been published already).

        Raises ``redis.RedisError``/``OSError`` when Redis does not answer in time.
        """
        try:
            return int(self.client.evalsha(*self.command(items)[1:]))
        except redis.exceptions.NoScriptError:  # Redis restarted and forgot the script
            self.client.script_load(_PUBLISH_ONCE)
            return int(self.client.evalsha(*self.command(items)[1:]))

    def command(self, items: Sequence[PublishItem]) -> tuple[Any, ...]:
        """The ``EVALSHA`` command (name first) that publishes ``items``."""
        fields: list[str] = []
        for publish_id, key, message, record in items:
            fields += (publish_id, key, message, record or "")
        try:
            data = join_fields(fields)
        except ValueError:
            raise ValueError("a queue name or publish id holds a NUL character") from None
        return ("EVALSHA", self._sha, 0, self.marker_ttl, self.record_ttl, time.time(),
                len(items), data)

    def stream(self) -> PublishStream[Any]:
        return PublishStream(self)


class PublishStream(Generic[Tag]):
    """Publish calls pipelined on one connection: Redis runs one batch while the caller
    prepares and sends the next, instead of the two taking turns.

    ``send`` a batch with a tag of your choosing; ``receive`` returns the oldest batch's
    tag and count once Redis confirmed it. An error is raised (a broken connection is
    dropped, see ``Link``): the batches still in ``abandon()`` were not confirmed (some
    may have been published; re-sending them is safe, the publish markers skip those).
    """

    def __init__(self, publisher: Publisher) -> None:
        self._publisher = publisher
        self._link = Link(publisher.client)  # this stream's own connection
        self._in_flight: deque[tuple[Tag, Sequence[PublishItem]]] = deque()
        self._confirmed: deque[tuple[Tag, int]] = deque()

    def __len__(self) -> int:
        """Batches sent and not yet returned by ``receive``."""
        return len(self._in_flight) + len(self._confirmed)

    def send(self, tag: Tag, items: Sequence[PublishItem]) -> None:
        command = self._publisher.command(items)
        self._in_flight.append((tag, items))  # unconfirmed from here on, even if this fails
        self._link.send([command])

    def receive(self) -> tuple[Tag, int]:
        if self._confirmed:
            return self._confirmed.popleft()
        if not self._in_flight:
            raise RuntimeError("receive() without a batch in flight")
        try:
            count = int(self._link.read())
        except redis.exceptions.NoScriptError:
            self._load_and_resend()
            return self._confirmed.popleft()
        tag, _ = self._in_flight.popleft()
        return tag, count

    def _load_and_resend(self) -> None:
        """Redis did not know the script (first use, or a ``SCRIPT FLUSH``), so the
        batches sent after the oldest were refused too: read their replies, load the
        script, re-send the refused ones in order. Until all that succeeded, every batch
        stays unconfirmed (re-sending one that did land is skipped by its markers)."""
        counts: list[int | None] = [None]
        for _ in range(1, len(self._in_flight)):
            try:
                counts.append(int(self._link.read()))
            except redis.exceptions.NoScriptError:
                counts.append(None)
        self._publisher.client.script_load(_PUBLISH_ONCE)
        confirmed = [
            (tag, self._publisher.publish(items) if count is None else count)
            for (tag, items), count in zip(self._in_flight, counts, strict=True)
        ]
        self._in_flight.clear()
        self._confirmed.extend(confirmed)

    def abandon(self) -> list[Tag]:
        """The tags of the batches sent and not confirmed; forgets them (batches already
        confirmed are still returned by ``receive``)."""
        tags = [tag for tag, _ in self._in_flight]
        self._in_flight.clear()
        return tags

    def close(self) -> None:
        """Give the connection back (dropped if replies are still unread)."""
        self._link.close()
