"""``ReplyReader``: Redis replies read straight from a connection's socket.

redis-py's reply path (a ``SocketBuffer`` over ``BytesIO``, a timeout switch per
poll, a parser object per protocol) costs more than Redis itself on a one-job call
such as a publish. ``Link`` reads its replies with this instead: one ``recv`` into a
buffer, and a parser for the reply kinds of RESP2 and RESP3, answering what redis-py
answers with ``decode_responses`` off (bytes, ints, lists, None; an error reply as
its ``ResponseError`` subclass, raised at the top level and kept inside a list).

Only for plain TCP and Unix connections whose class reads replies the way redis-py's
``Connection`` does, without decoding (see ``readable_directly``); the others keep
redis-py's reading: Sentinel's (it turns a demoted master's error into a
``ConnectionError``), TLS (a TLS record may carry no reply) and decoding clients.
RESP3 push messages between replies are skipped: nothing here subscribes or tracks
keys, and redis-py's maintenance hints (Redis Enterprise) are only hints.
"""

from __future__ import annotations

import select
import socket
import time
from typing import Any

import redis
from redis._parsers.base import BaseParser
from redis.connection import AbstractConnection, Connection, SSLConnection

#: How much one ``recv`` asks for.
_CHUNK = 65_536
#: ``await_reply``: spins in a row that found nothing before spinning pauses, and for
#: how many calls it then pauses (replies come later than the budget: a remote Redis,
#: a busy machine).
SPIN_MISSES = 3
SPIN_PAUSE = 64


def _error(text: bytes) -> redis.RedisError:
    """An error reply as the exception redis-py makes of it: a ``ResponseError``
    subclass, or a ``ConnectionError`` one for a server that cannot serve now
    (``LOADING``, ``NOAUTH``, too many clients), which redis-py raises wherever it is."""
    error: redis.RedisError = BaseParser.parse_error(  # type: ignore[no-untyped-call]
        text.decode("utf-8", errors="replace"))
    if isinstance(error, redis.ConnectionError):
        raise error
    return error


def _socket_error(exc: OSError, doing: str) -> redis.RedisError:
    """As redis-py words it: the socket's own timeout is a ``TimeoutError``, anything
    else (an OS-level ``ETIMEDOUT`` too: the connection is dead) a ``ConnectionError``."""
    if isinstance(exc, TimeoutError) and exc.errno is None:
        return redis.TimeoutError(f"Timeout {doing} socket")
    return redis.ConnectionError(f"Error {doing} socket: {exc}")


class _Push(list[Any]):
    """A RESP3 push message, which a connection may get between replies."""


def readable_directly(connection: Any) -> bool:
    """Whether ``connection``'s socket may be read with a ``ReplyReader``: a plain TCP
    or Unix connection that reads, sends and decodes as redis-py's ``Connection``."""
    kind = type(connection)
    return (isinstance(connection, AbstractConnection)
            and not isinstance(connection, SSLConnection)
            and kind.read_response is Connection.read_response
            and kind.send_packed_command is Connection.send_packed_command
            and not connection.encoder.decode_responses
            and hasattr(select, "poll"))


#: Buffers per ``sendmsg`` (Linux refuses more than ``IOV_MAX``, 1024).
MOST_BUFFERS = 512


