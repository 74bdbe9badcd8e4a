"""The apps under load: the same endpoints hand-written with ``BackgroundTasks`` (raw)
and with the dispatcher (ours), each served by its own uvicorn process."""

from __future__ import annotations

import threading
import time

from fastapi import BackgroundTasks, FastAPI

from dispatcher import task
from dispatcher.fastapi import install

_count = 0
#: Sleeping jobs running now, and the most seen at once (the executor's bound).
_running = 0
_max_running = 0
_lock = threading.Lock()


def _done() -> None:
    global _count
    with _lock:
        _count += 1


def _sleep(ms: float) -> None:
    global _running, _max_running
    with _lock:
        _running += 1
        _max_running = max(_max_running, _running)
    try:
        time.sleep(ms / 1000)
    finally:
        with _lock:
            _running -= 1
    _done()


def noop_job() -> None:
    _done()


def sleep_job(ms: float) -> None:
    _sleep(ms)


@task(name="bench.noop", weight=1)
def noop_task() -> None:
    _done()


@task(name="bench.sleep", weight=1)
def sleep_task(ms: float) -> None:
    _sleep(ms)


def _common(app: FastAPI) -> None:
    @app.post("/plain")
    async def plain() -> dict[str, bool]:
        return {"ok": True}

    @app.post("/sync-sleep")
    def sync_sleep(ms: float = 2000) -> dict[str, bool]:
        time.sleep(ms / 1000)
        _done()
        return {"ok": True}

    @app.get("/count")
    async def count() -> dict[str, int]:
        return {"count": _count, "max_running": _max_running}


raw = FastAPI()
_common(raw)


@raw.post("/noop")
async def raw_noop(background: BackgroundTasks) -> dict[str, bool]:
    background.add_task(noop_job)
    return {"ok": True}


@raw.post("/sleep")
async def raw_sleep(background: BackgroundTasks, ms: float = 10) -> dict[str, bool]:
    background.add_task(sleep_job, ms)
    return {"ok": True}


# The 10 ms job scenario: no query parameter, so the endpoint differs from /plain by
# the job alone (FastAPI's parameter parsing costs as much as a dispatch).
@raw.post("/sleep10")
async def raw_sleep10(background: BackgroundTasks) -> dict[str, bool]:
    background.add_task(sleep_job, 10)
    return {"ok": True}


# What /sleep10 is compared with: the same endpoint without the job, registered right
# after it. FastAPI matches routes in order (~1 us per route passed on this machine), so
# the comparison endpoint pays one route more than /sleep10, never fewer.
@raw.post("/nojob")
async def raw_nojob() -> dict[str, bool]:
    return {"ok": True}


ours = FastAPI()
install(ours)
_common(ours)


@ours.post("/noop")
async def ours_noop() -> dict[str, bool]:
    noop_task.dispatch()
    return {"ok": True}


@ours.post("/sleep")
async def ours_sleep(ms: float = 10) -> dict[str, bool]:
    sleep_task.dispatch(ms)
    return {"ok": True}


@ours.post("/sleep10")
async def ours_sleep10() -> dict[str, bool]:
    sleep_task.dispatch(10)
    return {"ok": True}


@ours.post("/nojob")
async def ours_nojob() -> dict[str, bool]:
    return {"ok": True}
