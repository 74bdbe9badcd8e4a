"""``ReplyReader`` on replies a test writes itself (a socket pair): the server answers
that real Redis gives rarely (loading, refused, malformed, split across packets).
Every reply kind against real Redis is in tests/integration/store/test_link.py."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from typing import Any

import pytest
import redis

from dispatcher.store.resp import MOST_BUFFERS, SPIN_MISSES, SPIN_PAUSE, ReplyReader


@pytest.fixture
def pair() -> Iterator[tuple[ReplyReader, socket.socket]]:
    ours, server = socket.socketpair()
    ours.settimeout(2)
    yield ReplyReader(ours), server
    ours.close()
    server.close()


def test_a_server_that_cannot_serve_now_raises_even_inside_a_list(
        pair: tuple[ReplyReader, socket.socket]) -> None:
    reader, server = pair
    server.sendall(b"-LOADING Redis is loading the dataset in memory\r\n")
    with pytest.raises(redis.BusyLoadingError):  # a ConnectionError: the spool takes over
        reader.reply()
    server.sendall(b"*2\r\n:1\r\n-NOAUTH Authentication required.\r\n")
    with pytest.raises(redis.AuthenticationError):
        reader.reply()


def test_an_error_inside_a_transaction_stays_in_its_list(
        pair: tuple[ReplyReader, socket.socket]) -> None:
    reader, server = pair
    server.sendall(b"*2\r\n:1\r\n-WRONGTYPE Operation against a key\r\n-ERR top\r\n")
    first, second = reader.reply()
    assert first == 1 and isinstance(second, redis.ResponseError)
    with pytest.raises(redis.ResponseError, match="top"):
        reader.reply()


def test_replies_split_anywhere_and_pushes_between_them(
        pair: tuple[ReplyReader, socket.socket]) -> None:
    reader, server = pair
    data = b">2\r\n$7\r\nmessage\r\n:9\r\n$5\r\nhello\r\n%1\r\n+a\r\n#t\r\n"
    assert not reader.has_data()
    for cut in range(1, len(data)):  # a packet ends at every place in turn
        server.sendall(data[:cut])
        reader._fill()  # takes what came: exactly the first part
        server.sendall(data[cut:])
        assert reader.reply() == b"hello"  # the push before it is skipped
        assert reader.reply() == {b"a": True}
        assert not reader.has_data()


def test_a_malformed_or_cut_reply_is_an_error_of_redis(
        pair: tuple[ReplyReader, socket.socket]) -> None:
    reader, server = pair
    server.sendall(b":twelve\r\n")
    with pytest.raises(redis.InvalidResponse):
        reader.reply()
    server.sendall(b"$10\r\nhal")
    server.close()
    with pytest.raises(redis.ConnectionError):
        reader.reply()


def test_a_reply_that_never_comes_is_a_timeout(pair: tuple[ReplyReader, socket.socket]) -> None:
    reader, _ = pair
    reader.sock.settimeout(0.05)
    with pytest.raises(redis.TimeoutError):
        reader.reply()


def test_what_one_sendmsg_did_not_take_follows_in_order(
        pair: tuple[ReplyReader, socket.socket]) -> None:
    reader, server = pair
    sock = reader.sock
    sock.settimeout(30)  # non-blocking underneath: sendmsg returns what it took
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    chunks = [b"head", bytes(range(256)) * 8000, b"middle", b"\xff" * 3_000_000, b"tail"]
    took: list[int] = []

    class Noted:  # the socket, with what each sendmsg took noted
        def __getattr__(self, name: str) -> Any:
            return getattr(sock, name)

        def sendmsg(self, buffers: list[bytes]) -> int:
            took.append(sock.sendmsg(buffers))
            return took[-1]

    arrived = bytearray()
    expected = sum(len(chunk) for chunk in chunks)

    def read() -> None:
        while len(arrived) < expected:
            data = server.recv(1 << 20)
            if not data:
                return
            arrived.extend(data)

    receiver = threading.Thread(target=read)
    receiver.start()
    reader.sock = Noted()  # type: ignore[assignment]
    reader.send(chunks)
    receiver.join(60)
    assert len(took) == 1 and 0 < took[0] < expected  # one sendmsg took only part
    assert bytes(arrived) == b"".join(chunks)


def test_more_buffers_than_one_sendmsg_takes_go_in_groups(
        pair: tuple[ReplyReader, socket.socket]) -> None:
    reader, server = pair
    chunks = [b"%05d" % n for n in range(3 * MOST_BUFFERS + 7)]  # past Linux's IOV_MAX
    reader.send(chunks)
    expected = b"".join(chunks)
    arrived = bytearray()
    while len(arrived) < len(expected):
        arrived.extend(server.recv(1 << 16))
    assert bytes(arrived) == expected


def test_a_reply_that_is_there_ends_the_spin_and_is_read(
        pair: tuple[ReplyReader, socket.socket]) -> None:
    reader, server = pair
    server.sendall(b":7\r\n")
    for _ in range(SPIN_MISSES):  # each returns on the reply, long before the budget
        reader.await_reply(10.0)
    assert reader.spin_paused == 0  # none of them counted as a miss
    assert reader.reply() == 7


def test_spins_that_keep_finding_nothing_pause_then_spinning_resumes(
        pair: tuple[ReplyReader, socket.socket]) -> None:
    """A Redis whose replies come later than the budget costs a few spins, then none
    for SPIN_PAUSE calls; every reply is still read whole."""
    reader, server = pair
    for call in range(SPIN_MISSES):
        assert reader.spin_paused == 0
        reader.await_reply(1e-5)  # nothing comes: the budget runs out
        server.sendall(b"+late%d\r\n" % call)
        assert reader.reply() == b"late%d" % call
    assert reader.spin_paused == SPIN_PAUSE
    for _ in range(SPIN_PAUSE):
        reader.await_reply(10.0)  # paused: back at once, though nothing has come
        server.sendall(b"+ok\r\n")
        assert reader.reply() == b"ok"
    assert reader.spin_paused == 0
    server.sendall(b":1\r\n")
    reader.await_reply(10.0)  # spinning again, and a reply that came ends it
    assert reader.reply() == 1


def test_a_found_reply_forgets_earlier_misses(
        pair: tuple[ReplyReader, socket.socket]) -> None:
    reader, server = pair
    for _ in range(SPIN_MISSES - 1):
        reader.await_reply(1e-5)
    server.sendall(b":1\r\n")
    reader.await_reply(10.0)
    assert reader.reply() == 1
    reader.await_reply(1e-5)  # one miss after a hit: no pause
    assert reader.spin_paused == 0
