"""The apps under load: the same endpoints hand-written with ``BackgroundTasks`` (raw)
and with the dispatcher (ours), each served by its own uvicorn process."""

from __future__ import annotations

import time

from fastapi import BackgroundTasks, FastAPI

from bench import app_tasks
from bench.app_tasks import done, noop_job, noop_task, sleep_job, sleep_task
from dispatcher.fastapi import install


def _common(app: FastAPI) -> None:
    @app.post("/plain")
    async def plain() -> dict[str, bool]:
        return {"ok": True}

    @app.post("/sync-sleep")
    def sync_sleep(ms: float = 2000) -> dict[str, bool]:
        time.sleep(ms / 1000)
        done()
        return {"ok": True}

    @app.get("/count")
    def count() -> dict[str, int]:
        """Jobs done: here (inline) and on the worker (spilled over), the most running
        at once here, and the inline jobs waiting here now."""
        from dispatcher.runtime.container import built

        runtime = built()
        waiting = runtime.inline_load()[1] - runtime.inline_load()[0] if runtime else 0
        here, on_worker, most = app_tasks.counts()
        return {"count": here + on_worker, "inline": here, "on_worker": on_worker,
                "max_running": most, "inline_waiting": waiting}


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
