"""The direct consumer (``DISPATCH_WORKER_CONSUMER=direct``): a worker process that
takes its own messages and runs them itself (no consumer process, no pool pipe).

Each take is one script call (``lua/take.lua``): the message is popped and written
down as kombu's Redis transport writes it (its ``unacked`` entry and index), with our
bookkeeping (started mark, cancel mark, run count), and the last job's
acknowledgement rides in the same write. An idle consumer waits on ``BRPOP`` and
hands what it brings to the same script, which writes it down (``direct_take``), or is
handed a job written down for it at publish (``handoff``).
Messages stay Celery's protocol 2, and each job runs through
``CeleryWorker.execute``: the same execution core, records, retries, limits and
events as under Celery's consumer.

While its jobs are short, a take brings up to eight messages, the ones after the first
held ahead (``ahead``). Each consumer beats as a worker of its own (``liveness``): when
one dies, the rescue of any live worker gives back what it held once its heartbeat
expired, and the same consumer started again gives it back at once (its holding key).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

import redis

from ...core.periodic import Periodic
from ...core.ports import RegisteredTask
from ...core.registry import all_tasks
from ...store import keys
from ...store.client import client_for
from ...store.link import Link, as_text
from ...store.records import RedisRecordStore
from ...store.scripts import TAKE
from .ahead import Ahead, give_back, starts
from .direct_events import TaskEvents
from .direct_take import (
    NotWritten,
    Owed,
    give_back_held,
    hand_back,
    read_taken,
    refuse,
    take_command,
    take_order,
    write_down,
)
from .handoff import forget_handed, give_back_inbox, idle_args, take_handed
from .liveness import Heartbeat, beat_pause
from .monitor import BROKER_ERRORS
from .putback import PUT_BACKS
from .taken import ReadAhead, Refused, TakenMessage, due_in
from .unknown import HAND_BACK_DELAY
from .worker import CeleryWorker

log = logging.getLogger("dispatcher.worker")

#: Seconds an idle consumer blocks on ``BRPOP`` before it looks at its stop flag.
IDLE_WAIT = 1.0
#: Longest pause between tries while Redis is away.
LONGEST_PAUSE = 2.0


class DirectConsumer:
    """Takes messages from ``queues`` and runs them in this process until ``stop()``."""

    def __init__(self, worker: CeleryWorker, hostname: str, queues: list[str],
                 node: str | None = None) -> None:
        settings = worker.settings
        self.worker = worker
        self.hostname = hostname
        self.queues = queues
        # Its own client: BRPOP blocks longer than the publish timeout allows a command.
        self.client = client_for(settings.model_copy(
            update={"publish_timeout": settings.publish_timeout + IDLE_WAIT + 1.0}),
            str(settings.broker_url))  # a worker refuses to start without one
        self.link = Link(self.client)
        self.tasks: dict[str, RegisteredTask] = {t.spec.name: t for t in all_tasks()}
        self.lists = take_order(queues)
        shared = worker.records is not None and settings.results_url == settings.broker_url
        #: The run count's lifetime; 0: our records live apart, counted when the job runs.
        self.runs_ttl = settings.result_ttl if shared else 0
        self.ttls = (self.runs_ttl, self.runs_ttl)  # the take's: runs, records (0: apart)
        self._stop = threading.Event()
        #: Held while a take is in flight or a message is held: the heartbeat lists
        #: what this consumer holds, and must never beat between a take and its reply.
        self._holding_lock = threading.Lock()
        self._held: str | None = None
        self._ahead = Ahead(settings.worker_spare_below)
        records = worker.execution.records  # written with the acks, sent with the takes
        self._owed = Owed(records if shared and isinstance(records, RedisRecordStore)
                          else None, settings.publish_timeout)
        worker.flush_before_ack = not self._owed.with_records
        self.heartbeat = Heartbeat(
            worker.route.monitor.publisher.client, hostname, settings.worker_dead_after,
            list(self.tasks), self._holdings, lambda: self.queues)
        #: Celery's task events, on while the node's Celery process has them on.
        self.events = TaskEvents(worker.route.app, worker.route.monitor.publisher.client,
                                 hostname, node or hostname, settings.worker_events)
        self.inbox = keys.inbox(hostname)
        self.idle = idle_args(hostname, self.lists, self.runs_ttl, self.events.switch_key())
        self._beats = Periodic("dispatch-direct-beat", self._beat,
                               beat_pause(settings.requeue_lost_after, settings.worker_dead_after),
                               expected=BROKER_ERRORS, log=log)

    def _holdings(self) -> list[str]:
        with self._holding_lock:
            return [*([] if self._held is None else [self._held]), *self._ahead.tags()]

    def _beat(self) -> None:
        if not self._stop.is_set():
            self.heartbeat.beat()

    def stop(self) -> None:
        """Finish the job in hand, acknowledge it and return from ``run``."""
        self._stop.set()

    def run(self, ready: Callable[[], object] = lambda: None) -> None:
        """Take and run messages until ``stop()`` (``ready()`` once it can); then
        acknowledge the last one and say this consumer has stopped (heartbeat removed)."""
        self._beats.start()
        self._start()
        log.info("direct consumer %s ready: queues %s", self.hostname, ", ".join(self.queues))
        ready()
        pause = 0.1
        while not self._stop.is_set():
            try:
                message = self._next()
                pause = 0.1
            except BROKER_ERRORS as exc:
                self.link.drop()
                log.warning("direct consumer %s: Redis is unavailable (%s); trying again "
                            "in %.1f s", self.hostname, exc, pause)
                self._stop.wait(pause)
                pause = min(pause * 2, LONGEST_PAUSE)
                continue
            if message is not None:
                self._handle(message)
        with self._holding_lock:
            give_back(self.client, self._ahead.release(), self.hostname)
        self._beats.stop()
        self.events.close()
        self._settle()

    def _start(self) -> None:
        """Beat once; give back what its last run held when it died now, not once its
        heartbeat expired (the rescue's way): a job that kills its process runs again at
        once, a death counted each time. With Redis away, the beat thread and rescue do."""
        try:
            self.heartbeat.beat()
            self._owed.prepare(self.client)
            forget_handed(self.client, self.hostname)
            back = give_back_held(self.client, self.hostname)
        except BROKER_ERRORS as exc:
            log.warning("direct consumer %s: Redis is unavailable at start (%s)",
                        self.hostname, exc)
            return
        if back:
            log.warning("direct consumer %s started again: the messages it held (delivery "
                        "tags %s) are back in their queues", self.hostname, ", ".join(back))

    def _settle(self) -> None:
        """Send what is owed and remove the heartbeat; what fails is left to the rescue."""
        try:
            give_back_inbox(self.client, self.hostname)
            self._owed.send(self.link)
            self.client.delete(keys.holding(self.hostname))
            self.heartbeat.stop()
        except BROKER_ERRORS as exc:
            log.warning("direct consumer %s stopped without settling (%s): the rescue gives "
                        "back what it held", self.hostname, exc)
        self.link.close()

    def _next(self) -> TakenMessage | None:
        """The next message, written down and held (None: none came, or it was refused)."""
        with self._holding_lock:
            message = self._ahead.next()
            if message is not None:
                starts(message, self._ahead.age(), self._owed, self.link, self.hostname)
            else:
                message = self._take()
                if message is None:
                    return None
            self._held = message.tag
            return message

    def _take(self) -> TakenMessage | None:
        """A take, or when it finds nothing a wait on ``BRPOP``: the message that came,
        written down (None: none, or refused). The caller has the holding lock."""
        replies, ahead = self._send_take(), None
        if not replies:
            popped = self.link.call("BRPOP", self.inbox, *self.lists, IDLE_WAIT)
            if not popped:
                return None
            key, item = as_text(popped[0]), as_text(popped[1])
            if key == self.inbox:  # handed at publish: written down already
                return take_handed(item, self._owed.owe, self.events, self.hostname)
            replies, ahead = self._write_down(key, item)
            if not replies:
                return None
        taken = read_taken(replies, self._owed.owe, ahead)
        if not taken:
            return None
        self._ahead.hold(taken[1:])
        if taken[0].item != as_text(replies[0][1]):  # taken as held: not now
            starts(taken[0], self._ahead.age(), self._owed, self.link, self.hostname)
        return taken[0]

    def _send_take(self) -> Any:
        """Send the owed acknowledgement and the take (and, now and then, a look at the
        node's task-events switch); the take's reply. An owed acknowledgement stays owed
        until Redis has answered it (sent again, it changes nothing)."""
        now = time.time()
        look = self.events.look(now)
        self._owed.send(self.link, take_command(self.lists, self.hostname, self.ttls, now,
                                                self._ahead.most(), idle=self.idle), *look)
        try:
            reply = self.link.read()
        except redis.exceptions.NoScriptError:  # Redis restarted, or another one
            reply = None
            self.client.script_load(TAKE.source)
        for _ in look:
            self.events.seen(self.link.read())
        return reply

    def _write_down(self, key: str, item: str) -> tuple[Any, ReadAhead | None]:
        """Write down what ``BRPOP`` took (``write_down``), with a look at the events
        switch: the take's reply (None when it went back, a Redis error, or was
        refused) and the message as read meanwhile."""
        now = time.time()
        look = self.events.look(now, idle=True)
        try:
            take = take_command(self.lists, self.hostname, self.ttls, now, 1, (item, key),
                                self.idle)
            reply, seen, ahead = write_down(self.link, take, now, key, item, self.runs_ttl, *look)
        except NotWritten as failed:  # back to its queue from the put-back thread
            self.link.drop()
            settings = self.worker.settings
            PUT_BACKS.hand(client_for(settings, str(settings.broker_url)), failed.untaken,
                           failed.reason)
            return None, None
        except Refused:
            refuse(key, item, None)
            return None, None
        self.events.seen(*seen)
        return reply, ahead

    def _handle(self, message: TakenMessage) -> None:
        """Run the held message, or hand it back; its acknowledgement is then owed.
        Should Redis fail while a message is handed back or refused, the message stays
        written down: the rescue gives it back once this consumer's beat says it no
        longer holds it."""
        try:
            task = self.tasks.get(message.task)
            if task is None:
                self._unknown(message)
            elif message.expires is not None and message.expires < time.time():
                log.warning("task %s (%s) expired before it could run: not run",
                            message.id, message.task)
                self._owed.owe(message.tag)
            elif due_in(message) > 0:  # a plain Celery client's countdown: not yet
                self._hand_back(message, min(due_in(message), HAND_BACK_DELAY))
            else:
                started = time.monotonic()
                self._execute(task, message)
                self._owed.owe(message.tag)
                if self._ahead.timed(time.monotonic() - started):
                    with self._holding_lock:
                        give_back(self.client, self._ahead.release(), self.hostname)
        except BROKER_ERRORS as exc:
            log.warning("direct consumer %s could not hand back job %s (%s): the rescue "
                        "gives it back", self.hostname, message.id, exc)
        finally:
            with self._holding_lock:
                self._held = None

    def _execute(self, task: RegisteredTask, message: TakenMessage) -> None:
        self.events.run(self.worker, task, message)

    def _unknown(self, message: TakenMessage) -> None:
        unknown = self.worker.unknown_tasks
        if unknown.verdict(message.id, message.task) == "hand_back":
            if message.counted_run:  # it will not run here: take the count back
                self.client.decr(keys.runs(message.id))
            self._hand_back(message, HAND_BACK_DELAY)
            return
        log.error("refused a message for a task no worker has (task=%r id=%r): not run",
                  message.task, message.id)
        try:
            unknown.fail(message.id, message.task, message)
        except Exception as exc:  # still refused; the message is not run
            log.warning("could not record the unknown task %s: %s", message.id, exc)
        self._owed.owe(message.tag)

    def _hand_back(self, message: TakenMessage, after: float) -> None:
        self._stop.wait(after)  # held meanwhile, so not taken again at once
        hand_back(self.client, message)
