"""How our worker's kombu channel takes messages while its queues have a backlog.

kombu's Redis transport blocks on ``BRPOP``, then writes the taken message down in
its ``unacked`` hash in a second round trip (ours adds its bookkeeping to that one,
``transport.DeliveryQoS``). While the last take found a message, this channel asks
with ``lua/take.lua`` instead: it pops from the same lists in the same order without
blocking and writes the message down in the same step, one round trip per message
and no moment where a taken message is recorded nowhere. When it finds the lists
empty, the next take is kombu's ``BRPOP`` again, so an idle worker waits as before.
"""

from __future__ import annotations

import logging
import time
from queue import Empty
from typing import Any

import redis
from kombu.utils.encoding import bytes_to_str
from kombu.utils.json import loads

from ...store import keys
from ...store.client import refuses_writes
from ...store.link import pack_commands
from ...store.scripts import TAKE

log = logging.getLogger("dispatcher.worker")

#: Transport option: how long a job's run count is kept (0: not counted on delivery).
RUNS_TTL_OPTION = "dispatch_runs_ttl"
COUNT_RUNS_OPTION = "dispatch_count_runs"


def runs_ttl(options: dict[str, Any]) -> int:
    """The run count's lifetime from the transport options; 0: not counted here."""
    ttl = int(options.get(RUNS_TTL_OPTION) or 0)
    return ttl if options.get(COUNT_RUNS_OPTION) else 0


def record_ttl(options: dict[str, Any]) -> int:
    """A job record's lifetime (``DISPATCH_RESULT_TTL``, as the run count's option
    carries it), for a PENDING record the take writes; 0: the records live apart from
    the broker (none written there)."""
    return int(options.get(RUNS_TTL_OPTION) or 0) if options.get(COUNT_RUNS_OPTION) else 0


class TakingChannel:
    """A mixin before kombu's Redis ``Channel`` (see the module docstring)."""

    #: The next take uses the script (the last one found a message).
    _take_next = True
    #: The command in flight on the polling connection is the script.
    _taking = False
    #: The script failed for another reason than a missing script: BRPOP from now on.
    _take_off = False
    #: While a message the script took is delivered: its delivery tag and what the
    #: script counted for it (``[runs, cancelled]``, None for a message not ours).
    taken: tuple[str, list[Any] | None] | None = None
    #: While a message is delivered: the list it was taken from (with every prefix) and
    #: the message exactly as taken, to put it back should writing it down fail.
    holding: tuple[str, str] | None = None
    #: The run count's lifetime for the script (0: not counted on the broker), and a
    #: record's.
    _runs_ttl: int | None = None
    _record_ttl = 0

    #: Queues consumed without acknowledgements (replies to ``inspect``): kombu keeps
    #: no record of what it takes from them, so neither may the script.
    _no_ack: frozenset[str] = frozenset()

    def basic_consume(self, queue: str, *args: Any, **kwargs: Any) -> Any:
        if kwargs.get("no_ack", args[0] if args else False):
            self._no_ack = self._no_ack | {queue}
        return super().basic_consume(queue, *args, **kwargs)  # type: ignore[misc]

    def _brpop_start(self, timeout: Any = None) -> None:
        channel: Any = self
        if not self._take_next or self._take_off or not self._no_ack.isdisjoint(
                channel.active_queues):
            self._taking = False
            super()._brpop_start(timeout)  # type: ignore[misc]
            return
        queues = channel._queue_cycle.consume(len(channel.active_queues))
        if not queues:
            return
        prefix = channel.global_keyprefix
        lists = [prefix + channel._q_for_pri(queue, priority)
                 for priority in channel.priority_steps for queue in queues]
        fixed = [prefix + channel.unacked_index_key, prefix + channel.unacked_key,
                 keys.INFLIGHT]
        if self._runs_ttl is None:  # read once: the options do not change
            options = channel.connection.client.transport_options or {}
            self._runs_ttl, self._record_ttl = runs_ttl(options), record_ttl(options)
        connection = channel.client.connection
        channel._in_poll = connection
        channel._brpop_sent_at = time.monotonic()
        self._taking = True
        # Packed here: redis-py's packer costs this serial stage more than the command.
        connection.send_packed_command(pack_commands([(
            "EVALSHA", TAKE.sha, len(fixed) + len(lists), *fixed, *lists, repr(time.time()),
            self._runs_ttl, keys.MARKER_PREFIX, keys.CANCEL_PREFIX, keys.RUNS_PREFIX,
            keys.TAKEN_PREFIX, keys.RECORD_PREFIX, self._record_ttl)]))

    def _brpop_read(self, **options: Any) -> bool:
        """kombu's reading of ``BRPOP``'s reply, or the script's; either way the
        message is delivered by ``_deliver``, which keeps it as it was taken."""
        channel: Any = self
        taking = self._taking
        try:
            try:
                reply = channel.client.parse_response(
                    channel.client.connection, "EVALSHA" if taking else "BRPOP", **options)
            except redis.exceptions.NoScriptError:
                channel._create_client().script_load(TAKE.source)  # Redis restarted
                raise Empty() from None
            except redis.ResponseError as exc:
                if refuses_writes(exc):  # for now: Celery reconnects, with its backoff
                    raise redis.ConnectionError(f"Redis refuses writes: {exc}") from exc
                if not taking:
                    raise
                log.warning("taking messages with one round trip is off: %s", exc)
                self._take_off = True
                raise Empty() from None
            except channel.connection_errors:
                channel.client.connection.disconnect()
                raise
            if not reply:
                if taking:
                    self._take_next = False  # empty: block on BRPOP until one comes
                raise Empty()
            if not taking:  # kombu's client gave the list's name without the prefix
                self._take_next = True  # a message came: there may be more
                reply = [channel.global_keyprefix + bytes_to_str(reply[0]), reply[1]]
            self._deliver(reply)
            return True
        finally:
            self._taking = False
            channel._in_poll = None
            flush = getattr(channel, "_flush_brpop_reauth", None)  # recent kombu only
            if flush is not None:
                flush()

    def _deliver(self, reply: list[Any]) -> None:
        channel: Any = self
        key, item = bytes_to_str(reply[0]), bytes_to_str(reply[1])
        queue = key[len(channel.global_keyprefix):].rsplit(channel.sep, 1)[0]
        payload = loads(item)
        if len(reply) > 2:  # written down by the script
            runs, cancelled, ours = (int(value) for value in reply[3:6])
            counts = [runs if runs >= 0 else None, bool(cancelled)] if ours else None
            self.taken = (payload["properties"]["delivery_tag"], counts)
        self.holding = (key, item)
        try:
            channel._queue_cycle.rotate(queue)
            channel.connection._deliver(payload, queue)
        finally:
            self.taken = self.holding = None
