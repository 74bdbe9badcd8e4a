"""``refuses_writes``: which error replies mean "Redis takes no writes for now"."""

from __future__ import annotations

import pytest
import redis
from redis import exceptions

from dispatcher.store.client import refuses_writes


@pytest.mark.parametrize("error", [
    exceptions.OutOfMemoryError("command not allowed when used memory > 'maxmemory'."),
    exceptions.ReadOnlyError("You can't write against a read only replica."),
    redis.ResponseError("NOREPLICAS Not enough good replicas to write."),
    redis.ResponseError("NOREPLICAS Not enough good replicas to write. script: 1f2e, on "
                        "@user_script:20."),
    redis.ResponseError("ERR Error running script (call to f_1f2e): @user_script:20: "
                        "-MISCONF Redis is configured to save RDB snapshots"),
    redis.ResponseError("BUSY Redis is busy running a script."),
    redis.ResponseError("MASTERDOWN Link with MASTER is down"),
])
def test_a_server_that_takes_no_writes_for_now(error: BaseException) -> None:
    assert refuses_writes(error)


@pytest.mark.parametrize("error", [
    exceptions.NoPermissionError("User w has no permissions to run the 'zadd' command"),
    redis.ResponseError("ERR unknown command 'EVALSHA'"),
    redis.ResponseError("WRONGTYPE Operation against a key holding the wrong kind of value"),
    redis.ResponseError("ERR Error running script: @user_script:3: no ROOM here"),
    redis.ConnectionError("Connection closed by server."),
])
def test_an_error_that_is_not_about_taking_writes(error: BaseException) -> None:
    assert not refuses_writes(error)
