"""Writes this worker owes Redis, made by a thread of their own once Redis takes them.

- **A message taken off its queue but not written down** (``Untaken``). An idle worker
  waits on kombu's ``BRPOP``: Redis takes the message off its queue then, and the
  worker writes it down (kombu's unacked entry and our bookkeeping,
  ``transport.DeliveryQoS``) in a second round trip. Should that second step fail, the
  message exists only in this process, and kombu would drop it. It happens in a Redis
  Sentinel failover: the old master refuses writes from the moment its replica is
  promoted, which may fall between the two steps. The message goes back to the head
  of its queue; ``store/lua/put_back.lua`` decides in one step whether it still needs
  to. Should the process end first, a message of ours is still re-queued by the
  sweeper (``recovery``) after ``requeue_lost_after``; another one is lost, as with
  kombu alone.
- **Acknowledgements never confirmed** (``UnsentAcks``) when their connection is given
  up: each of those jobs ran, and would run again once kombu restores its message.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import threading
import time
from dataclasses import dataclass
from typing import Any, Protocol

import redis

from ...store import keys
from ...store.client import REDIS_ERRORS
from ...store.scripts import PUT_BACK
from .protocol import QUEUE_SEP

log = logging.getLogger("dispatcher.worker")

#: Redis away or refusing (``REDIS_ERRORS``): the next try waits a little longer.
FIRST_WAIT = 0.1
LONGEST_WAIT = 2.0


@dataclass(frozen=True, slots=True)
class Untaken:
    """A message taken off ``queue_key`` and not written down."""

    queue_key: str
    #: The message exactly as it was taken (found again in its queue by value).
    item: str
    tag: str
    unacked_key: str
    unacked_index_key: str
    #: The unacked-index score the failed write-down carried (marks the entry as ours).
    written_at: float
    #: For a message of ours, ``<job id>:<attempt>``; None for another.
    publication: str | None = None
    #: The failed write-down counted the run too.
    counted: bool = False

    @property
    def queue(self) -> str:
        """The queue's name, for the log."""
        return keys.unprefixed(self.queue_key).split(QUEUE_SEP)[0]

    def script_keys(self) -> list[str]:
        found = [self.queue_key, self.unacked_key, self.unacked_index_key]
        if self.publication is not None:
            found += [keys.marker(self.publication), keys.INFLIGHT]
            if self.counted:
                job_id = self.publication.rpartition(":")[0]
                found += [keys.runs(job_id), keys.taken(job_id)]
        return found

    def script_args(self, now: float) -> list[str]:
        return [self.item, self.tag, repr(self.written_at), repr(now), self.publication or ""]

    def handed(self, reason: BaseException) -> str:
        return (f"a message taken from queue {self.queue} could not be written down "
                f"({reason}): it goes back to its queue as soon as Redis takes writes "
                f"(delivery tag {self.tag})")

    def apply(self, client: redis.Redis) -> str:
        back = put_back(client, self)
        return (f"the message with delivery tag {self.tag} "
                + ("is back at the head of its queue" if back
                   else "was in Redis already: nothing to put back"))

    def left(self) -> str:
        return (f"the message with delivery tag {self.tag}, taken from queue {self.queue}, "
                "was not put back before this process ended"
                + ("; the sweeper re-queues it" if self.publication else ""))


@dataclass(frozen=True, slots=True)
class UnsentAcks:
    """Acknowledgements Redis did not confirm when their connection was given up (it
    refused writes for a while, or went away): sent again until it takes them, or each
    of these jobs, run already, would run again once kombu restores it (an hour later,
    at the default visibility timeout)."""

    tags: tuple[str, ...]
    unacked_key: str
    unacked_index_key: str

    @property
    def tag(self) -> str:
        return ", ".join(self.tags)

    def handed(self, reason: BaseException) -> str:
        return (f"{len(self.tags)} acknowledgement(s) not confirmed ({reason}): sent "
                f"again as soon as Redis takes writes (delivery tags {self.tag})")

    def apply(self, client: redis.Redis) -> str:
        with client.pipeline(transaction=True) as both:  # as kombu's own ack
            both.zrem(self.unacked_index_key, *self.tags)
            both.hdel(self.unacked_key, *self.tags)
            both.execute()
        return f"acknowledged late: delivery tags {self.tag}"

    def left(self) -> str:
        return (f"acknowledgements of delivery tags {self.tag} were not sent before this "
                "process ended: those jobs run again once restored")


class Owed(Protocol):
    """A write this worker owes Redis."""

    @property
    def tag(self) -> str: ...
    def handed(self, reason: BaseException) -> str: ...
    def apply(self, client: redis.Redis) -> str: ...
    def left(self) -> str: ...


