"""kombu's Redis transport with the worker's per-delivery bookkeeping folded in.

kombu writes every message a worker takes into its ``unacked`` hash and index, and
removes it on the ack. Our worker used to make a round trip of its own before each
job as well: mark the publication started, read the job's cancel mark and count the
delivery (crash redeliveries, see ``worker``). Here those commands ride in kombu's
steps: while a backlog lasts, one script pops the message and writes all of it down
(``taking``); otherwise the message kombu's ``BRPOP`` brought is written down in one
transaction over a connection of our own with hand-packed commands (``store.link``),
or put back on its queue if that fails (``putback``).
Acknowledgements do not wait for their replies. The counts reach the pool process in
the ``dispatch_delivery`` header; a message without it (another transport, a foreign
message) is counted by the pool process as before.

The delivery is counted when the worker takes the message, not when the job starts:
with late acks and a prefetch of one per pool process, a message is taken only for a
free process. A message with an ``eta`` (sent by a plain Celery client) may wait in
the worker, so it is counted when it starts, as before.

Only ``redis://`` and ``sentinel://`` brokers use this transport (``transport_for``);
``rediss://`` and ``unix://`` keep kombu's own, since kombu reads TLS and socket
settings from the transport's name.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from typing import Any
from urllib.parse import urlsplit

import redis
from kombu.transport import redis as kombu_redis
from kombu.transport.virtual import base as virtual
from kombu.utils.json import dumps

from ...core.record import encode_record, implied_pending
from ...store import keys
from ...store.client import REDIS_ERRORS, REDIS_UNREACHABLE, refuses_writes
from ...store.link import Link
from .delivery import DELIVERY_HEADER, delivery_commands, publication_of
from .putback import hand_over, owe_acks
from .spare import SpareQoS
from .taking import COUNT_RUNS_OPTION, RUNS_TTL_OPTION, TakingChannel, record_ttl, runs_ttl

__all__ = ["COUNT_RUNS_OPTION", "RUNS_TTL_OPTION", "SentinelTransport", "Transport",
           "transport_for"]


#: A connection lost or out of step: replaced.
_LOST = REDIS_UNREACHABLE
log = logging.getLogger("dispatcher.worker")

#: Replies to one acknowledgement: MULTI, ZREM, HDEL (queued), EXEC.
_ACK_REPLIES = 4

_SCHEMES = {"redis": "Transport", "sentinel": "SentinelTransport"}


def transport_for(broker_url: str | None) -> str | None:
    """This module's transport for ``broker_url`` (None: kombu picks by the scheme)."""
    scheme = urlsplit(broker_url or "").scheme
    name = _SCHEMES.get(scheme)
    return None if name is None else f"{__name__}:{name}"


class _Started:
    """A job a pool process accepted, whose taken mark is to be cleared (``started``)."""

    __slots__ = ("job_id",)

    def __init__(self, job_id: str) -> None:
        self.job_id = job_id


