"""The direct consumer's writes besides its take (``direct``): writing down a message
``BRPOP`` brought, and giving back at start what its last run held."""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Callable
from typing import Any, Protocol

import redis

from ...core.record import TERMINAL, decode_record
from ...store import keys
from ...store.link import Link, as_text
from ...store.records import RedisRecordStore
from ...store.scripts import GIVE_BACK_HELD, TAKE, WRITE_RECORDS
from .delivery import publication_of
from .monitor import BROKER_ERRORS
from .protocol import queue_keys
from .putback import Untaken
from .taken import ReadAhead, Refused, TakenMessage, delivery_tag, read_message

log = logging.getLogger("dispatcher.worker")

#: Seconds a consumer's holding key outlives its last take (none kept for good).
HOLDING_TTL = 86_400


class NotWritten(Exception):
    """Redis failed to write down a message ``BRPOP`` took: ``untaken`` must go back."""

    def __init__(self, untaken: Untaken, reason: BaseException) -> None:
        super().__init__(str(reason))
        self.untaken = untaken
        self.reason = reason


def write_down(link: Link, command: tuple[Any, ...], now: float, key: str, item: str,
               runs_ttl: int, *after: tuple[Any, ...]) -> tuple[Any, list[Any], ReadAhead]:
    """Write down ``item``, taken off ``key`` by ``BRPOP``, with the take script given
    the message instead of popping one (``lua/take.lua``): kombu's unacknowledged entry
    and our bookkeeping in one step and one reply, the message read by Redis's JSON
    alone. ``command``: that take (``take_command`` given ``brought``, ``now`` among
    its arguments); ``after``: commands sent with it. Returns the take's reply, theirs,
    and the message as this process read it while Redis wrote it down (``ReadAhead``:
    the job starts that much sooner). Raises ``NotWritten`` when Redis failed: the
    message must go back (``Refused`` instead if it is unreadable besides)."""
    try:
        link.send([command, *after])
        ahead = ReadAhead(key, item)
        try:
            reply = link.read()
        except redis.exceptions.NoScriptError:  # Redis restarted, or another one
            reply = None
        replies = [link.read() for _ in after]
        if reply is None:
            link.client.script_load(TAKE.source)
            reply = link.call(*command)
        return reply, replies, ahead
    except BROKER_ERRORS as exc:
        raise NotWritten(untaken(key, item, now, runs_ttl), exc) from exc


def untaken(key: str, item: str, written_at: float, runs_ttl: int) -> Untaken:
    """What putting back ``item`` must undo of a write-down that may have landed.
    Raises ``Refused`` for a message that cannot be read (never written down)."""
    try:
        envelope = json.loads(item)
        headers = envelope["headers"]
        tag = delivery_tag(envelope)
    except (ValueError, KeyError, TypeError):
        raise Refused("unreadable") from None
    if tag is None:
        raise Refused("unreadable")
    publication = publication_of(headers)
    return Untaken(key, item, tag, keys.KOMBU_UNACKED, keys.KOMBU_UNACKED_INDEX, written_at,
                   publication, counted=publication is not None and runs_ttl > 0)


def give_back_held(client: redis.Redis, hostname: str) -> list[str]:
    """Put the messages ``hostname``'s last run held back on their queues, those still
    written down as it took them (one given back meanwhile and taken by another consumer
    is that one's); a finished job's only has its entry removed. Their delivery tags."""
    holding = keys.holding(hostname)
    raw = client.get(holding)
    if raw is None:
        return []
    taken_at, pairs = read_holding(raw)
    script = client.register_script(GIVE_BACK_HELD.source)
    back = []
    for key, tag in pairs:
        entry = client.hget(keys.KOMBU_UNACKED, tag)
        if entry is None:
            continue  # acknowledged, or given back meanwhile
        try:
            message = json.loads(entry)[0]
            finished = record_status(client, message["headers"]["id"]) in TERMINAL
        except (ValueError, TypeError, IndexError, KeyError):
            continue  # unreadable: left to kombu's visibility restore
        if script(keys=[key, keys.KOMBU_UNACKED, keys.KOMBU_UNACKED_INDEX, holding],
                  args=[tag, entry, json.dumps(message), taken_at, int(finished)]):
            back.append(tag)
    client.delete(holding)
    return back


