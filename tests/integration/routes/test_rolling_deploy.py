"""Rolling deploys and shared Redis: a worker that does not have a task hands its
messages back for one that has it, and fails them only after the grace."""

from __future__ import annotations

import json
import sys
import time
import uuid
from collections import Counter
from pathlib import Path

import redis
from celery import Celery

from dispatcher.core.record import decode_record
from dispatcher.store import keys
from tests.integration.conftest import Process
from tests.integration.sample_tasks import record_order
from tests.support import wait_until


def _worker(env: dict[str, str], log: Path, queue: str, name: str, **extra: str) -> Process:
    process = Process([sys.executable, "-m", "worker", "--concurrency", "1", "-Q", queue,
                       "--hostname", f"{name}@%h"], {**env, **extra}, log)
    process.wait_for_output(" ready.", timeout=60)
    return process


def test_old_worker_hands_back_tasks_it_does_not_have(
    broker: str, service_env: dict[str, str], tmp_path: Path
) -> None:
    """The old release (only ``api.tasks``) is alone on the queue when jobs of a task
    only the new release has arrive; it hands them back, untouched. Then the new
    release starts beside it and runs each of them once, their records intact."""
    queue = f"rolling-{uuid.uuid4().hex[:8]}"
    client = redis.Redis.from_url(broker)
    old = _worker(service_env, tmp_path / "old.log", queue, "old",
                  DISPATCH_TASK_MODULES="api.tasks")
    new = None
    try:
        key = f"rolling:{uuid.uuid4()}"
        handles = [record_order.options(route="celery", queue=queue).dispatch(key, f"j{i}", 0)
                   for i in range(6)]
        old.wait_for_output("does not have task samples.record_order", timeout=60)
        for handle in handles:  # nothing lost, nothing failed while the old one is alone
            record = decode_record(client.get(keys.record(handle.id)))
            assert record is None or record["status"] == "PENDING"
        new = _worker(service_env, tmp_path / "new.log", queue, "new")
        wait_until(lambda: client.llen(key) >= len(handles), "every job run by the new worker")
        runs = Counter(json.loads(raw)["label"] for raw in client.lrange(key, 0, -1))
        assert runs == Counter({f"j{i}": 1 for i in range(6)})
        for handle in handles:
            handle.get(timeout=30)
            record = handle.record()
            assert record is not None
            assert (record["state"], record["attempt"], record["queue"]) == ("SUCCESS", 1, queue)
            assert record["dispatched_at"]
        assert "samples.record_order" not in _ran(old)
    finally:
        old.stop()
        if new is not None:
            new.stop()


def _ran(process: Process) -> str:
    return "\n".join(line for line in process.output().splitlines() if "task.started" in line)


def test_a_task_no_worker_has_fails_after_the_grace_and_is_dead_lettered(
    broker: str, service_env: dict[str, str], tmp_path: Path
) -> None:
    queue = f"nobody-{uuid.uuid4().hex[:8]}"
    worker = _worker(service_env, tmp_path / "w.log", queue, "graceful",
                     DISPATCH_UNKNOWN_TASK_GRACE="2")
    app = Celery("plain-client", broker=broker, backend=broker)
    try:
        started = time.monotonic()
        result = app.send_task("nobody.has.this", args=[1], kwargs={"x": 2}, queue=queue)
        worker.wait_for_output("does not have task nobody.has.this", timeout=30)
        client = redis.Redis.from_url(broker)
        wait_until(lambda: client.hget(keys.DEAD_LETTERS, result.id) is not None,
                   "the unknown task dead-lettered after the grace")
        assert time.monotonic() - started >= 2  # handed back for the grace first
        dead = json.loads(client.hget(keys.DEAD_LETTERS, result.id))  # type: ignore[arg-type]
        assert (dead["reason"], dead["task_name"]) == ("unknown_task", "nobody.has.this")
        assert dead["arguments"] == {"x": 2, "(positional)": [1]}
        record = decode_record(client.get(keys.record(result.id)))
        assert record is not None and record["status"] == "FAILURE"
        assert record["queue"] == queue and record["dispatched_at"]
        assert record["error"]["type"] == "UnknownTaskError"  # type: ignore[index]
    finally:
        app.close()
        worker.stop()
