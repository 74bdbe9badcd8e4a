"""``node_names``: who else beats under a worker's name, against a real Redis and real
processes (a ``sleep`` stands for another worker process of this machine)."""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Iterator

import pytest
import redis

from dispatcher.core.errors import ConfigurationError
from dispatcher.routes.celery.liveness import Heartbeat
from dispatcher.routes.celery.node_names import name_taken, owner, refuse_if_taken
from dispatcher.store import keys
from dispatcher.store.embedded import EmbeddedRedis

DEAD_AFTER = 30.0


@pytest.fixture
def client() -> Iterator[redis.Redis]:
    with EmbeddedRedis() as server:
        yield redis.Redis.from_url(server.url)


@pytest.fixture
def other_process() -> Iterator[subprocess.Popen[bytes]]:
    process = subprocess.Popen(["sleep", "600"])
    yield process
    if process.poll() is None:
        process.kill()
        process.wait()


def _beat(client: redis.Redis, name: str, **fields: object) -> None:
    client.set(keys.worker(name), json.dumps({"at": time.time(), "queues": [],
                                              "tasks": [], **fields}))


def _stat_start(pid: int) -> int:
    with open(f"/proc/{pid}/stat", "rb") as stat:
        return int(stat.read().rsplit(b")", 1)[1].split()[19])


def test_nobody_and_this_process_itself_leave_the_name_free(client: redis.Redis) -> None:
    assert name_taken(client, "w@host", DEAD_AFTER) is None
    Heartbeat(client, "w@host", DEAD_AFTER, [], list, list).beat()
    assert json.loads(client.get(keys.worker("w@host")) or "{}")["pid"] == os.getpid()
    assert name_taken(client, "w@host", DEAD_AFTER) is None
    refuse_if_taken(client, "w@host", DEAD_AFTER)  # no error


def test_a_running_process_of_this_machine_holds_its_name_until_it_ends(
        client: redis.Redis, other_process: subprocess.Popen[bytes]) -> None:
    me = owner()
    pid = other_process.pid
    _beat(client, "w@host", machine=me["machine"], pid=pid, started=_stat_start(pid))
    assert name_taken(client, "w@host", DEAD_AFTER) == f"process {pid} on this machine"
    with pytest.raises(ConfigurationError, match=r"already running .*-n <name>@%h"):
        refuse_if_taken(client, "w@host", DEAD_AFTER)
    other_process.kill()
    other_process.wait()
    assert name_taken(client, "w@host", DEAD_AFTER) is None


def test_a_killed_unreaped_process_or_another_on_its_pid_frees_the_name(
        client: redis.Redis, other_process: subprocess.Popen[bytes]) -> None:
    pid = other_process.pid
    machine = owner()["machine"]
    # The pid now runs a process started at another time: the beat's writer is gone.
    _beat(client, "w@host", machine=machine, pid=pid, started=_stat_start(pid) + 1)
    assert name_taken(client, "w@host", DEAD_AFTER) is None
    other_process.kill()
    os.waitid(os.P_PID, pid, os.WEXITED | os.WNOWAIT)  # dead, left unreaped: a zombie
    _beat(client, "w@host", machine=machine, pid=pid, started=_stat_start(pid))
    assert name_taken(client, "w@host", DEAD_AFTER) is None


def test_another_machines_process_holds_its_name_while_it_beats(client: redis.Redis) -> None:
    _beat(client, "w@host", machine="elsewhere", pid=123, started=1)
    assert name_taken(client, "w@host", DEAD_AFTER) == "process 123 on elsewhere"
    later = time.time() + DEAD_AFTER * 2 / 3 + 1  # two beats missed: it died
    assert name_taken(client, "w@host", DEAD_AFTER, now=later) is None


def test_an_older_releases_beat_cannot_say_and_blocks_nothing(client: redis.Redis) -> None:
    _beat(client, "w@host")  # no machine, no pid
    assert name_taken(client, "w@host", DEAD_AFTER) is None
