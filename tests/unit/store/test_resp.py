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

from dispatcher.store.resp import MOST_BUFFERS, ReplyReader


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
