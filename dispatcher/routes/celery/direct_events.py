"""Celery's task events from direct consumers (what Flower's task view shows), and
``celery inspect active`` / ``active_queues`` answered for them by their node's Celery
process.

Flower switches task events on by remote control, which reaches the node's Celery
process only (the consumers listen to no control queue). That process says at each
upkeep pass whether they are on (``events_switch``); each consumer looks at it with
a take about once a second and sends the events Celery's consumer and request would send, under its
own hostname: ``task-received``, ``task-started``, then ``task-succeeded``,
``task-failed`` or ``task-retried``. Arguments go out as the message's
``argsrepr``/``kwargsrepr`` (ours hide them), never as values.
"""

from __future__ import annotations

import json
import logging
import time
import traceback
from collections.abc import Callable
from typing import Any

import redis
from celery import Celery
from celery.exceptions import Retry
from celery.utils.saferepr import saferepr

from ...core.errors import TaskFailed
from ...core.ports import RegisteredTask
from ...store import keys
from .direct_take import read_holding, record_status
from .liveness import live_workers
from .taken import TakenMessage
from .worker import CeleryWorker

log = logging.getLogger("dispatcher.worker")

#: Seconds a node's "task events on" word outlives the upkeep pass that wrote it.
SWITCH_TTL = 60
#: Seconds between a consumer's looks at its node's switch (one command, with a take).
LOOK_EVERY = 1.0


def task_events_on(consumer: Any) -> bool:
    """Whether a Celery worker's consumer sends task events now (Celery's own test:
    its dispatcher enabled, and the ``task`` group among its groups if it has any)."""
    dispatcher = getattr(consumer, "event_dispatcher", None)
    if dispatcher is None or not dispatcher.enabled:
        return False
    groups = dispatcher.groups
    return not groups or "task" in groups


def publish_switch(client: redis.Redis, node: str, on: bool) -> None:
    """The node's Celery process: tell its direct consumers whether to send events."""
    if on:
        client.set(keys.events_switch(node), "1", ex=SWITCH_TTL)
    else:
        client.delete(keys.events_switch(node))


class TaskEvents:
    """One direct consumer's task events: off until ``refresh`` finds them switched on
    (or ``always``, ``DISPATCH_WORKER_EVENTS``)."""

    def __init__(self, app: Celery, client: redis.Redis, hostname: str, node: str,
                 always: bool) -> None:
        self.app = app
        self.client = client
        self.hostname = hostname
        self.node = node
        self.always = always
        self.on = always
        self._dispatcher: Any = None
        self._looked = 0.0

    def run(self, worker: CeleryWorker, task: RegisteredTask, message: TakenMessage) -> None:
        """Run ``message`` through ``worker.execute`` between its task events; one that
        failed or was retried is recorded and acknowledged as any other."""
        started = self.started(message)
        try:
            result = worker.execute(task, message, message.kwargs, tuple(message.args))
        except Exception as exc:
            self.ended(message, started, error=exc)
            if not isinstance(exc, Retry | TaskFailed):
                log.exception("task %s (%s) ended with an error outside the task: %s",
                              message.id, message.task, exc)
            return
        self.ended(message, started, result)

    def switch_key(self) -> str | None:
        """The key of the node's switch (None: always on, never read)."""
        return None if self.always else keys.events_switch(self.node)

    def look(self, now: float, idle: bool = False) -> list[tuple[Any, ...]]:
        """The command that reads the node's switch, at most once a ``LOOK_EVERY``
        (sent with a take; its reply goes to ``seen``); each time when ``idle`` (sent
        with what a ``BRPOP`` brought: a job after a quiet spell, say the first one
        after Flower switched the events on, is never run with a stale switch)."""
        if self.always or (not idle and now - self._looked < LOOK_EVERY):
            return []
        self._looked = now
        return [("EXISTS", keys.events_switch(self.node))]

    def seen(self, *replies: Any) -> None:
        """The switch as ``look``'s commands found it (the last reply counts)."""
        for reply in replies:
            self.on = bool(int(reply))

    def _send(self, kind: str, **fields: Any) -> None:
        try:
            if self._dispatcher is None:
                self._dispatcher = self.app.events.Dispatcher(
                    self.app.connection_for_write(), hostname=self.hostname, enabled=True,
                    buffer_while_offline=False)
            self._dispatcher.send(kind, **fields)
        except Exception as exc:  # a monitor never stops a job (Redis away, or worse)
            log.debug("task event %s not sent: %s", kind, exc)
            self.close()

    def started(self, message: TakenMessage) -> float:
        """``task-received`` and ``task-started``; the time it started."""
        now = time.time()
        if self.on:
            headers = message.headers
            self._send("task-received", uuid=message.id, name=message.task,
                       args=headers.get("argsrepr") or saferepr(message.args),
                       kwargs=headers.get("kwargsrepr") or saferepr(message.kwargs),
                       root_id=headers.get("root_id"), parent_id=headers.get("parent_id"),
                       retries=headers.get("retries") or 0, eta=None, expires=None)
            self._send("task-started", uuid=message.id)
        return now

    def ended(self, message: TakenMessage, started: float, result: Any = None,
              error: BaseException | None = None) -> None:
        """``task-succeeded``, ``task-retried`` or ``task-failed``."""
        if not self.on:
            return
        if error is None:
            self._send("task-succeeded", uuid=message.id, result=saferepr(result),
                       runtime=time.time() - started)
            return
        kind = "task-retried" if isinstance(error, Retry) else "task-failed"
        self._send(kind, uuid=message.id, exception=saferepr(error),
                   traceback="".join(traceback.format_exception(error)))

    def close(self) -> None:
        dispatcher, self._dispatcher = self._dispatcher, None
        if dispatcher is not None:
            try:
                dispatcher.close()
                dispatcher.connection.close()
            except Exception as exc:
                log.debug("closing the event dispatcher: %s", exc)


