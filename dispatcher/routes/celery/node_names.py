"""One running process per worker name.

A worker's name (Celery's node name, and each direct consumer's, derived from it) keys
its heartbeat, what it holds and its inbox; a process starting under a name gives back
at once what the last process of that name held when it died. Two live processes of
one name would give back each other's running jobs, which then run twice. So each
heartbeat says which process wrote it (``owner``), and a process refuses to start
under a name another live process beats under (``refuse_if_taken``).
"""

from __future__ import annotations

import json
import logging
import os
import socket
import time
from typing import Any

import redis

from ...core.errors import ConfigurationError
from ...store import keys

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


def owner() -> dict[str, Any]:
    """This process, as its heartbeats name it."""
    pid = os.getpid()
    return {"machine": socket.gethostname(), "pid": pid, "started": _stat(pid)[1]}


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


def name_taken(client: redis.Redis, name: str, dead_after: float,
               now: float | None = None) -> str | None:
    """Which other process beats under ``name`` now (None: none, or one that died): a
    running process of this machine, or one of another machine that beat within the
    last two beats (``liveness.beat_pause``: three fit in ``dead_after``)."""
    raw = client.get(keys.worker(name))
    if raw is None:
        return None
    try:
        beat = json.loads(raw)
        at, machine = float(beat["at"]), str(beat["machine"])
        pid, started = int(beat["pid"]), int(beat.get("started") or 0)
    except (ValueError, TypeError, KeyError):
        return None  # an older release's heartbeat: it cannot say
    now = time.time() if now is None else now
    if now - at > dead_after * 2 / 3:
        return None  # it missed its last two beats: it died
    if machine == socket.gethostname():
        if pid == os.getpid() or not _running(pid, started):
            return None
        return f"process {pid} on this machine"
    return f"process {pid} on {machine}"


def refuse_if_taken(client: redis.Redis, name: str, dead_after: float) -> None:
    """Raise ``ConfigurationError`` if another live process beats under ``name``; with
    Redis away, start (the rescue sorts out what a name's last process held)."""
    try:
        other = name_taken(client, name, dead_after)
    except (redis.ConnectionError, redis.TimeoutError) as exc:
        log.warning("could not check that no other worker is named %s (%s)", name, exc)
        return
    if other is not None:
        raise ConfigurationError(
            f"a worker named {name} is already running ({other}); two workers of one "
            f"name would run each other's jobs twice. Give each its own name: "
            f"dispatcher worker -n <name>@%h")