def own_pool(channel: Any) -> redis.ConnectionPool:
    """A new pool to the Redis of kombu's ``channel``, for the put-back thread alone:
    kombu disconnects the channel's pools while it reconnects. kombu's Sentinel channel
    notes the Sentinel manager each new pool is made with, to close it with its own
    pools; it keeps noting its own."""
    kept = getattr(channel, "_sentinel_manager", None)
    pool: redis.ConnectionPool = channel._get_pool()
    if kept is not None:
        channel._sentinel_manager = kept
    return pool


def hand_over(channel: Any, tag: str, unacked_key: str, unacked_index_key: str,
              written_at: float, publication: str | None, counted: bool,
              reason: BaseException) -> None:
    """Hand the message kombu's ``channel`` is delivering, as the channel took it
    (``taking.TakingChannel.holding``), to ``PUT_BACKS``."""
    holding = getattr(channel, "holding", None)
    if holding is None:  # taken some other way: nothing kept to give back
        log.error("a message taken off its queue is lost (tag %s): %s", tag, reason)
        return
    key, item = holding
    PUT_BACKS.owe(channel, Untaken(key, item, tag, unacked_key, unacked_index_key,
                                   written_at, publication, counted), reason)


def owe_acks(channel: Any, tags: list[str], unacked_key: str, unacked_index_key: str,
             reason: BaseException) -> None:
    """Hand acknowledgements kombu's ``channel`` could not get confirmed to ``PUT_BACKS``."""
    PUT_BACKS.owe(channel, UnsentAcks(tuple(tags), unacked_key, unacked_index_key), reason)


def _close(client: redis.Redis) -> None:
    pool = client.connection_pool
    pool.disconnect()
    for sentinel in getattr(getattr(pool, "sentinel_manager", None), "sentinels", ()):
        sentinel.close()


def put_back(client: redis.Redis, message: Untaken) -> bool:
    """One try: True when ``message`` went back to its queue, False when it was
    somewhere already. Raises the ``redis`` error when Redis refuses or is away."""
    script = client.register_script(PUT_BACK.source)
    return bool(script(keys=message.script_keys(), args=message.script_args(time.time())))


class PutBack:
    """Makes the writes handed to it (``Untaken``, ``UnsentAcks``) from a thread of its
    own, which ends once it has none left."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pending: list[tuple[redis.Redis, Owed]] = []
        self._thread: threading.Thread | None = None
        self._exit_hook = False

    def hand(self, client: redis.Redis, message: Owed, reason: BaseException) -> None:
        """Keep ``message`` until ``client``'s Redis takes it. ``client`` is the
        thread's own, its pool disconnected once the write is made."""
        log.warning("%s", message.handed(reason))
        with self._lock:
            self._pending.append((client, message))
            if not self._exit_hook:
                atexit.register(self._report_left, os.getpid())
                self._exit_hook = True
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="dispatch-put-back",
                                                daemon=True)
                self._thread.start()

    def owe(self, channel: Any, message: Owed, reason: BaseException) -> None:
        """``hand`` with a client of the thread's own to the Redis of kombu's
        ``channel``; never raises (the caller goes on with ``reason``)."""
        try:
            self.hand(redis.Redis(connection_pool=own_pool(channel)), message, reason)
        except Exception:
            log.exception("lost, delivery tags %s: %s", message.tag, reason)

    def pending(self) -> list[Owed]:
        with self._lock:
            return [message for _, message in self._pending]

    def _run(self) -> None:
        wait = FIRST_WAIT
        while True:
            with self._lock:
                batch = list(self._pending)
                if not batch:
                    self._thread = None
                    return
            refused = False
            for entry in batch:
                client, message = entry
                try:
                    done = message.apply(client)
                except Exception as exc:  # never given up while this process lives
                    refused = True
                    log.log(logging.DEBUG if isinstance(exc, REDIS_ERRORS) else logging.WARNING,
                            "putting back %s: not yet (%r)", message.tag, exc)
                    # A new connection for the next try: the Sentinels may name another
                    # master by then (kombu's connections stay on a refusing one).
                    with contextlib.suppress(Exception):
                        client.connection_pool.disconnect()
                    continue
                with self._lock:
                    self._pending.remove(entry)
                with contextlib.suppress(Exception):
                    _close(client)  # its own pool (see ``hand``)
                log.info("%s", done)
            if refused:
                time.sleep(wait)
                wait = min(wait * 2, LONGEST_WAIT)

    def _report_left(self, pid: int) -> None:
        if os.getpid() != pid:  # a forked pool process: the messages are not its own
            return
        for message in self.pending():
            log.error("%s", message.left())


#: The worker process's one instance: it outlives the channel, which kombu replaces
#: when it reconnects.
PUT_BACKS = PutBack()
