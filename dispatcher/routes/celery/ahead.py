"""A direct consumer takes jobs ahead of its next one while its jobs are short.

Each take is a round trip to Redis, and on jobs of a millisecond that round trip, with
the waking of Redis and of the consumer on each side of it, was most of a job's cost:
taking up to ``TAKE_MOST`` messages in one script call drained no-op jobs ~25 % faster
(``bench/README.md``). The messages after the first are *held ahead*: written down as
taken (kombu's unacknowledged entry, the holding key, the heartbeat's list), counted in
their run count and marked taken (``lua/count_delivery.lua``), so a consumer that dies
before it starts one gives it back without a death counted. As a held message starts,
its taken mark is cleared, sent without waiting for the reply
(``direct_take.Owed.send_later``), so a job that kills its process is counted as it
would have been had it come first. The acknowledgements wait for the next take, which
writes each with its job's records (the records writer has written them meanwhile): a
consumer killed mid-batch runs its finished jobs again only if their records had not
landed. The take read each message's cancel mark; one held longer than ``FRESH`` reads
it again as it starts (a round trip, small beside the wait), so a job cancelled while it
waited is not started.

Jobs are taken ahead only while they take less than ``DISPATCH_WORKER_SPARE_BELOW``
seconds on average (a moving average, as the Celery consumer's spare, ``spare``): a
message held behind a long job would wait while another consumer may idle. A job that
takes longer than that gives back what is held behind it at once.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from typing import Any

import redis

from ...store import keys
from ...store.link import Link
from .direct_take import Owed, hand_back
from .monitor import BROKER_ERRORS
from .spare import JobTimes
from .taken import TakenMessage

log = logging.getLogger("dispatcher.worker")

#: The most messages one take brings while jobs are short (the first and 7 ahead).
TAKE_MOST = 8
#: Seconds after its take a message held ahead reads its cancel mark again to start.
FRESH = 0.01


class Ahead:
    """The messages held ahead of the next job, and the timing that allows them."""

    def __init__(self, short_below: float) -> None:
        self._times = JobTimes(short_below)
        self._held: deque[TakenMessage] = deque()
        #: When the messages held were taken (``time.monotonic()``).
        self.taken_at = 0.0

    def most(self) -> int:
        """How many messages the next take may bring."""
        return TAKE_MOST if self._times.short() else 1

    def hold(self, messages: list[TakenMessage]) -> None:
        self._held.extend(messages)
        self.taken_at = time.monotonic()

    def next(self) -> TakenMessage | None:
        """The oldest message held ahead (now no longer held here), or None."""
        return self._held.popleft() if self._held else None

    def age(self) -> float:
        """Seconds since the messages held were taken."""
        return time.monotonic() - self.taken_at

    def tags(self) -> list[str]:
        return [message.tag for message in self._held]

    def timed(self, took: float) -> bool:
        """A job took ``took`` seconds; True when what is held must go back (it waited
        behind a long job, and would wait behind the next)."""
        self._times.add(took)
        return bool(self._held) and took >= self._times.short_below

    def release(self) -> list[TakenMessage]:
        """Everything held, no longer held here (to be given back)."""
        held = list(self._held)
        self._held.clear()
        return held


def starts(message: TakenMessage, age: float, owed: Owed, link: Link,
           hostname: str) -> None:
    """``message``, held ahead, starts: its taken mark is cleared (best effort, answered
    later). Taken ``age`` seconds ago, longer than ``FRESH``, it reads its cancel mark
    again first, waiting for the answer (the acknowledgements owed go with it, as with a
    take)."""
    marked = [("DEL", keys.taken(message.id))] if message.counted_run else []
    try:
        if message.dispatch_delivery is None or age < FRESH:
            if marked:
                owed.send_later(link, *marked)
            return
        owed.send(link, *marked, ("EXISTS", keys.cancel(message.id)))
        replies = [_reply(link) for _ in range(len(marked) + 1)]
    except BROKER_ERRORS as exc:  # the job still runs (its death uncounted, should it die)
        link.drop()
        log.warning("direct consumer %s: Redis is unavailable (%s)", hostname, exc)
        return
    if replies[-1] == 1:
        message.dispatch_delivery[1] = True


def _reply(link: Link) -> Any:
    """The next reply, an error reply as its exception (the link stays in step)."""
    try:
        return link.read()
    except redis.ResponseError as exc:
        return exc


def give_back(client: redis.Redis, messages: list[TakenMessage], hostname: str) -> None:
    """``messages``, held ahead, back to their queues, where they are taken next, in
    order (their taken marks stay: no death is counted). On a Redis error one stays
    written down, for the rescue to give back."""
    for message in reversed(messages):
        try:
            hand_back(client, message, first=True)
        except BROKER_ERRORS as exc:
            log.warning("direct consumer %s could not give back job %s (%s): the rescue "
                        "gives it back", hostname, message.id, exc)