def read_holding(raw: bytes | str) -> tuple[str, list[tuple[str, str]]]:
    """A holding key's value: the take's time ('' from an older release, which wrote
    none) and the (list, delivery tag) of each message taken, in order."""
    lines = as_text(raw).split("\n")
    taken_at = lines.pop(0) if len(lines) % 2 else ""
    return taken_at, list(zip(lines[::2], lines[1::2], strict=True))


def record_status(client: redis.Redis, job_id: str) -> str | None:
    """The status of ``job_id``'s record in ``client``'s Redis (None: no record there)."""
    record = decode_record(client.get(keys.record(job_id)))
    return None if record is None else record["status"]


def take_command(lists: list[str], hostname: str, ttls: tuple[int, int], now: float,
                 most: int, brought: tuple[str, str] = ("", ""),
                 idle: tuple[Any, ...] = ()) -> tuple[Any, ...]:
    """The direct consumer's take (``lua/take.lua``) from ``lists`` in order, of up to
    ``most`` messages (``ahead``), or of the message ``BRPOP`` ``brought`` (it and its
    list); ``ttls``: the run count's (0: not counted) and a record's; ``idle``: the
    arguments that let the consumer be handed jobs (``handoff``)."""
    fixed = [keys.KOMBU_UNACKED_INDEX, keys.KOMBU_UNACKED, keys.INFLIGHT]
    return ("EVALSHA", TAKE.sha, len(fixed) + len(lists), *fixed, *lists, repr(now), ttls[0],
            keys.MARKER_PREFIX, keys.CANCEL_PREFIX, keys.RUNS_PREFIX, keys.TAKEN_PREFIX,
            keys.RECORD_PREFIX, ttls[1], "0", keys.holding(hostname), HOLDING_TTL, most, *brought,
            *idle)


def take_order(queues: list[str]) -> list[str]:
    """The lists to take from, in order: each priority step across every queue, the
    order Celery's Redis transport polls them in."""
    return [key for step in zip(*(queue_keys(q) for q in queues), strict=True) for key in step]


def ack_commands(tag: str) -> list[tuple[Any, ...]]:
    """kombu's acknowledgement of ``tag`` (its entry and index removed together)."""
    return [("MULTI",), ("ZREM", keys.KOMBU_UNACKED_INDEX, tag),
            ("HDEL", keys.KOMBU_UNACKED, tag), ("EXEC",)]


