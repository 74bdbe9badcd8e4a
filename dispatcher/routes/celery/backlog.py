"""What really waits on each Celery queue: the ``dispatch_backlog`` gauge, the signal to
scale workers on.

A queue's backlog is every job no worker has finished with yet:

- the messages waiting in each of its priority lists (kombu's Redis transport keeps
  ``queue``, ``queue\\x06\\x163``, ... : the ``dispatch_queue_depth`` gauge);
- the messages delivered to a worker and not yet acknowledged, in kombu's ``unacked``
  hash: jobs reserved by a worker, jobs running (we acknowledge late), and jobs whose
  countdown or retry delay has not passed (Celery holds those in the worker that
  reserved them). Each hash entry is kombu's JSON ``[message, exchange, routing_key]``;
  our messages go to the default exchange with the queue as routing key, and a queue
  Celery declares itself is bound with its own name as routing key too;
- jobs the dispatcher itself holds until due, in a sorted set per queue, when the
  caller names one (``delayed``). None does today: a countdown is a Celery ETA, held by
  a worker and so already in the hash.

A worker pops a message from its list and then writes it into the hash, and the lists
and the hash are read one after the other: a message on the move may be missed, or
seen twice, by one reading.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Callable, Collection, Iterable, Sequence
from dataclasses import dataclass
from typing import cast

import redis

from ...store import keys
from .protocol import PRIORITY_STEPS, queue_keys

#: HSCAN's COUNT hint: entries asked for per round trip.
UNACKED_SCAN_COUNT = 200
#: Unacknowledged entries read per reading at most, and for how long. Past either, the
#: hash's length (exact) is split between the queues in the proportions of those read.
UNACKED_SCAN_LIMIT = 10_000
UNACKED_SCAN_SECONDS = 0.5


@dataclass(frozen=True, slots=True)
class QueueLoad:
    """One reading of the queues: ``depths`` waiting in the lists, ``backlog`` all of it."""

    depths: dict[str, int]
    backlog: dict[str, int]
    #: Jobs in the dispatcher's delay store (every queue), not yet due.
    delayed: int = 0


_BRACKET, _QUOTE, _BACKSLASH, _COMMA = ord("]"), ord('"'), ord("\\"), ord(",")
_SPACE = frozenset(b" \t\r\n")


def unacked_queue(entry: bytes) -> str | None:
    """The routing key of one ``unacked`` entry (kombu's ``[message, exchange,
    routing_key]``), None if it has none. The key is read from the entry's end, so a
    large message is not decoded; an entry that does not end in a JSON string is."""
    end = _back_over_space(entry, len(entry)) - 1
    if end > 0 and entry[end] == _BRACKET:
        close = _back_over_space(entry, end) - 1
        if close > 0 and entry[close] == _QUOTE:
            start = entry.rfind(b'"', 0, close)
            while start > 0 and (start - _back_over(entry, start, _BACKSLASH)) % 2:
                start = entry.rfind(b'"', 0, start)  # an escaped quote: look further
            before = _back_over_space(entry, start) if start > 0 else 0
            if before > 0 and entry[before - 1] == _COMMA:
                try:
                    key = json.loads(entry[start:close + 1])
                except ValueError:
                    key = None
                if isinstance(key, str):
                    return key
    return _decoded_queue(entry)


def _back_over(data: bytes, index: int, byte: int) -> int:
    """The index where the run of ``byte`` that ends before ``index`` starts."""
    while index > 0 and data[index - 1] == byte:
        index -= 1
    return index


def _back_over_space(data: bytes, index: int) -> int:
    while index > 0 and data[index - 1] in _SPACE:
        index -= 1
    return index


def _decoded_queue(entry: bytes) -> str | None:
    try:
        value = json.loads(entry)
    except ValueError:
        return None
    if isinstance(value, list) and len(value) == 3 and isinstance(value[2], str):
        return value[2]
    return None


def count_unacked(entries: Iterable[bytes], queues: Collection[str]) -> Counter[str]:
    """How many of ``entries`` (``unacked`` values) belong to each of ``queues``."""
    found: Counter[str] = Counter()
    for entry in entries:
        queue = unacked_queue(entry)
        if queue is not None and queue in queues:
            found[queue] += 1
    return found


def scale_to(found: Counter[str], read: int, total: int) -> dict[str, int]:
    """Per-queue counts of a hash of ``total`` entries, ``found`` among the ``read``
    entries looked at: exact when every entry was read, else in proportion."""
    if read >= total or read == 0:
        return dict(found)
    return {queue: round(count * total / read) for queue, count in found.items()}


def _scan_unacked(client: redis.Redis, queues: Collection[str], total: int,
                  limit: int) -> dict[str, int]:
    """Unacknowledged messages per queue, from at most ``limit`` hash entries and for
    about ``UNACKED_SCAN_SECONDS``; past either, in proportion to the entries read."""
    seen: set[bytes] = set()  # HSCAN may return an entry twice while the hash changes
    found: Counter[str] = Counter()
    cursor, stop = 0, time.monotonic() + UNACKED_SCAN_SECONDS
    while True:
        cursor, reply = client.hscan(keys.KOMBU_UNACKED, cursor, count=UNACKED_SCAN_COUNT)
        batch = cast("dict[bytes, bytes]", reply)  # tag -> entry (a client without decoding)
        found.update(count_unacked(
            (value for tag, value in batch.items() if tag not in seen), queues))
        seen.update(batch)
        if cursor == 0:
            return dict(found)
        if len(seen) >= limit or time.monotonic() > stop:
            return scale_to(found, len(seen), max(total, len(seen)))


def read_queue_load(client: redis.Redis, queues: Sequence[str], *,
                    delayed: Callable[[str], str] | None = None,
                    scan_limit: int = UNACKED_SCAN_LIMIT) -> QueueLoad:
    """The lists' lengths, the hash's length and any ``delayed`` set's size in one
    round trip, then the hash's entries by HSCAN (skipped when it is empty)."""
    pipe = client.pipeline(transaction=False)
    for queue in queues:
        for key in queue_keys(queue):
            pipe.llen(key)
    pipe.hlen(keys.KOMBU_UNACKED)
    pipe.zcard(keys.DELAYED)
    if delayed is not None:
        for queue in queues:
            pipe.zcard(delayed(queue))
    counts = pipe.execute()
    steps = len(PRIORITY_STEPS)
    depths = {q: int(sum(counts[i * steps:(i + 1) * steps])) for i, q in enumerate(queues)}
    total, waiting = int(counts[len(queues) * steps]), int(counts[len(queues) * steps + 1])
    held = [int(n) for n in counts[len(queues) * steps + 2:]] or [0] * len(queues)
    unacked = _scan_unacked(client, set(queues), total, scan_limit) if total else {}
    backlog = {q: depths[q] + unacked.get(q, 0) + held[i] for i, q in enumerate(queues)}
    return QueueLoad(depths, backlog, waiting)
