"""The apps under load: the same endpoints hand-written with ``BackgroundTasks`` (raw)
and with the dispatcher (ours), each served by its own uvicorn process."""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections import deque

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


class HandOffFloor:
    """What a durable hand-off of every job costs this app at the least, with nothing
    of ours: the endpoint appends the job to a deque and a thread sends what gathered
    every 0.1 s (``BUSY_LINGER``) to Redis, either as one message of a Celery
    message's size per job (pipelined ``LPUSH``, the cheapest per-job publish) or as
    one compact entry per job, all of a batch in one ``LPUSH``. Nobody runs these
    jobs: the bench deletes the lists (``FLOOR_KEYS``)."""

    def __init__(self, key: str, per_job: bool) -> None:
        self.key = key
        self.per_job = per_job
        self.jobs: deque[str] = deque()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def put(self, ms: float) -> None:
        job_id = str(uuid.uuid4())
        if self.per_job:  # as large as our Celery message for this job (~1,080 bytes)
            self.jobs.append(json.dumps({"id": job_id, "task": "bench.sleep",
                                         "args": [ms], "pad": "x" * 980}))
        else:
            self.jobs.append(json.dumps([job_id, "bench.sleep", [ms]]))
        if self._thread is None:
            with self._lock:
                if self._thread is None:
                    self._thread = threading.Thread(target=self._run, daemon=True)
                    self._thread.start()

    def _run(self) -> None:
        client = app_tasks.broker
        while True:
            time.sleep(0.1)
            batch = [self.jobs.popleft() for _ in range(len(self.jobs))]
            if not batch:
                continue
            if not self.per_job:
                client.lpush(self.key, "\n".join(batch))
                continue
            pipe = client.pipeline(transaction=False)
            for message in batch:
                pipe.lpush(self.key, message)
            pipe.execute()


FLOOR_KEYS = ("bench:floor:per-job", "bench:floor:compact")
_per_job_floor = HandOffFloor(FLOOR_KEYS[0], per_job=True)
_compact_floor = HandOffFloor(FLOOR_KEYS[1], per_job=False)


# Registered after /nojob, so each pays at least one route more than it (see above).
@raw.post("/floor-per-job")
async def raw_floor_per_job() -> dict[str, bool]:
    _per_job_floor.put(10)
    return {"ok": True}


@raw.post("/floor-compact")
async def raw_floor_compact() -> dict[str, bool]:
    _compact_floor.put(10)
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
