"""A job handed to an idle direct consumer at publish.

An idle direct consumer waits on ``BRPOP``; when a job comes, it must write the job
down (kombu's unacknowledged entry, the run count, the cancel mark) before it starts
it: a second round trip, and on a machine of two cores each trip wakes two processes
in turn. So a consumer whose take found nothing says it idles (``lua/take.lua``): an
*idle key* of its own, holding what a publish needs to write a job down for it, and an
entry in each of its queues' idle sets. A one-by-one publish (``lua/publish_one.lua``)
to an empty list with an idler writes the job down for the newest one, as that
consumer's take would, and pushes it to the consumer's *inbox*, which its ``BRPOP``
watches before its queues: the job starts as soon as the consumer wakes.

What keeps a handed job from being lost or run twice:

- the hand-off claims the idle key (deleted), so a consumer gets at most one job per
  time it idles; its take deletes the key too (it no longer idles);
- until the consumer's next take, the job's tag stays in its *handed* set, which the
  rescue counts as held (``liveness.held_by``): the consumer's beat may list what it
  holds before it has read its inbox. A take that finds the job still in the inbox
  takes it as a take takes (written down as taken now, its cancel mark read again);
  one given a message its ``BRPOP`` brought first puts the job back in its queue;
- its holding key names the job: a consumer that starts again empties its inbox and
  gives the job back (``forget_handed``); one that stops gives back what its inbox
  still holds (``give_back_inbox``); one that died is rescued like any other;
- the job is counted in its run count as the first job of a take is (it starts as
  soon as its consumer wakes): a consumer killed before it starts it counts a death,
  as one killed between its take and its job; one that stops takes the count back.

An older release's rescue reads no handed set. A consumer holds its holding lock
(which its beat needs) from the take that says it idles until it holds what its
``BRPOP`` brought, so its beats list a handed job; only one handed in the moment
between a wait's end and the next take is unlisted until that take, during a rolling
deploy.

The idle key lives ``IDLE_TTL`` seconds and is set again at each empty take (at least
once per ``IDLE_WAIT``): a consumer killed while it idled can be handed jobs for that
long, which the rescue gives back once its heartbeat expired. Stock Celery workers,
older releases and ``dispatch_many`` never hand off or get handed anything.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import redis

from ...store import keys
from ...store.link import as_text
from .direct_events import TaskEvents
from .direct_take import HOLDING_TTL, hand_back, refuse, take_counts
from .taken import Refused, TakenMessage, read_message

log = logging.getLogger("dispatcher.worker")

#: Seconds an idle key lives: a few of the consumer's waits, so it never lapses while
#: the consumer idles, and a dead consumer stops being handed jobs soon.
IDLE_TTL = 3


def idle_args(hostname: str, lists: list[str], runs_ttl: int,
              events_switch: str | None) -> tuple[Any, ...]:
    """The take's arguments that let a direct consumer of ``lists`` be handed jobs
    (ARGV[15..20]); ``events_switch``: the key of its node's task-events switch, for
    the hand-off to read (None: its events need none)."""
    idle_sets = list(dict.fromkeys(keys.idle_set(key) for key in lists))
    # What the publish reads of it (publish_one.lua), the keys a take writes among them.
    value = "\n".join((str(runs_ttl), keys.holding(hostname), str(HOLDING_TTL),
                       keys.inbox(hostname), keys.handed(hostname), events_switch or "",
                       keys.KOMBU_UNACKED_INDEX, keys.KOMBU_UNACKED, keys.CANCEL_PREFIX,
                       keys.RUNS_PREFIX, keys.TAKEN_PREFIX, *idle_sets))
    return (keys.idle(hostname), value, IDLE_TTL, "\n".join(idle_sets), keys.inbox(hostname),
            keys.handed(hostname))


class Handed:
    """An inbox entry: the job as written down for this consumer at publish."""

    __slots__ = ("counts", "events", "id", "item", "queue_key", "runs", "tag")

    def __init__(self, entry: bytes | str) -> None:
        # Eight fields (the first, when it was handed, is not read), then the message
        # (see take_one.lua's handed_entry).
        _, queue_key, tag, job_id, runs, cancelled, ours, events, item = as_text(
            entry).split("\n", 8)
        self.queue_key, self.tag, self.id, self.item = queue_key, tag, job_id, item
        self.runs = int(runs)  # -1: not counted
        #: ``[runs, cancelled]`` as the take's reply gives them (``take_counts``).
        self.counts = take_counts([self.runs, int(cancelled), int(ours)])
        #: The node's task-events switch as the hand-off read it (None: not read).
        self.events = int(events) if events else None

    def message(self) -> TakenMessage:
        """The job as the take would have read it; raises ``Refused`` as ``read_message``."""
        return read_message(self.queue_key, self.item, self.counts)


def take_handed(entry: str, owe: Callable[[str], None], events: TaskEvents,
                hostname: str) -> TakenMessage | None:
    """The job of an inbox entry its ``BRPOP`` brought, starting now (``events`` told
    the switch the hand-off read). It never waited: it was handed while the consumer
    waited on its inbox, so the cancel mark the hand-off read stands. None when it
    cannot run (logged, and acknowledged through ``owe``: it was written down)."""
    try:
        handed = Handed(entry)
    except ValueError:  # not an entry this release writes: left to its holding key
        log.error("direct consumer %s: an unreadable entry in its inbox was left to the "
                  "rescue (%d bytes)", hostname, len(entry))
        return None
    if handed.events is not None:
        events.seen(handed.events)
    try:
        message = handed.message()
    except Refused as exc:
        log.error("%s", exc)
        refuse(handed.queue_key, handed.item, owe)
        return None
    return message


def forget_handed(client: redis.Redis, hostname: str) -> None:
    """A consumer starting again: it no longer idles, and what its last run was handed
    is given back through its holding key (``give_back_held``), never from its inbox."""
    client.delete(keys.idle(hostname), keys.inbox(hostname), keys.handed(hostname))


def give_back_inbox(client: redis.Redis, hostname: str) -> list[str]:
    """A consumer stopping: it no longer idles, and the jobs handed to it and not taken
    go back to their queues, where they are taken next, their run counts taken back
    (no death). Their delivery tags."""
    with client.pipeline(transaction=True) as leave:
        leave.delete(keys.idle(hostname))
        leave.lrange(keys.inbox(hostname), 0, -1)
        leave.delete(keys.inbox(hostname))
        entries = leave.execute()[1]
    back = []
    for entry in reversed(entries):
        try:
            handed = Handed(entry)
        except ValueError:  # not an entry this release writes: left to the rescue
            continue
        hand_back(client, handed, first=True)
        if handed.runs >= 0:  # counted as it was handed: never started
            client.decr(keys.runs(handed.id))
        back.append(handed.tag)
    client.delete(keys.handed(hostname))
    return back