class Owed:
    """Acknowledgements owed until Redis confirms them: sent with the next take, the last
    one with the records its job left in ``records`` (the broker's own Redis records
    store; None: they live apart and were flushed before, as under Celery's consumer),
    written and acknowledged by one script call (``RedisRecordStore.write_with_ack``)."""

    def __init__(self, records: RedisRecordStore | None, timeout: float) -> None:
        self.tags: list[str] = []
        self._records = records
        self._timeout = timeout
        #: The records are in the command sent (their write lock held until answered).
        self._taken = False
        #: Redis refused the records: acknowledge alone until an answer comes back whole
        #: (the records wait in their buffer, whose thread writes them once Redis can).
        self._alone = False

    @property
    def with_records(self) -> bool:
        """Whether job records are written with the acknowledgement."""
        return self._records is not None

    def prepare(self, client: redis.Redis) -> None:
        """Load the records script, so the first acknowledgement is not refused for it."""
        if self._records is not None:
            client.script_load(WRITE_RECORDS.source)

    def owe(self, tag: str) -> None:
        self.tags.append(tag)

    def commands(self) -> list[tuple[Any, ...]]:
        """What to send now; ``answered`` must follow."""
        if not self.tags:
            return []
        *older, last = self.tags
        commands = [command for tag in older for command in ack_commands(tag)]
        if self._records is not None and not self._alone:
            with_records = self._records.write_with_ack(last, self._timeout)
            if with_records is not None:
                self._taken = True
                return [*commands, with_records]
        return [*commands, *ack_commands(last)]

    def answered(self, error: BaseException | None) -> None:
        """The commands were answered: all of them (``error`` None), or not (it says why:
        the records go back to their buffer and every acknowledgement stays owed)."""
        if self._taken:
            self._taken = False
            if self._records is not None:
                self._records.written(error)
        if error is None:
            self.tags, self._alone = [], False
        elif isinstance(error, redis.ResponseError) and not isinstance(
                error, redis.exceptions.NoScriptError):  # loaded again: try once more
            self._alone = True

    def send(self, link: Link, *after: tuple[Any, ...]) -> None:
        """Send what is owed, then ``after`` (whose replies the caller reads), and read
        what is owed's replies (``send_later``'s first). An error reply leaves it owed
        (a script Redis forgot is loaded again); a connection error is raised."""
        self._read_later(link)
        owed = self.commands()
        refused: redis.ResponseError | None = None
        try:
            link.send([*owed, *after])
            for _ in owed:
                try:
                    link.read()
                except redis.ResponseError as exc:  # read whole: the link stays in step
                    refused = exc
        except BaseException as exc:
            self.answered(exc)
            raise
        self.answered(refused)
        if isinstance(refused, redis.exceptions.NoScriptError):
            link.client.script_load(WRITE_RECORDS.source)

    def send_later(self, link: Link, *commands: tuple[Any, ...]) -> None:
        """Send ``commands`` without waiting for their replies, which are read and
        dropped before anything else is sent on ``link``: for commands whose failure is
        harmless. What is owed waits for ``send``: an acknowledgement goes with its job's
        records, so none lands without them."""
        self._read_later(link)
        link.send(list(commands))

    @staticmethod
    def _read_later(link: Link) -> None:
        """Read the replies still unread on ``link`` (``send_later``'s: every other
        caller reads its own before it sends again)."""
        while link.unread:
            with contextlib.suppress(redis.ResponseError):
                link.read()


def read_taken(replies: list[Any], owe: Callable[[str], None],
               ahead: ReadAhead | None = None) -> list[TakenMessage]:
    """The messages of a take's replies, in order (``ahead``: one of them read already).
    One that cannot run is logged and left out, acknowledged (``owe``) if the take
    wrote it down: never run."""
    taken = []
    for reply in replies:
        key, item = as_text(reply[0]), as_text(reply[1])
        if len(reply) <= 2:  # unreadable: the script wrote nothing down
            refuse(key, item, None)
            continue
        try:
            counts = take_counts(reply[3:6])
            taken.append(ahead.counted(counts) if ahead is not None and ahead.item == item
                         else read_message(key, item, counts))
        except Refused as exc:
            log.error("%s", exc)
            refuse(key, item, owe)
    return taken


def refuse(key: str, item: str, owe: Callable[[str], None] | None) -> None:
    """A message that cannot run: logged here when unreadable (``owe`` None: never
    written down), else acknowledged through ``owe``."""
    if owe is None:
        log.error("refused a message that cannot be decoded (from %s, %d bytes): not "
                  "a task message", keys.unprefixed(key), len(item))
        return
    with contextlib.suppress(ValueError):  # written down: readable by Redis's JSON
        if (tag := delivery_tag(json.loads(item))) is not None:
            owe(tag)


def take_counts(reply: list[Any]) -> list[Any] | None:
    """``[runs, cancelled]`` from the take script's reply (runs None: not counted); None
    for a message not ours."""
    runs, cancelled, ours = (int(value) for value in reply)
    return [runs if runs >= 0 else None, bool(cancelled)] if ours else None


class Returnable(Protocol):
    """A message written down as taken: its list, itself as taken, its delivery tag."""

    queue_key: str
    item: str
    tag: str


def hand_back(client: redis.Redis, message: Returnable, first: bool = False) -> None:
    """``message`` back to the end of its queue (``first``: where it is taken next), its
    unacknowledged entry removed in the same step (as kombu's requeue)."""
    with client.pipeline(transaction=True) as back:
        if first:
            back.rpush(message.queue_key, message.item)
        else:
            back.lpush(message.queue_key, message.item)
        back.zrem(keys.KOMBU_UNACKED_INDEX, message.tag)
        back.hdel(keys.KOMBU_UNACKED, message.tag)
        back.execute()
