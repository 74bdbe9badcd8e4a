"""One contract, two adapters: the Redis and the memory stores behind the ports answer
the same way. Each test runs against both (Redis: a real server, its own database)."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis

from dispatcher import RetryPolicy
from dispatcher.core.job import Job, new_job_id
from dispatcher.core.ports import Claimed, DeadLetterStore, IdempotencyStore, RecordStore
from dispatcher.core.record import make_dead_letter, make_record
from dispatcher.core.spec import TaskSpec
from dispatcher.store.deadletter import RedisDeadLetters
from dispatcher.store.embedded import EmbeddedRedis
from dispatcher.store.idempotency import MemoryIdempotency, RedisIdempotency
from dispatcher.store.memory import MemoryDeadLetters, MemoryRecordStore
from dispatcher.store.records import RedisRecordStore

ADAPTERS = ["memory", "redis"]


class _Up:
    def available(self) -> bool:
        return True

    def failed(self, error: BaseException) -> None:
        raise AssertionError(f"the store failed: {error}")


def _noop() -> None: ...


SPEC = TaskSpec(name="contract.noop", fn=_noop, retry=RetryPolicy(max_attempts=3))


def _job(dispatched_at: float | None = None) -> Job:
    return Job(new_job_id(), SPEC, "celery", "celery", 5, {"x": 1},
               dispatched_at=dispatched_at if dispatched_at is not None else time.time())


@pytest.fixture
def client(redis_server: EmbeddedRedis) -> Iterator[redis.Redis]:
    connection = redis.Redis(host="127.0.0.1", port=redis_server.port, db=3, socket_timeout=5)
    connection.flushdb()
    yield connection
    connection.flushdb()
    connection.close()


@pytest.fixture(params=ADAPTERS)
def make(request: pytest.FixtureRequest) -> Callable[[str], Any]:
    """``make("records" | "dead" | "idempotency")`` for this test's adapter."""
    kind = request.param

    def build(port: str) -> Any:
        if kind == "memory":
            return {"records": MemoryRecordStore, "dead": MemoryDeadLetters,
                    "idempotency": lambda: MemoryIdempotency(60)}[port]()
        connection = request.getfixturevalue("client")
        return {"records": lambda: RedisRecordStore(connection, 60),
                "dead": lambda: RedisDeadLetters(connection),
                "idempotency": lambda: RedisIdempotency(connection, 60, _Up())}[port]()

    return build


def test_a_record_is_loaded_as_saved(make: Callable[[str], Any]) -> None:
    store: RecordStore = make("records")
    job = _job()
    store.save_pending(job)
    assert store.load(job.id) == make_record(job, "PENDING")
    store.save(make_record(job, "STARTED", started_at=1.0))
    store.flush()
    loaded = store.load(job.id)
    assert loaded is not None and (loaded["status"], loaded.get("started_at")) == ("STARTED", 1.0)
    assert store.load(new_job_id()) is None


def test_history_holds_transitions_only(make: Callable[[str], Any]) -> None:
    store: RecordStore = make("records")
    job = _job()
    store.save_pending(job)
    store.save(make_record(job, "STARTED"))
    store.save(make_record(job, "STARTED", progress={"current": 1}), transition=False)
    store.save(make_record(job, "SUCCESS", result=3))
    store.flush()
    assert [(e["state"], e["attempt"]) for e in store.history(job.id)] == [
        ("STARTED", 1), ("SUCCESS", 1)]
    record = store.load(job.id)
    assert record is not None and record["result"] == 3 and record["date_done"]


def test_load_many_keeps_order_and_gaps(make: Callable[[str], Any]) -> None:
    store: RecordStore = make("records")
    first, second = _job(), _job()
    store.save_pending(first)
    store.save(make_record(second, "FAILURE", error={"type": "E", "message": "m"}))
    store.flush()
    loaded = store.load_many([second.id, "missing", first.id])
    assert [r["status"] if r else None for r in loaded] == ["FAILURE", None, "PENDING"]
    failure = loaded[0]
    assert failure is not None and failure["result"]["exc_type"] == "E"


def test_the_index_lists_newest_first_with_cursor_and_since(make: Callable[[str], Any]) -> None:
    store: RecordStore = make("records")
    now = time.time()
    jobs = [_job(now - 30 + i) for i in range(5)]
    for job in jobs:
        store.save_pending(job)
    store.flush()
    page = store.index_page(None, None, 3)
    assert [task_id for _, task_id in page] == [j.id for j in reversed(jobs)][:3]
    rest = store.index_page(page[-1], None, 10)
    assert [task_id for _, task_id in rest] == [jobs[1].id, jobs[0].id]
    recent = store.index_page(None, now - 28.5, 10)
    assert {task_id for _, task_id in recent} == {j.id for j in jobs[2:]}


def test_delete_forgets_record_and_history(make: Callable[[str], Any]) -> None:
    store: RecordStore = make("records")
    job = _job()
    store.save(make_record(job, "STARTED"))
    store.flush()
    store.delete(job.id)
    store.flush()
    assert store.load(job.id) is None and store.history(job.id) == []
    assert job.id not in [task_id for _, task_id in store.index_page(None, None, 10)]


def test_dead_letters_newest_first_get_and_remove(make: Callable[[str], Any]) -> None:
    store: DeadLetterStore = make("dead")
    entries = [make_dead_letter(_job(), {"type": "E", "message": str(i)}, "attempts_exhausted",
                                "tb") for i in range(3)]
    for offset, entry in enumerate(entries):
        entry["dead_at"] = 1000.0 + offset
        store.add(entry)
    assert [e["error"]["message"] for e in store.list(2)] == ["2", "1"]
    assert store.get(entries[0]["task_id"]) == entries[0]
    store.remove(entries[0]["task_id"])
    assert store.get(entries[0]["task_id"]) is None
    assert [e["error"]["message"] for e in store.list()] == ["2", "1"]


def test_an_idempotency_key_is_held_by_the_first_job(make: Callable[[str], Any]) -> None:
    store: IdempotencyStore = make("idempotency")
    assert store.claim("t", "key", "job-1", "celery", "q") is None
    assert store.claim("t", "key", "job-2", "inline", None) == Claimed("job-1", "t", "celery",
                                                                       "q")
    assert store.claim("other", "key", "job-3", "inline", None) is None
    store.release("t", "key", "job-2")  # not the holder: nothing changes
    assert store.claim("t", "key", "job-4", "inline", None) == Claimed("job-1", "t", "celery",
                                                                       "q")
    store.release("t", "key", "job-1")
    assert store.claim("t", "key", "job-5", "inline", None) is None
