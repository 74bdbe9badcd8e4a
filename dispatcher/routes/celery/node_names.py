"""One running process per worker name.

A worker's name (Celery's node name, and each direct consumer's, derived from it) keys
its heartbeat, what it holds and its inbox; a process starting under a name gives back
at once what the last process of that name held when it died. Two live processes of
one name would give back each other's running jobs, which then run twice. So each
heartbeat says which process wrote it (``owner``), and a process claims its name before
it starts (``claim_name``): it refuses a name another live process beats under.

"Live": in the same process space (machine, boot and pid namespace), the writer still
runs; elsewhere (another machine or container), its heartbeat was renewed within the
last two beats, by Redis's clock (the key's time to live).
"""

from __future__ import annotations

import json
import logging
import os
import socket
import time
from collections.abc import Callable
from typing import Any

import redis

from ...core.errors import ConfigurationError
from ...store import keys
from ...store.client import REDIS_UNREACHABLE

log = logging.getLogger("dispatcher.worker")


def _stat(pid: int) -> tuple[str, int]:
    """Process ``pid``'s state letter and when it started (clock ticks since boot);
    ``("", 0)`` when unknown (no ``/proc``). With the pid, the start time names one
    process, even once the pid has been reused."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            fields = stat.read().rsplit(b")", 1)[1].split()
        return fields[0].decode(), int(fields[19])
    except (OSError, ValueError, IndexError):
        return "", 0


def _space() -> str:
    """This process's pid space: the boot and the pid namespace ("" when unknown). Pids
    compare only within one: containers of one host (or one hostname) have their own."""
    try:
        with open("/proc/sys/kernel/random/boot_id") as boot:
            return f"{boot.read().strip()}/{os.stat('/proc/self/ns/pid').st_ino}"
    except OSError:
        return ""


def owner() -> dict[str, Any]:
    """This process, as its heartbeats name it."""
    pid = os.getpid()
    return {"machine": socket.gethostname(), "space": _space(), "pid": pid,
            "started": _stat(pid)[1]}


def _running(pid: int, started: int) -> bool:
    """Whether the process that wrote a beat as ``pid`` (started at ``started``) runs:
    not gone, not a zombie (killed, not yet reaped), not another process on its pid."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # another user's process: it exists
    state, now_started = _stat(pid)
    if state in ("Z", "X"):
        return False
    return not started or not now_started or now_started == started


def _other(raw: Any, left_ms: int, dead_after: float) -> tuple[str, bool] | None:
    """Who wrote heartbeat ``raw`` (``left_ms`` of its life left), if that may be
    another live process: its description, and whether that is certain (a running
    process of this pid space) rather than inferred from a recent beat. None when the
    writer is this process, gone, or cannot be told (an older release's beat)."""
    try:
        beat = json.loads(raw)
        machine, space = str(beat["machine"]), str(beat.get("space") or "")
        pid, started = int(beat["pid"]), int(beat.get("started") or 0)
    except (ValueError, TypeError, KeyError):
        return None
    if space and space == _space():
        if pid == os.getpid() or not _running(pid, started):
            return None
        return f"process {pid} on this machine", True
    age = dead_after - left_ms / 1000
    if age > dead_after * 2 / 3:
        return None  # it missed its last two beats: it died
    return f"process {pid} on {machine}, which beats under that name", False


def _read(client: redis.Redis, key: str) -> tuple[Any, int]:
    with client.pipeline(transaction=True) as pipe:
        pipe.get(key)
        pipe.pttl(key)
        raw, left = pipe.execute()
    return raw, int(left)


def name_taken(client: redis.Redis, name: str, dead_after: float) -> str | None:
    """Which other process may beat under ``name`` now (None: none)."""
    raw, left = _read(client, keys.worker(name))
    other = None if raw is None else _other(raw, left, dead_after)
    return None if other is None else other[0]


def claim_name(client: redis.Redis, name: str, dead_after: float, pause: float,
               nap: Callable[[float], object] = time.sleep) -> None:
    """Take ``name`` for this process before it beats, gives back or takes anything;
    ``ConfigurationError`` if another live process has it. A recent beat from another
    pid space (another machine, or a container, maybe this one's last life) is watched
    for one beat interval (``pause``): renewed, its writer lives; not, it died. Atomic
    against a process claiming the name at the same moment. With Redis away, start:
    the rescue sorts out what the name's last process held."""
    key = keys.worker(name)
    try:
        first, _ = _read(client, key)
        deadline = time.monotonic() + pause + 2.0
        while True:
            with client.pipeline(transaction=True) as pipe:
                pipe.watch(key)  # type: ignore[no-untyped-call]
                raw, left = pipe.get(key), int(pipe.pttl(key))
                other = None if raw is None else _other(raw, left, dead_after)
                if other is not None and (other[1] or raw != first):
                    break  # certain, or its beat was renewed while we watched
                if other is None or time.monotonic() > deadline:
                    pipe.multi()
                    pipe.set(key, json.dumps({"at": time.time(), "queues": [],
                                              "tasks": [], **owner()}),
                             px=max(1, int(dead_after * 1000)))
                    try:
                        pipe.execute()
                        return
                    except redis.WatchError:
                        continue  # written meanwhile: look again
            nap(0.2)
    except REDIS_UNREACHABLE as exc:
        log.warning("could not check that no other worker is named %s (%s)", name, exc)
        return
    raise ConfigurationError(
        f"a worker named {name} is already running ({other[0]}); two workers of one "
        f"name would run each other's jobs twice. Give each its own name: "
        f"dispatcher worker -n <name>@%h")
