"""The direct consumer's writes outside its take script (``direct``): writing down a
message ``BRPOP`` brought, and giving back at start what its last run held."""

from __future__ import annotations

import json
import time
from typing import Any

import redis

from ...store import keys
from ...store.link import Link, as_text
from ...store.scripts import GIVE_BACK_HELD
from .delivery import delivery_commands
from .monitor import BROKER_ERRORS
from .protocol import queue_keys
from .putback import Untaken
from .taken import Refused, TakenMessage, delivery_tag

#: Seconds a consumer's holding key outlives its last take (a consumer that never
#: starts again leaves nothing behind for good).
HOLDING_TTL = 86_400


class NotWritten(Exception):
    """Redis failed to write down a message ``BRPOP`` took: ``untaken`` must go back."""

    def __init__(self, untaken: Untaken, reason: BaseException) -> None:
        super().__init__(str(reason))
        self.untaken = untaken
        self.reason = reason


def write_down(link: Link, key: str, item: str, runs_ttl: int,
               hostname: str) -> list[Any] | None:
    """kombu's unacknowledged entry and our bookkeeping for ``item``, taken off ``key``
    by ``BRPOP``, in one transaction (as ``lua/take.lua`` writes a message it takes).
    The take's counts ``[runs, cancelled]``; None for a message not ours. Raises
    ``Refused`` for a message that cannot be written down (unreadable), ``NotWritten``
    when Redis failed."""
    try:
        envelope = json.loads(item)
        info, headers = envelope["properties"]["delivery_info"], envelope["headers"]
        tag = delivery_tag(envelope)
    except (ValueError, KeyError, TypeError):
        raise Refused("unreadable") from None
    if tag is None or not isinstance(info, dict) or not isinstance(headers, dict):
        raise Refused("unreadable")
    meta = headers.get("dispatch")
    ours = isinstance(meta, dict) and isinstance(headers.get("id"), str) \
        and not headers.get("eta")
    publication = f"{headers['id']}:{meta.get('attempt') or 1}" \
        if ours and isinstance(meta, dict) else None
    now = time.time()
    entry = json.dumps([envelope, info.get("exchange"), info.get("routing_key")])
    commands: list[tuple[Any, ...]] = [
        ("MULTI",), ("ZADD", keys.KOMBU_UNACKED_INDEX, repr(now), tag),
        ("HSET", keys.KOMBU_UNACKED, tag, entry)]
    if publication is not None:
        commands += delivery_commands(publication, runs_ttl)
    commands += [("SET", keys.holding(hostname), f"{key}\n{tag}", "EX", HOLDING_TTL),
                 ("EXEC",)]
    try:
        link.send(commands)
        done = [link.read() for _ in commands][-1]
    except BROKER_ERRORS as exc:
        raise NotWritten(Untaken(key, item, tag, keys.KOMBU_UNACKED, keys.KOMBU_UNACKED_INDEX,
                                 now, publication,
                                 counted=publication is not None and runs_ttl > 0), exc) from exc
    if publication is None:
        return None
    return [int(done[5]) if runs_ttl > 0 else None, bool(done[4])]


def give_back_held(client: redis.Redis, hostname: str) -> str | None:
    """Put the message ``hostname``'s last run held back on its queue, if it is still
    written down; its delivery tag, or None when there was nothing to give back."""
    holding = keys.holding(hostname)
    raw = client.get(holding)
    if raw is None:
        return None
    key, _, tag = as_text(raw).partition("\n")
    entry = client.hget(keys.KOMBU_UNACKED, tag)
    try:
        message = json.dumps(json.loads(entry)[0]) if entry is not None else None
    except (ValueError, TypeError, IndexError, KeyError):
        message = None  # unreadable: left to kombu's visibility restore
    if entry is None or message is None:
        client.delete(holding)
        return None
    back = client.register_script(GIVE_BACK_HELD.source)(
        keys=[key, keys.KOMBU_UNACKED, keys.KOMBU_UNACKED_INDEX, holding],
        args=[tag, entry, message])
    return tag if back else None


def take_order(queues: list[str]) -> list[str]:
    """The lists to take from, in order: each priority step across every queue, the
    order Celery's Redis transport polls them in."""
    return [key for step in zip(*(queue_keys(q) for q in queues), strict=True) for key in step]


def ack_commands(tag: str) -> list[tuple[Any, ...]]:
    """kombu's acknowledgement of ``tag`` (its entry and index removed together)."""
    return [("MULTI",), ("ZREM", keys.KOMBU_UNACKED_INDEX, tag),
            ("HDEL", keys.KOMBU_UNACKED, tag), ("EXEC",)]


def take_counts(reply: list[Any]) -> list[Any] | None:
    """``[runs, cancelled]`` from the take script's reply (runs None: not counted); None
    for a message not ours."""
    runs, cancelled, ours = (int(value) for value in reply)
    return [runs if runs >= 0 else None, bool(cancelled)] if ours else None


def hand_back(client: redis.Redis, message: TakenMessage) -> None:
    """``message`` back to the end of its queue, its unacknowledged entry removed in the
    same step (as kombu's requeue)."""
    with client.pipeline(transaction=True) as back:
        back.lpush(message.queue_key, message.item)
        back.zrem(keys.KOMBU_UNACKED_INDEX, message.tag)
        back.hdel(keys.KOMBU_UNACKED, message.tag)
        back.execute()