class DeliveryQoS(SpareQoS, kombu_redis.QoS):
    """kombu's ``unacked`` bookkeeping and ours in one transaction per delivery."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._link: Link | None = None
        #: kombu acknowledges from any thread (a threads pool): the link is shared.
        self._lock = threading.Lock()
        #: Sent, their replies not read yet: delivery tags of acknowledgements, and
        #: ``_Started`` entries (the taken marks cleared).
        self._acks: collections.deque[Any] = collections.deque()
        channel: Any = self.channel
        options = channel.connection.client.transport_options or {}
        self._runs_ttl, self._record_ttl = runs_ttl(options), record_ttl(options)
        self._count_runs = self._runs_ttl > 0
        self.init_spare(options)

    def _connection(self) -> Link:
        if self._link is None:
            # kombu's own bookkeeping uses the channel's synchronous pool too.
            channel: Any = self.channel
            self._link = Link(channel._create_client())
        return self._link

    def _key(self, name: str) -> str:
        channel: Any = self.channel
        return f"{channel.global_keyprefix}{name}"

    def append(self, message: Any, delivery_tag: Any) -> None:
        delivery = message.delivery_info
        headers = message.headers
        if isinstance(headers, dict):
            headers.pop(DELIVERY_HEADER, None)  # ours to set: never taken from a sender
        taken = getattr(self.channel, "taken", None)
        if taken is not None and taken[0] == delivery_tag:  # written down as it was taken
            if taken[1] is not None and isinstance(headers, dict):
                headers[DELIVERY_HEADER] = taken[1]
            virtual.QoS.append(self, message, delivery_tag)
            return
        entry = dumps([message._raw, delivery["exchange"], delivery["routing_key"]])
        written_at = time.time()
        commands: list[tuple[Any, ...]] = [
            ("MULTI",),
            ("ZADD", self._key(self.unacked_index_key), written_at, delivery_tag),
            ("HSET", self._key(self.unacked_key), delivery_tag, entry),
        ]
        publication = publication_of(headers)
        if publication is not None:
            pending = implied_pending(headers) if self._record_ttl else None
            commands += delivery_commands(
                publication, self._runs_ttl if self._count_runs else 0, held=True,
                pending=None if pending is None else (encode_record(pending), self._record_ttl))
        commands.append(("EXEC",))
        try:
            replies = self._transact(commands)
        except REDIS_ERRORS as exc:  # the message was taken off its queue: not to be lost
            hand_over(self.channel, str(delivery_tag), self._key(self.unacked_key),
                      self._key(self.unacked_index_key), written_at, publication,
                      publication is not None and self._count_runs, exc)
            if isinstance(exc, _LOST):
                raise
            # Celery stops a worker at a channel error, but reconnects after this one.
            raise redis.ConnectionError(f"writing a message down failed: {exc}") from exc
        if publication is not None:
            cancelled = bool(replies[4])
            runs = int(replies[5]) if self._count_runs else None
            headers[DELIVERY_HEADER] = [runs, cancelled]
        virtual.QoS.append(self, message, delivery_tag)

    def ack(self, delivery_tag: Any) -> None:
        """Sent without waiting for the reply, which is read later (before the next
        command that waits, or when it has come): the consumer's loop does not stop
        for it. Until its reply is read the ack is kept, and sent again on a new
        connection if this one turns out lost or refused (an ack is idempotent). Should
        the new one fail too, the unconfirmed acks go to ``putback``'s thread, which
        sends them once Redis takes writes."""
        self.note_end(delivery_tag)
        self._send(delivery_tag)
        virtual.QoS.ack(self, delivery_tag)

    def started(self, delivery_tag: Any, job_id: str) -> None:
        """A pool process accepted the job (``started.StartedRequest``): its taken mark
        is cleared, sent as an ack is. Best effort: a mark left over (Redis lost
        meanwhile) only spares the job one death count, should it die this run."""
        self.note_start(delivery_tag)
        if self._count_runs:
            self._send(_Started(job_id))

    def _send(self, entry: Any) -> None:
        with self._lock:
            try:
                for retry in (True, False):
                    link = self._connection()
                    try:
                        self._read_acks(link, wait=False)  # also finds a lost connection
                        link.send(self._commands(entry))
                        self._acks.append(entry)
                        return
                    except _LOST as exc:
                        if not retry:
                            raise
                        log.debug("acknowledging again on a new connection: %s", exc)
                        self._lost(link)
            except _LOST as exc:
                self._owe_acks([*self._acks, *([] if entry in self._acks else [entry])], exc)

    def _owe_acks(self, tags: list[Any], reason: BaseException) -> None:
        """Give up this connection and hand ``tags`` to ``putback``'s thread."""
        if self._link is not None:
            self._link.drop()
        self._acks.clear()
        tags = [tag for tag in tags if not isinstance(tag, _Started)]  # best effort
        if tags:
            owe_acks(self.channel, [str(tag) for tag in tags], self._key(self.unacked_key),
                     self._key(self.unacked_index_key), reason)

    def _commands(self, entry: Any) -> list[tuple[Any, ...]]:
        if isinstance(entry, _Started):
            return [("DEL", keys.taken(entry.job_id))]
        return [("MULTI",), ("ZREM", self._key(self.unacked_index_key), entry),
                ("HDEL", self._key(self.unacked_key), entry), ("EXEC",)]

    def _transact(self, commands: list[tuple[Any, ...]]) -> Any:
        """Run ``commands`` (MULTI ... EXEC) and return EXEC's replies. A connection
        lost before (Redis restarted since the last job) is replaced once: the message
        was taken from its queue already and must be written down."""
        with self._lock:
            for retry in (True, False):
                link = self._connection()
                try:
                    link.send(commands)
                    self._read_acks(link)
                    for _ in range(len(commands) - 1):
                        link.read()  # OK and QUEUED: an error here is raised by EXEC too
                    return link.read()
                except _LOST as exc:
                    self._lost(link)
                    if not retry:
                        raise
                    log.warning("kombu's bookkeeping again on a new connection: %s", exc)
                except BaseException:
                    self._lost(link)
                    raise
        raise AssertionError("unreachable")

    def _read_acks(self, link: Link, wait: bool = True) -> None:
        """Read the replies of acknowledgements sent before (a refused one is logged);
        with ``wait`` False, only those already here."""
        while self._acks:
            if not wait:
                link.connect()
                if not link.has_data():
                    return
            refused = None
            replies = 1 if isinstance(self._acks[0], _Started) else _ACK_REPLIES
            for _ in range(replies):  # every reply, so the next read is in step
                try:
                    link.read()
                except redis.ResponseError as exc:
                    refused = refused or exc
            if refused is not None and refuses_writes(refused):  # kept, sent again
                raise redis.ConnectionError(f"an acknowledgement was refused: {refused}")
            if refused is not None:
                log.warning("an acknowledgement was refused: %s", refused)
            self._acks.popleft()

    def _lost(self, link: Link) -> None:
        """Replace the connection; acks whose replies never came are sent again."""
        link.drop()
        if self._acks:
            link.send([c for entry in self._acks for c in self._commands(entry)])

    def close_link(self) -> None:
        self.forget_starts()
        with self._lock:
            link, self._link = self._link, None
            if link is None:
                return
            try:
                self._read_acks(link)  # processed before the connection closes
            except _LOST as exc:
                self._owe_acks(list(self._acks), exc)
            link.close()


class _DeliveryChannel:
    """Gives the QoS's connection back when kombu closes the channel."""

    _qos: Any

    def close(self) -> None:
        qos = self._qos
        if isinstance(qos, DeliveryQoS):
            qos.close_link()
        super().close()  # type: ignore[misc]


class Channel(_DeliveryChannel, TakingChannel, kombu_redis.Channel):
    QoS = DeliveryQoS


class SentinelChannel(_DeliveryChannel, TakingChannel, kombu_redis.SentinelChannel):
    QoS = DeliveryQoS


class Transport(kombu_redis.Transport):
    Channel = Channel


class SentinelTransport(kombu_redis.SentinelTransport):
    Channel = SentinelChannel