def held_jobs(client: redis.Redis, consumers: list[str]) -> list[dict[str, Any]]:
    """What ``inspect active`` lists for ``consumers``: the job each runs, in the shape
    of Celery's ``Request.info(safe=True)``. Of the messages a consumer holds (taken, not
    yet acknowledged: finished ones wait for the next take, others wait ahead), the ones
    whose record says STARTED; with no such record here, the first."""
    holdings = client.mget([keys.holding(name) for name in consumers]) if consumers else []
    jobs = []
    for name, raw in zip(consumers, holdings, strict=True):
        held = [] if raw is None else _held(client, read_holding(raw)[1])
        started = [job for job in held if record_status(client, job[0]) == "STARTED"]
        jobs += [{**job[1], "hostname": name} for job in started or held[:1]]
    return jobs


def _held(client: redis.Redis, pairs: list[tuple[str, str]]) -> list[tuple[str, dict[str, Any]]]:
    """(job id, info) of each message held still written down."""
    held = []
    for _, tag in pairs:
        entry, taken_at = client.hget(keys.KOMBU_UNACKED, tag), \
            client.zscore(keys.KOMBU_UNACKED_INDEX, tag)
        try:
            envelope, exchange, routing_key = json.loads(entry or "")
            headers, properties = envelope["headers"], envelope["properties"]
        except (ValueError, TypeError, KeyError):
            continue
        held.append((str(headers.get("id")), {
            "id": headers.get("id"), "name": headers.get("task"),
            "args": headers.get("argsrepr"), "kwargs": headers.get("kwargsrepr"),
            "type": headers.get("task"), "time_start": taken_at,
            "acknowledged": False, "worker_pid": None,
            "delivery_info": {"exchange": exchange, "routing_key": routing_key,
                              "priority": properties.get("priority"), "redelivered": None}}))
    return held


def answer_for_consumers(client: redis.Redis, consumers: list[str]) -> None:
    """In the Celery process beside direct consumers: ``inspect active`` lists their
    jobs after its own, and ``inspect active_queues`` the queues they consume (Celery's
    commands, replaced in this process's registry)."""
    from celery.worker.control import Panel, inspect_command
    from kombu import Queue

    own_active, own_queues = Panel.data["active"], Panel.data["active_queues"]

    def theirs(read: Callable[[], list[dict[str, Any]]]) -> list[dict[str, Any]]:
        try:
            return read()
        except Exception as exc:  # Redis away: what this process knows
            log.warning("inspect: the direct consumers' part is unknown: %s", exc)
            return []

    def consumed() -> list[dict[str, Any]]:
        beats = live_workers(client)
        names = sorted({q for name in consumers if name in beats for q in beats[name].queues})
        return [dict(Queue(name).as_dict(recurse=True)) for name in names]

    @inspect_command(alias="dump_active")
    def active(state: Any, safe: bool = False, **kwargs: Any) -> list[dict[str, Any]]:
        """List of tasks currently being executed."""
        return [*own_active(state, safe=safe, **kwargs),
                *theirs(lambda: held_jobs(client, consumers))]

    @inspect_command()
    def active_queues(state: Any) -> list[dict[str, Any]]:
        """List the task queues a worker is currently consuming from."""
        return [*own_queues(state), *theirs(consumed)]
