"""Publishing prepared messages straight to Redis, each exactly once per publication.

Publishing through Celery's ``apply_async`` costs a producer, an exchange lookup and
several round trips per job; here a batch is one ``EVALSHA`` of
``store/lua/publish.lua`` (``publish_one.lua`` for a single job), which pushes each
message onto kombu's list for (queue, priority) *and* sets a publish marker, so a job
re-sent after a timeout or from the outage spool lands in the queue exactly once. A job
not yet due goes to the delay store instead, and is pushed when due (``delayed``).
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any, Generic, TypeVar

import redis

from ...store import keys
from ...store.link import Link, join_fields, pack_parts, pack_text
from ...store.scripts import PUBLISH, PUBLISH_ONE

PublishItem = tuple[str, str, str, str | None, float | None]
"""``(publish_id, queue_key, message_json, record_json, due)``: one job to publish; a
``due`` time (``time.time()`` seconds) still to come files it in the delay store."""

Tag = TypeVar("Tag")

#: Queue lists whose packed ``publish_one`` tail a publisher keeps.
_TAILS_KEPT = 1000


class Publisher:
    """Pushes prepared messages onto their queues, each exactly once per job id."""

    def __init__(self, client: redis.Redis, marker_ttl: int, record_ttl: int,
                 spin: float = 0.0) -> None:
        self.client = client
        self.marker_ttl = marker_ttl
        self.record_ttl = record_ttl
        #: Seconds ``publish_one`` busy-polls for its reply (``DISPATCH_PUBLISH_SPIN_US``).
        #: Only a thread that dispatches alone spins: the last one to publish here, with no
        #: other publish in flight. A spinning thread takes the GIL back after every poll,
        #: which costs threads that dispatch at the same time (2 threads: -11 %, 8: -44 %
        #: when every thread spun).
        self.spin = spin
        self._waiting = 0
        self._last_thread = 0
        self._waiting_lock = threading.Lock()
        # EVALSHA straight away: redis-py's Script in a pipeline asks SCRIPT EXISTS first,
        # a second round trip per publication.
        self._sha = PUBLISH.sha
        self._local = threading.local()
        # publish_one's command in the protocol, packed once per namespace (packing every
        # part at every call cost ~8 us of ~25): (namespace, its unchanging head, its
        # tail per queue), swapped whole, so no call mixes two namespaces' parts.
        self._packed: tuple[str | None, bytes, dict[str, bytes]] = (None, b"", {})

    def publish_one(self, item: PublishItem,
                    meanwhile: Callable[[], object] | None = None) -> int:
        """``publish([item])`` through this thread's own connection, kept across calls
        (no pool checkout per job: the one-by-one ``.dispatch()`` path). ``meanwhile``
        is called once the command is sent, before its reply is read: work that does
        not need the outcome, done while Redis runs the script."""
        link: Link | None = getattr(self._local, "link", None)
        if link is None:
            link = self._local.link = Link(self.client)
        publish_id, key = item[0], item[1]
        if "\x00" in publish_id or "\x00" in key:  # as command() refuses them
            raise ValueError("a queue name or publish id holds a NUL character")
        now = time.time()
        try:
            link.send_packed(self.packed_one(item, now))
            thread = threading.get_ident()
            with self._waiting_lock:
                self._waiting += 1
                alone = self._waiting == 1 and self._last_thread == thread
                self._last_thread = thread
            try:
                if meanwhile is not None:
                    meanwhile()
            finally:
                try:
                    reply = link.read(self.spin if alone else 0.0)
                finally:
                    with self._waiting_lock:
                        self._waiting -= 1
            return int(reply)
        except redis.exceptions.NoScriptError:
            self.client.script_load(PUBLISH_ONE.source)
            return int(link.call(*self.one_command(item, now)))

    def one_command(self, item: PublishItem, now: float) -> tuple[Any, ...]:
        """The ``EVALSHA`` command (name first) that ``publish_one`` sends for ``item``
        (packed there from its parts)."""
        publish_id, key, message, record, due = item
        # The last: where a direct consumer idling on the queue says so (``handoff``).
        return ("EVALSHA", PUBLISH_ONE.sha, 3, keys.INFLIGHT, keys.JOBS_INDEX,
                keys.DELAYED, self.marker_ttl, self.record_ttl, now, publish_id,
                key, message, record or "", "" if due is None else repr(due),
                keys.MARKER_PREFIX, keys.RECORD_PREFIX, keys.idle_set(key))

    def packed_one(self, item: PublishItem, now: float) -> bytes:
        """``one_command(item, now)`` in the protocol, from parts packed once."""
        publish_id, key, message, record, due = item
        namespace, head, tails = self._packed
        if namespace != keys.PREFIX:  # first use, or keys.use_namespace since
            parts = self.one_command(("", "", "", None, None), 0.0)
            head, tails = b"*%d\r\n" % len(parts) + pack_parts(parts[:8]), {}
            self._packed = (keys.PREFIX, head, tails)
        tail = tails.get(key)
        if tail is None:
            if len(tails) >= _TAILS_KEPT:
                tails.clear()
            tail = tails[key] = pack_parts(self.one_command(
                ("", key, "", None, None), 0.0)[-3:])
        return b"".join((
            head, pack_text(repr(now)), pack_text(publish_id), pack_text(key),
            pack_text(message), pack_text(record or ""),
            pack_text("" if due is None else repr(due)), tail))

    def publish(self, items: Sequence[PublishItem]) -> int:
        """Publish ``items`` in one round trip; returns how many were pushed now (the
        others had been published already).

        Raises ``redis.RedisError``/``OSError`` when Redis does not answer in time.
        """
        try:
            return int(self.client.evalsha(*self.command(items)[1:]))
        except redis.exceptions.NoScriptError:  # Redis restarted and forgot the script
            self.client.script_load(PUBLISH.source)
            return int(self.client.evalsha(*self.command(items)[1:]))

    def command(self, items: Sequence[PublishItem]) -> tuple[Any, ...]:
        """The ``EVALSHA`` command (name first) that publishes ``items``."""
        fields: list[str] = []
        for publish_id, key, message, record, due in items:
            fields += (publish_id, key, message, record or "", "" if due is None else repr(due))
        try:
            data = join_fields(fields)
        except ValueError:
            raise ValueError("a queue name or publish id holds a NUL character") from None
        return ("EVALSHA", self._sha, 3, keys.INFLIGHT, keys.JOBS_INDEX, keys.DELAYED,
                self.marker_ttl,
                self.record_ttl, time.time(), len(items), data, keys.MARKER_PREFIX,
                keys.RECORD_PREFIX)

    def stream(self) -> PublishStream[Any]:
        return PublishStream(self)


class PublishStream(Generic[Tag]):
    """Publish calls pipelined on one connection: Redis runs one batch while the caller
    prepares and sends the next, instead of the two taking turns.

    ``send`` a batch with a tag of your choosing; ``receive`` returns the oldest batch's
    tag and count once Redis confirmed it. An error is raised (a broken connection is
    dropped, see ``Link``): the batches still in ``abandon()`` were not confirmed (some
    may have been published; re-sending them is safe, the publish markers skip those).
    """

    def __init__(self, publisher: Publisher) -> None:
        self._publisher = publisher
        self._link = Link(publisher.client)  # this stream's own connection
        self._in_flight: deque[tuple[Tag, Sequence[PublishItem]]] = deque()
        self._confirmed: deque[tuple[Tag, int]] = deque()

    def __len__(self) -> int:
        """Batches sent and not yet returned by ``receive``."""
        return len(self._in_flight) + len(self._confirmed)

    def send(self, tag: Tag, items: Sequence[PublishItem]) -> None:
        command = self._publisher.command(items)
        self._in_flight.append((tag, items))  # unconfirmed from here on, even if this fails
        self._link.send([command])

    def receive(self) -> tuple[Tag, int]:
        if self._confirmed:
            return self._confirmed.popleft()
        if not self._in_flight:
            raise RuntimeError("receive() without a batch in flight")
        try:
            count = int(self._link.read())
        except redis.exceptions.NoScriptError:
            self._load_and_resend()
            return self._confirmed.popleft()
        tag, _ = self._in_flight.popleft()
        return tag, count

    def _load_and_resend(self) -> None:
        """Redis did not know the script (first use, or a ``SCRIPT FLUSH``), so the
        batches sent after the oldest were refused too: read their replies, load the
        script, re-send the refused ones in order. Until all that succeeded, every batch
        stays unconfirmed (re-sending one that did land is skipped by its markers)."""
        counts: list[int | None] = [None]
        for _ in range(1, len(self._in_flight)):
            try:
                counts.append(int(self._link.read()))
            except redis.exceptions.NoScriptError:
                counts.append(None)
        self._publisher.client.script_load(PUBLISH.source)
        confirmed = [
            (tag, self._publisher.publish(items) if count is None else count)
            for (tag, items), count in zip(self._in_flight, counts, strict=True)
        ]
        self._in_flight.clear()
        self._confirmed.extend(confirmed)

    def abandon(self) -> list[Tag]:
        """The tags of the batches sent and not confirmed; forgets them (batches already
        confirmed are still returned by ``receive``)."""
        tags = [tag for tag, _ in self._in_flight]
        self._in_flight.clear()
        return tags

    def close(self) -> None:
        """Give the connection back (dropped if replies are still unread)."""
        self._link.close()
