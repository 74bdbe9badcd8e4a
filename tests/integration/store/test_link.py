"""``Link``: the worker's and the records writer's own connection, against real Redis."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from importlib import resources
from typing import Any

import pytest
import redis
from redis.connection import Connection

from dispatcher.store.embedded import EmbeddedRedis
from dispatcher.store.link import Link, join_fields, pack_commands
from tests.support import wait_until

#: What the batch scripts start with (``dispatcher/store/lua/helpers.lua``).
LUA_HELPERS = resources.files("dispatcher.store").joinpath("lua", "helpers.lua").read_text()


@pytest.fixture
def own_redis() -> Iterator[EmbeddedRedis]:
    with EmbeddedRedis() as server:
        yield server


def test_packing_matches_redis_py() -> None:
    commands = [("SET", "k", "1", "XX", "KEEPTTL"), ("EXPIRE", "x", 100),
                ("SET", "ü", "é"), ("ZADD", "z", 1.5, "m"), ("SET", b"raw", b"\x00\xff")]
    assert b"".join(pack_commands(commands)) == b"".join(Connection().pack_commands(commands))
    large = ("EVALSHA", "f" * 40, 0, "x" * 100_000, 7)
    assert b"".join(pack_commands([large, ("PING",)])) == b"".join(
        Connection().pack_commands([large, ("PING",)]))


def test_send_now_read_later_and_error_replies_keep_step(own_redis: EmbeddedRedis) -> None:
    client = redis.Redis.from_url(own_redis.url)
    link = Link(client)
    link.send([("SET", "a", "1"), ("INCR", "a"), ("LPUSH", "a", "x"), ("INCR", "a")])
    assert link.read() is not None
    assert link.read() == 2
    with pytest.raises(redis.ResponseError):  # WRONGTYPE: a reply, not a broken link
        link.read()
    assert link.read() == 3
    assert link.call("GET", "a") == b"3"


def test_a_restarted_server_gets_a_new_connection(own_redis: EmbeddedRedis) -> None:
    client = redis.Redis.from_url(own_redis.url, socket_timeout=2)
    link = Link(client)
    assert link.call("PING") in (True, b"PONG", "PONG")
    own_redis.restart()
    assert link.call("PING") in (True, b"PONG", "PONG")


def test_an_error_mid_reply_drops_the_connection(own_redis: EmbeddedRedis) -> None:
    client = redis.Redis.from_url(own_redis.url, socket_timeout=0.5)
    link = Link(client)
    link.send([("PING",)])
    assert link.read() in (True, b"PONG", "PONG")
    own_redis.pause()  # the reply never comes: a timeout, the replies out of step
    try:
        link.send([("PING",)])
        with pytest.raises((redis.TimeoutError, redis.ConnectionError, OSError)):
            link.read()
    finally:
        own_redis.resume()
    assert link.call("PING") in (True, b"PONG", "PONG")  # on a fresh connection


def test_a_connection_the_server_closed_while_idle_is_replaced(own_redis: EmbeddedRedis) -> None:
    client = redis.Redis.from_url(own_redis.url)
    client.config_set("timeout", 1)  # the server closes connections idle for 1 s
    link = Link(client)
    assert link.call("SET", "k", "v") is not None
    time.sleep(2.5)
    assert link.call("GET", "k") == b"v"  # no error: the dead connection was replaced


def test_fields_joined_here_come_back_apart_in_a_script(redis_server: EmbeddedRedis) -> None:
    client = redis.Redis.from_url(redis_server.url)
    script = LUA_HELPERS + r"""
