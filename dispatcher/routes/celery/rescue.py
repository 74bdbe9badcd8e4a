"""Giving back what a dead worker held, without waiting for the visibility timeout.

kombu keeps each message a worker took, until acknowledged, in its ``unacked`` hash
(indexed by delivery time) and puts it back only after the visibility timeout (an
hour by default). Our workers beat (``liveness``) and list what they hold at each
beat. An entry is an orphan when it was taken before the oldest live worker's last
beat (so every live taker would have listed it), no live worker lists it, it belongs
to a queue our workers consume, and no other kind of Celery worker (``fleet``) was
consuming that queue when it was taken. Any live worker may find it; the unacked entry
claims it in Redis, and kombu's ``restore_by_tag`` takes it in a ``WATCH``
transaction, so it goes back to its queue exactly once, however many workers try. An entry whose
job already has a terminal record (its worker died between the record and the
acknowledgement) is dropped instead.

The claim (``keys.rescue``) makes one worker the rescuer of each entry, and its log
line the only one.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable, Mapping
from typing import Any

import redis
from celery import Celery

from ...core.record import TERMINAL
from ...store import keys
from ...store.link import as_text
from .direct_take import record_status
from .liveness import held_by, live_workers

log = logging.getLogger("dispatcher.recovery")

#: How long a claim on one delivery of a dead worker's message is kept. A message keeps
#: its delivery tag when it goes back, so a claim names the tag and its delivery time.
CLAIM_SECONDS = 600

Sightings = Callable[[], tuple[float, Mapping[str, float]]]


class Rescuer:
    """One worker's share of the rescue; ``rescue`` is one pass of at most ``batch``."""

    def __init__(self, app: Celery, client: redis.Redis, hostname: str,
                 sightings: Sightings, batch: int = 500) -> None:
        self.app = app
        self.client = client
        self.hostname = hostname
        self.sightings = sightings
        self.batch = batch
        self._connection: Any = None

    def rescue(self) -> int:
        """One pass; returns how many messages went back to their queues."""
        live = live_workers(self.client)
        if self.hostname not in live or not all(b.complete for b in live.values()):
            return 0  # our own beat failed, or an older worker cannot say what it holds
        oldest = min(beat.at for beat in live.values())
        taken: list[tuple[Any, float]] = self.client.zrangebyscore(  # type: ignore[assignment]
            keys.KOMBU_UNACKED_INDEX, "-inf", f"({oldest!r}", 0, self.batch,
            withscores=True)
        if not taken:
            return 0
        held = held_by(self.client, live)
        orphans = [(as_text(tag), at) for tag, at in taken if as_text(tag) not in held]
        if not orphans:
            return 0
        ours = frozenset().union(*(beat.queues for beat in live.values()))
        observed_at, foreign = self.sightings()
        raws = self.client.hmget(keys.KOMBU_UNACKED, [tag for tag, _ in orphans])
        rescued = 0
        for (tag, taken_at), raw in zip(orphans, raws, strict=True):
            entry = _entry(raw)
            if entry is None:
                continue
            task_id, queue = entry
            if queue not in ours or observed_at < taken_at:
                continue  # not ours, or no look for other workers since it was taken
            if foreign.get(queue, -math.inf) >= taken_at:
                continue  # a stock Celery worker may hold it: the visibility timeout's
            if task_id is not None and record_status(self.client, task_id) in TERMINAL:
                self._drop(tag)
                continue
            if self._restore(tag, taken_at):
                rescued += 1
                log.warning("re-queued job %s from a dead worker (taken %.0f s before the "
                            "oldest live worker's last heartbeat, held by none)",
                            task_id, oldest - taken_at)
        return rescued

    def _drop(self, tag: str) -> None:
        with self.client.pipeline(transaction=True) as pipe:
            pipe.zrem(keys.KOMBU_UNACKED_INDEX, tag)
            pipe.hdel(keys.KOMBU_UNACKED, tag)
            pipe.execute()

    def _restore(self, tag: str, taken_at: float) -> bool:
        """Claim the entry, then put the message back with kombu's own restore (a
        ``WATCH`` transaction, so never twice, also against kombu's visibility restore);
        False if another worker claimed it."""
        claim = keys.rescue(f"{tag}:{taken_at!r}")
        if not self.client.set(claim, self.hostname, nx=True, ex=CLAIM_SECONDS):
            return False
        if self._connection is None:
            self._connection = self.app.connection_for_write()
        try:
            self._connection.default_channel.qos.restore_by_tag(tag)
            return True
        except Exception:
            connection, self._connection = self._connection, None
            connection.release()
            raise

    def close(self) -> None:
        if self._connection is not None:
            self._connection.release()
            self._connection = None


def _entry(raw: Any) -> tuple[str | None, str] | None:
    """(job id, queue) of one kombu unacked entry: ``[message, exchange, routing key]``."""
    if raw is None:
        return None
    try:
        message, _exchange, routing_key = json.loads(raw)
        headers = message.get("headers") or {}
        task_id = headers.get("id")
        return (str(task_id) if task_id else None), str(routing_key)
    except (ValueError, TypeError, AttributeError):
        return None
