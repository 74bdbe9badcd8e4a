"""Worker heartbeats: which of our workers are alive, what each holds, which tasks each has.

Each worker's main process beats every few seconds: one key that expires after
``DISPATCH_WORKER_DEAD_AFTER`` (the heartbeat, with the worker's queues and task names),
the set of delivery tags it holds (taken from Redis, not yet acknowledged: prefetched,
running or waiting for a countdown), and for each of its tasks the time it last
advertised it. A worker whose heartbeat expired is dead; ``rescue`` gives back what it
held. A worker that does not have a task hands its messages back while another live
worker advertises that task (``consumer``).
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import redis

from ...store import keys
from ...store.link import as_text
from .node_names import owner

#: Workers that have not beaten for this long are dropped from ``keys.WORKERS``.
FORGET_AFTER = 86_400.0


@dataclass(frozen=True, slots=True)
class Beat:
    """One live worker's last heartbeat. ``at`` is ``-inf`` for a worker of an older
    version, which announces itself without saying what it holds."""

    at: float
    queues: frozenset[str]
    tasks: frozenset[str]

    @property
    def complete(self) -> bool:
        return self.at > -math.inf


def beat_pause(requeue_lost_after: float, dead_after: float) -> float:
    """Seconds between beats: three fit in a heartbeat's life, and the sweep (every
    ``requeue_lost_after / 2``) rides on them."""
    return max(1.0, min(10.0, requeue_lost_after / 2, dead_after / 3))


class Heartbeat:
    """This worker's beat. ``held`` lists the delivery tags the worker holds; ``queues``
    the queues it consumes (both read at each beat: they change with reconnections)."""

    def __init__(self, client: redis.Redis, hostname: str, dead_after: float,
                 tasks: Iterable[str], held: Callable[[], Iterable[str]],
                 queues: Callable[[], Iterable[str]]) -> None:
        self.client = client
        self.hostname = hostname
        self.dead_after = dead_after
        self.tasks = sorted(tasks)
        self.held = held
        self.queues = queues
        self._owner = owner()  # which process beats (``node_names``)

    def beat(self) -> float:
        """Write one heartbeat; returns its time."""
        now = time.time()
        tags = sorted(set(self.held()))
        lifetime = max(1, int(self.dead_after * 1000))
        if self._owner["pid"] != os.getpid():  # made before a fork
            self._owner = owner()
        value = json.dumps({"at": now, "queues": sorted(set(self.queues())),
                            "tasks": self.tasks, **self._owner})
        held = keys.held(self.hostname)
        with self.client.pipeline(transaction=True) as pipe:
            pipe.set(keys.worker(self.hostname), value, px=lifetime)
            pipe.delete(held)
            if tags:
                pipe.sadd(held, *tags)
                pipe.pexpire(held, lifetime)
            pipe.zadd(keys.WORKERS, {self.hostname: now})
            if self.tasks:
                pipe.hset(keys.ADVERTISED, mapping=dict.fromkeys(self.tasks, repr(now)))
            pipe.execute()
        return now

    def stop(self) -> None:
        """A worker that stops cleanly says so (kombu gives back what it held)."""
        self.client.delete(keys.worker(self.hostname), keys.held(self.hostname))
        self.client.zrem(keys.WORKERS, self.hostname)


def live_workers(client: redis.Redis, now: float | None = None) -> dict[str, Beat]:
    """Every worker of ours whose heartbeat has not expired, by hostname."""
    now = time.time() if now is None else now
    client.zremrangebyscore(keys.WORKERS, "-inf", now - FORGET_AFTER)
    hosts = [as_text(h) for h in client.zrange(keys.WORKERS, 0, -1)]
    if not hosts:
        return {}
    beats = client.mget([keys.worker(host) for host in hosts])
    live = {}
    for host, raw in zip(hosts, beats, strict=True):
        if raw is not None:
            live[host] = _parse(raw)
    return live


def _parse(raw: Any) -> Beat:
    try:
        value = json.loads(raw)
        return Beat(float(value["at"]), frozenset(value.get("queues") or ()),
                    frozenset(value.get("tasks") or ()))
    except (ValueError, TypeError, KeyError):
        return Beat(-math.inf, frozenset(), frozenset())


def held_by(client: redis.Redis, hosts: Iterable[str]) -> set[str]:
    """The delivery tags the given workers held at their last beats, and those handed to
    them at publish that they have not taken yet (``handoff``)."""
    names = [name for host in hosts for name in (keys.held(host), keys.handed(host))]
    return {as_text(tag) for tag in client.sunion(names)} if names else set()


def last_advertised(client: redis.Redis, task_name: str) -> float | None:
    """When a live worker last advertised ``task_name`` (None: never, or forgotten)."""
    raw = client.hget(keys.ADVERTISED, task_name)
    return None if raw is None else float(raw)


def consumer_holdings(consumer: Any) -> tuple[Callable[[], list[str]],
                                                Callable[[], list[str]]]:
    """For a Celery worker's consumer: the delivery tags it holds and the queues it
    consumes. Held: what its channel delivered and has not acknowledged (kombu's
    ``QoS._delivered``), and every request Celery has reserved or is running (still
    there while the channel is replaced after a lost connection)."""
    from celery.worker import state

    def held() -> list[str]:
        channel = getattr(consumer.task_consumer, "channel", None)
        delivered: Mapping[Any, Any] = getattr(getattr(channel, "qos", None),
                                               "_delivered", None) or {}
        for _ in range(5):  # another thread may add one while we copy
            try:
                tags = list(delivered)
                requests = [*state.reserved_requests, *state.active_requests]
                break
            except RuntimeError:
                continue
        else:
            raise RuntimeError("could not read the held deliveries")
        tags += [getattr(r.message, "delivery_tag", None) for r in requests]
        return [str(tag) for tag in tags if tag is not None]

    def queues() -> list[str]:
        task_consumer = consumer.task_consumer
        return [str(q.name) for q in getattr(task_consumer, "queues", ()) or ()]

    return held, queues
