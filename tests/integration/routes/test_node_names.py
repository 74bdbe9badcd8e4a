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
from dispatcher.routes.celery.node_names import claim_name, name_taken, owner
from dispatcher.store import keys
from dispatcher.store.embedded import EmbeddedRedis

DEAD_AFTER = 30.0
PAUSE = 0.3  # the beat interval claim_name watches a recent beat for
FRESH_MS = 30_000  # a beat just written
STALE_MS = 5_000  # 25 s old: two beats missed


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


def _beat(client: redis.Redis, name: str, left_ms: int = FRESH_MS, **fields: object) -> None:
    client.set(keys.worker(name), json.dumps({"at": time.time(), "queues": [],
                                              "tasks": [], **fields}), px=left_ms)


def _stat_start(pid: int) -> int:
    with open(f"/proc/{pid}/stat", "rb") as stat:
        return int(stat.read().rsplit(b")", 1)[1].split()[19])


def _here(pid: int, started: int) -> dict[str, object]:
    """A beat's owner fields for process ``pid`` of this machine's pid space."""
    return {**owner(), "pid": pid, "started": started}


def test_nobody_and_this_process_itself_leave_the_name_free(client: redis.Redis) -> None:
    assert name_taken(client, "w@host", DEAD_AFTER) is None
    claim_name(client, "w@host", DEAD_AFTER, PAUSE)  # free: claimed
    assert json.loads(client.get(keys.worker("w@host")) or "{}")["pid"] == os.getpid()
    Heartbeat(client, "w@host", DEAD_AFTER, [], list, list).beat()
    assert name_taken(client, "w@host", DEAD_AFTER) is None
    claim_name(client, "w@host", DEAD_AFTER, PAUSE)  # its own: still free


def test_a_running_process_of_this_machine_holds_its_name_until_it_ends(
        client: redis.Redis, other_process: subprocess.Popen[bytes]) -> None:
    pid = other_process.pid
    _beat(client, "w@host", STALE_MS, **_here(pid, _stat_start(pid)))
    assert name_taken(client, "w@host", DEAD_AFTER) == f"process {pid} on this machine"
    with pytest.raises(ConfigurationError, match=r"already running .*-n <name>@%h"):
        claim_name(client, "w@host", DEAD_AFTER, PAUSE)
    other_process.kill()
    other_process.wait()
    assert name_taken(client, "w@host", DEAD_AFTER) is None
    claim_name(client, "w@host", DEAD_AFTER, PAUSE)


def test_a_killed_unreaped_process_or_another_on_its_pid_frees_the_name(
        client: redis.Redis, other_process: subprocess.Popen[bytes]) -> None:
    pid = other_process.pid
    # The pid now runs a process started at another time: the beat's writer is gone.
    _beat(client, "w@host", **_here(pid, _stat_start(pid) + 1))
    assert name_taken(client, "w@host", DEAD_AFTER) is None
    other_process.kill()
    os.waitid(os.P_PID, pid, os.WEXITED | os.WNOWAIT)  # dead, left unreaped: a zombie
    _beat(client, "w@host", **_here(pid, _stat_start(pid)))
    assert name_taken(client, "w@host", DEAD_AFTER) is None


@pytest.mark.parametrize("machine", ["elsewhere", "this one"])
def test_another_pid_spaces_beat_that_is_renewed_keeps_its_name(
        client: redis.Redis, machine: str) -> None:
    """Another machine, or a container of this one (its own pid namespace, maybe this
    hostname): its pids mean nothing here, so whether its beat is renewed decides."""
    name = owner()["machine"] if machine == "this one" else machine
    fields = {"machine": name, "space": "another-boot/1", "pid": 1}
    _beat(client, "w@host", FRESH_MS, **fields)
    taken = name_taken(client, "w@host", DEAD_AFTER)
    assert taken is not None and taken.startswith(f"process 1 on {name}")
    beats = 0

    def nap(seconds: float) -> None:  # the other process beats while we watch
        nonlocal beats
        beats += 1
        _beat(client, "w@host", FRESH_MS, **fields, beat=beats)

    with pytest.raises(ConfigurationError, match="already running"):
        claim_name(client, "w@host", DEAD_AFTER, PAUSE, nap)
    assert beats == 1  # refused at the first renewal seen
    _beat(client, "w@host", STALE_MS, **fields)
    assert name_taken(client, "w@host", DEAD_AFTER) is None  # two beats missed: it died


def test_another_pid_spaces_beat_that_is_not_renewed_frees_its_name(
        client: redis.Redis) -> None:
    """A restarted container's last life: its beat is recent but never renewed, so
    after one beat interval the name is this process's."""
    _beat(client, "w@host", FRESH_MS, machine="box", space="another-boot/1", pid=1)
    naps: list[float] = []

    def nap(seconds: float) -> None:
        naps.append(seconds)
        time.sleep(seconds)

    claim_name(client, "w@host", DEAD_AFTER, PAUSE, nap)
    assert naps  # it watched before claiming
    assert json.loads(client.get(keys.worker("w@host")) or "{}")["pid"] == os.getpid()


def test_an_older_releases_beat_cannot_say_and_blocks_nothing(client: redis.Redis) -> None:
    _beat(client, "w@host")  # no machine, no pid
    assert name_taken(client, "w@host", DEAD_AFTER) is None
    claim_name(client, "w@host", DEAD_AFTER, PAUSE)