class ReplyReader:
    """Replies from one connected socket. Not thread-safe; after any error other than
    a complete error reply the caller must drop the connection (the buffer may hold
    part of a reply)."""

    def __init__(self, sock: socket.socket) -> None:
        #: The socket read; the connection's own once it reconnected is another one.
        self.sock = sock
        self._buffer = bytearray()
        self._pos = 0
        self._poll = select.poll()  # any descriptor number, unlike select.select
        self._poll.register(sock, select.POLLIN)
        self._misses = 0
        #: Calls left before ``await_reply`` spins again (see ``SPIN_PAUSE``).
        self.spin_paused = 0

    def send(self, chunks: list[bytes]) -> None:
        """Send ``chunks`` in order; socket errors as redis-py raises them.

        Several chunks go in one ``sendmsg`` (the rest, if the socket took only part,
        with ``sendall``): each socket call lets other threads take the GIL, which
        costs a busy server loop more than the call (see ``policy.governor``)."""
        try:
            if len(chunks) == 1:
                self.sock.sendall(chunks[0])
                return
            for start in range(0, len(chunks), MOST_BUFFERS):
                group = chunks[start:start + MOST_BUFFERS]
                sent = self.sock.sendmsg(group)
                for chunk in group:  # what the socket did not take, without copying it
                    if sent >= len(chunk):
                        sent -= len(chunk)
                        continue
                    self.sock.sendall(memoryview(chunk)[sent:] if sent else chunk)
                    sent = 0
        except OSError as exc:
            raise _socket_error(exc, "writing to") from exc

    def reply(self) -> Any:
        """The next reply; an error reply at the top level is raised."""
        value = self._value()
        while isinstance(value, _Push):  # out of band (RESP3): not a reply
            value = self._value()
        if isinstance(value, redis.ResponseError):
            raise value
        return value

    def await_reply(self, budget: float) -> None:
        """Busy-poll the socket up to ``budget`` seconds for the next reply before the
        read sleeps on it. A reply due within tens of microseconds reaches a thread that
        stays awake sooner than one the kernel must wake (~50 us on a virtual machine,
        most of a one-job publish's wait). ``SPIN_MISSES`` spins in a row that find
        nothing pause spinning for ``SPIN_PAUSE`` calls, so a Redis whose replies take
        longer costs a few wasted spins, not one per call. Each poll releases the GIL."""
        if budget <= 0 or self._pos < len(self._buffer):
            return
        if self.spin_paused:
            self.spin_paused -= 1
            return
        poll, clock = self._poll.poll, time.perf_counter
        end = clock() + budget
        while True:
            try:
                if poll(0):
                    self._misses = 0
                    return
            except OSError:
                return  # a broken socket: reading will say how
            if clock() >= end:
                break
        self._misses += 1
        if self._misses >= SPIN_MISSES:
            self._misses, self.spin_paused = 0, SPIN_PAUSE

    def has_data(self) -> bool:
        """Whether reply bytes (or the server's close) are here, without waiting."""
        if self._pos < len(self._buffer):
            return True
        try:
            return bool(self._poll.poll(0))
        except OSError:
            return True  # a broken socket: reading will say how

    def _fill(self) -> None:
        try:
            data = self.sock.recv(_CHUNK)
        except OSError as exc:
            raise _socket_error(exc, "reading from") from exc
        if not data:
            raise redis.ConnectionError("Connection closed by server.")
        if self._pos:
            del self._buffer[:self._pos]
            self._pos = 0
        self._buffer += data

    def _line(self) -> bytes:
        while True:
            end = self._buffer.find(b"\r\n", self._pos)
            if end >= 0:
                line = bytes(self._buffer[self._pos:end])
                self._pos = end + 2
                return line
            self._fill()

    def _exact(self, size: int) -> bytes:
        while len(self._buffer) - self._pos < size + 2:
            self._fill()
        data = bytes(self._buffer[self._pos:self._pos + size])
        self._pos += size + 2
        return data

    def _value(self) -> Any:
        line = self._line()
        try:
            return self._parse(line)
        except ValueError:
            raise redis.InvalidResponse(f"malformed reply from Redis: {line[:40]!r}") from None

    def _parse(self, line: bytes) -> Any:
        kind, rest = line[:1], line[1:]
        if kind == b":" or kind == b"(":
            return int(rest)
        if kind == b"$":
            size = int(rest)
            return None if size < 0 else self._exact(size)
        if kind == b"*" or kind == b"~":
            count = int(rest)
            return None if count < 0 else [self._value() for _ in range(count)]
        if kind == b">":
            return _Push(self._value() for _ in range(int(rest)))
        if kind == b"+":
            return rest
        if kind == b"-":
            return _error(rest)
        if kind == b"_":
            return None
        if kind == b"%":
            return {self._value(): self._value() for _ in range(int(rest))}
        if kind == b"#":
            return rest == b"t"
        if kind == b",":
            return float(rest)
        if kind == b"!":
            return _error(self._exact(int(rest)))
        if kind == b"=":
            return self._exact(int(rest))[4:]  # "txt:" and the text
        raise redis.InvalidResponse(f"unexpected reply from Redis: {line[:40]!r}")