local field, out = fields(ARGV[2]), {}
for i = 1, tonumber(ARGV[1]) do out[i] = field() end
return out
"""
    values = ["job-1", "", '{"a": "x\\u0000y"}', "é", ""]  # empty first, middle and last
    data = join_fields(values)
    assert [v.decode() for v in client.eval(script, 0, len(values), data)] == values
    assert join_fields([]) == ""
    with pytest.raises(ValueError, match="NUL"):
        join_fields(["fine", "not\x00fine"])


@pytest.mark.parametrize("protocol", [2, 3])
def test_replies_read_from_the_socket_match_redis_py(
        redis_server: EmbeddedRedis, protocol: int) -> None:
    """Every kind of reply our calls meet, read by ``Link`` and by redis-py, on both
    protocols: the same values, and an error inside a transaction kept in its list."""
    client = redis.Redis.from_url(redis_server.url, protocol=protocol)
    client.flushdb()
    big = "x" * 200_000  # more than one recv
    client.set("big", big)
    client.hset("h", mapping={"a": "1", "b": "2"})
    client.sadd("s", "m")
    client.zadd("z", {"m": 1.5})
    link = Link(client)
    script = "return {1, 'two', {3, false}, redis.status_reply('OK'), nil}"
    calls: list[tuple[Any, ...]] = [
        ("GET", "big"), ("GET", "missing"), ("HGETALL", "h"), ("SMEMBERS", "s"),
        ("ZSCORE", "z", "m"), ("EVAL", script, 0), ("PING",), ("STRLEN", "big"),
    ]
    connection = client.connection_pool.get_connection()  # redis-py's own reading
    for call in calls:
        connection.send_command(*call)
        assert link.call(*call) == connection.read_response(), call
    client.connection_pool.release(connection)
    link.send([("MULTI",), ("INCR", "n"), ("LPUSH", "h", "x"), ("EXEC",)])
    started = [link.read() for _ in range(3)]  # OK, QUEUED, QUEUED
    assert started[0] in (b"OK", True)
    replies = link.read()
    assert replies[0] == 1 and isinstance(replies[1], redis.ResponseError)
    with pytest.raises(redis.exceptions.NoScriptError):  # its own class, as redis-py's
        link.call("EVALSHA", "0" * 40, 0)
    assert link.call("GET", "big") == big.encode()  # still in step
    assert not link.has_data()
    link.send([("PING",)])
    wait_until(link.has_data, "the reply")
    assert link.read() in (b"PONG", "PONG")


def test_replies_are_read_directly_only_where_redis_py_reads_them_plainly() -> None:
    from redis.connection import SSLConnection, UnixDomainSocketConnection

    from dispatcher.store.resp import readable_directly
    from dispatcher.store.sentinel import MasterConnection

    assert readable_directly(Connection())
    assert readable_directly(UnixDomainSocketConnection())
    # Sentinel's connection turns a demoted master's error reply into a ConnectionError.
    assert not readable_directly(MasterConnection(connection_pool=None))
    assert not readable_directly(SSLConnection())  # a TLS record may carry no reply
    assert not readable_directly(Connection(decode_responses=True))  # str, not bytes


def test_a_connection_the_pool_disconnected_is_replaced(own_redis: EmbeddedRedis) -> None:
    """``client.close()`` and ``pool.disconnect()`` close connections in use too."""
    client = redis.Redis.from_url(own_redis.url)
    link = Link(client)
    assert link.call("SET", "k", "v") is not None
    client.connection_pool.disconnect()
    assert link.call("GET", "k") == b"v"


def test_a_pipeline_larger_than_the_socket_takes_at_once_arrives_whole(
    own_redis: EmbeddedRedis,
) -> None:
    """Several chunks go out in one ``sendmsg``; what the socket did not take goes after."""
    client = redis.Redis.from_url(own_redis.url)
    link = Link(client)
    link.connect()
    reader = link._reader
    assert reader is not None
    reader.sock.settimeout(30)  # non-blocking underneath: sendmsg returns what it took
    reader.sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)  # takes less at once
    values = [bytes([65 + n]) * 3_000_000 for n in range(3)]
    link.send([("SET", f"big{n}", value) for n, value in enumerate(values)])
    assert [link.read() for _ in values] == [b"OK"] * 3
    assert [client.get(f"big{n}") for n in range(3)] == values
