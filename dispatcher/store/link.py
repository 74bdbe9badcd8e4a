"""``Link``: one Redis connection of this process's own, for the calls made on every job.

redis-py's pool and command layer cost more than Redis itself on these hot, simple
calls (about 40 us to pack a command, get and release a connection): a worker makes
two such calls per job and the records writer one per batch. A ``Link`` packs
commands itself and keeps one connection, so it can also send now and read the
replies later (pipelined publish calls in ``routes.celery.publisher.PublishStream``).

Scripts that take a batch take it as one argument of NUL-joined fields
(``join_fields`` here, ``lua/helpers.lua`` in the script): JSON text never holds a raw
NUL, so the split is exact, nothing is escaped a second time, and the one large
argument is sent without being copied.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Sequence
from typing import Any, cast

import redis
from redis.connection import Connection

from .resp import ReplyReader, readable_directly

#: Parts longer than this are sent as they are rather than copied into a buffer.
_LARGE = 16_384

def as_text(value: Any) -> str:
    """A Redis reply as text (clients here do not decode responses)."""
    return value.decode() if isinstance(value, bytes) else str(value)


def join_fields(fields: Sequence[str]) -> str:
    """``fields`` as one script argument for ``LUA_HELPERS``; ValueError if one of them
    holds a NUL (it would shift every field after it)."""
    data = "\x00".join(fields)
    if data.count("\x00") != max(0, len(fields) - 1):
        raise ValueError("a field holds a NUL character")
    return data


def pack_commands(commands: Sequence[tuple[Any, ...]]) -> list[bytes]:
    """Redis protocol for ``commands`` (str, bytes or number parts), as chunks to send
    in order: small parts joined, a large one (a batch of messages) never copied."""
    chunks: list[bytes] = []
    small: list[bytes] = []
    for command in commands:
        small.append(b"*%d\r\n" % len(command))
        for part in command:
            kind = type(part)  # exact types first: this runs for every part of every call
            if kind is str:
                data = part.encode()
            elif kind is bytes:
                data = part
            elif kind is int or kind is float:
                data = repr(part).encode()
            else:
                data = _other_part(part)
            if len(data) > _LARGE:
                small.append(b"$%d\r\n" % len(data))
                chunks += (b"".join(small), data)
                small = [b"\r\n"]
            else:
                small.append(b"$%d\r\n%b\r\n" % (len(data), data))
    chunks.append(b"".join(small))
    return chunks


def pack_parts(parts: Sequence[Any]) -> bytes:
    """``parts`` of a command as the protocol has them, without the command's header:
    the unchanging parts of a hot command, packed once (see ``Link.send_packed``)."""
    return b"".join(pack_commands([tuple(parts)]))[len(b"*%d\r\n" % len(parts)):]


def pack_text(text: str) -> bytes:
    """One text part, as ``pack_parts`` packs it."""
    data = text.encode()
    return b"$%d\r\n%b\r\n" % (len(data), data)


def _other_part(part: Any) -> bytes:
    """A subclass of bytes, str, int or float; anything else is refused."""
    if isinstance(part, bytes):
        return bytes(part)
    if isinstance(part, str):
        return part.encode()
    if isinstance(part, int | float) and not isinstance(part, bool):
        return repr(part).encode()
    raise TypeError(f"cannot send a {type(part).__name__} to Redis: {part!r}")


class Link:
    """A connection from ``client``'s pool kept by this process (a forked child takes
    a new one). Not thread-safe: callers serialise their use.

    Replies are read straight from the socket (``resp.ReplyReader``) on plain TCP and
    Unix connections; TLS, Sentinel's and decoding ones keep redis-py's reading.
    Any error other than a command's own error reply drops the connection, since the
    replies may be out of step; the next call connects afresh.
    """

    def __init__(self, client: redis.Redis) -> None:
        self.client = client
        self._connection: Connection | None = None
        self._reader: ReplyReader | None = None
        self._pid = 0
        self._unread = 0

    def connect(self) -> Connection:
        """The connection, made now if need be (e.g. before a pool process's first job).

        Between calls (no reply pending) a connection the server closed meanwhile (idle
        timeout, restart, failover) is replaced, as redis-py's pool does on checkout.
        """
        connection = self._connection
        if connection is not None and self._pid == os.getpid():
            if self._unread:
                return connection
            try:
                stale = self.has_data()
            except (redis.ConnectionError, OSError):
                stale = True
            if not stale:
                return connection
            self.drop()
        # Nothing of a connection made before (or in the parent, before a fork) is kept.
        self._connection = self._reader = None
        self._unread = 0
        connection = self.client.connection_pool.get_connection()
        self._connection, self._pid = connection, os.getpid()
        if readable_directly(connection):
            sock = connection._sock
            if sock is None:
                connection.connect()  # type: ignore[no-untyped-call]
                sock = connection._sock
            self._reader = ReplyReader(cast(socket.socket, sock))
        return connection

    def has_data(self) -> bool:
        """Whether a reply (or the server's close) has come, without waiting."""
        if self._connection is None:
            return False
        reader = self._reader
        if reader is not None:
            # The pool may have disconnected it meanwhile (redis-py's pool.disconnect):
            # its socket is then gone, or another one.
            return reader.sock is not self._connection._sock or reader.has_data()
        return bool(self._connection.can_read(timeout=0))

    @property
    def unread(self) -> int:
        """Replies sent for and not read yet (none once the connection was dropped)."""
        return self._unread

    def send(self, commands: Sequence[tuple[Any, ...]]) -> None:
        """Send ``commands`` without waiting; each reply must then be ``read``."""
        self._send(pack_commands(commands), len(commands))

    def send_packed(self, data: bytes) -> None:
        """``send`` one command already in the protocol (``pack_parts``, ``pack_text``)."""
        self._send([data], 1)

    def _send(self, chunks: list[bytes], replies: int) -> None:
        connection = self.connect()
        try:
            if self._reader is not None:
                self._reader.send(chunks)
            else:
                connection.send_packed_command(  # type: ignore[no-untyped-call]
                    chunks, check_health=False)
        except BaseException:
            self.drop()
            raise
        self._unread += replies

    def read(self, spin: float = 0.0) -> Any:
        """The next reply; a command's error reply is raised as its ``ResponseError``.
        ``spin``: seconds to busy-poll for it first (``ReplyReader.await_reply``; on
        connections read here directly, else ignored)."""
        connection = self._connection
        if connection is None:  # never sent, or dropped after an error
            raise redis.ConnectionError("no reply to read: the connection was lost")
        try:
            reader = self._reader
            if reader is not None and spin > 0:
                reader.await_reply(spin)
            reply = reader.reply() if reader is not None else connection.read_response()
        except redis.ResponseError:
            self._unread -= 1
            raise  # the reply was read whole: still in step
        except BaseException:
            self.drop()
            raise
        self._unread -= 1
        return reply

    def call(self, *command: Any) -> Any:
        """Send one command and return its reply."""
        self.send([command])
        return self.read()

    def close(self) -> None:
        """Give the connection back to the pool (dropped if replies are still unread)."""
        if self._unread:
            self.drop()
        elif self._connection is not None and self._pid == os.getpid():
            self.client.connection_pool.release(self._connection)
        self._connection = None
        self._reader = None

    def drop(self) -> None:
        connection, self._connection = self._connection, None
        self._reader = None
        self._unread = 0
        if connection is not None and self._pid == os.getpid():
            connection.disconnect()  # type: ignore[no-untyped-call]
            self.client.connection_pool.release(connection)
