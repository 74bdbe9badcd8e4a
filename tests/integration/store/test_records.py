"""Job records of both routes through the real API, worker and Redis: history, progress,
the filtered listing, the event stream, retention."""

from __future__ import annotations

import json
import os
import time
import uuid
from typing import Any

import httpx
import pytest
import redis

from dispatcher import DispatcherSettings, configure, task
from dispatcher.ops.jobs import get_job, list_jobs
from dispatcher.runtime.container import current
from dispatcher.store.keys import HISTORY_PREFIX
from dispatcher.store.keys import JOBS_INDEX as INDEX_KEY
from dispatcher.store.keys import RECORD_PREFIX as KEY_PREFIX
from tests.support import poll_state, wait_until

pytestmark = pytest.mark.integration


def _dispatch(client: httpx.Client, api_url: str, name: str, **arguments: Any) -> str:
    response = client.post(f"{api_url}/tasks/{name}", json=arguments)
    assert response.status_code == 202, response.text
    return str(response.json()["task_id"])


def test_celery_job_record_has_history_timings_and_progress(api_url: str) -> None:
    with httpx.Client(timeout=10) as client:
        task_id = _dispatch(client, api_url, "samples.progress_steps", steps=4, pause=0.05,
                            hold=0.0)
        view = poll_state(client, api_url, task_id, {"SUCCESS", "FAILURE"})
    assert view["state"] == "SUCCESS" and view["route"] == "celery"
    assert view["queue"] == "celery" and view["result"] == 4
    history: list[dict[str, Any]] = view["history"]  # type: ignore[assignment]
    assert [h["state"] for h in history] == ["PENDING", "STARTED", "SUCCESS"]
    assert [h["at"] for h in history] == sorted(h["at"] for h in history)
    assert view["progress"] == {**view["progress"], "current": 4, "total": 4,  # type: ignore[dict-item]
                                "percent": 100.0, "message": "step 4 of 4"}
    assert isinstance(view["queue_wait_ms"], float) and view["queue_wait_ms"] >= 0
    assert isinstance(view["duration_ms"], float) and view["duration_ms"] >= 150


@pytest.mark.parametrize("route", ["inline", "celery"])
def test_retries_appear_in_the_history_on_both_routes(api_url: str, broker: str,
                                                      route: str) -> None:
    """Inline, the job runs in the API process, which answers from its own records
    while its writer is writing them: the answer must not lose entries in between."""
    from tests.integration import sample_tasks as samples

    key = f"ledger:{uuid.uuid4()}"
    with httpx.Client(timeout=10) as client:
        if route == "inline":  # the API's default for this task
            task_id = _dispatch(client, api_url, "samples.always_fails", key=key)
        else:
            task_id = samples.always_fails.options(route="celery").dispatch(key).id
        view = poll_state(client, api_url, task_id, {"FAILURE"}, timeout=30)
    assert view["route"] == route
    history: list[dict[str, Any]] = view["history"]  # type: ignore[assignment]
    assert [(h["state"], h["attempt"]) for h in history] == [
        ("PENDING", 1), ("STARTED", 1), ("RETRY", 1), ("STARTED", 2), ("RETRY", 2),
        ("STARTED", 3), ("FAILURE", 3),
    ]
    assert "RuntimeError: boom" in str(view["traceback"])
    assert view["error"] == {"type": "RuntimeError", "message": "boom"}


def test_listing_covers_both_routes_with_filters_and_cursor(api_url: str) -> None:
    since = time.time()
    with httpx.Client(timeout=10) as client:
        inline_ids = [_dispatch(client, api_url, "samples.echo", value={"i": i})
                      for i in range(3)]
        celery_ids = [_dispatch(client, api_url, "samples.progress_steps", steps=1, pause=0,
                                hold=0) for _ in range(3)]
        notify = client.post(f"{api_url}/send-notification/ops@example.com")
        assert notify.status_code == 202
        inline_ids.append(notify.json()["task_id"])
        for task_id in inline_ids + celery_ids:
            poll_state(client, api_url, task_id, {"SUCCESS"})
        params: dict[str, Any] = {"since": since, "limit": 2}
        seen: list[dict[str, Any]] = []
        while True:
            page = client.get(f"{api_url}/tasks", params=params).json()
            seen += page["items"]
            if page["next_cursor"] is None:
                break
            params["cursor"] = page["next_cursor"]
        ids = [v["task_id"] for v in seen]
        assert len(ids) == len(set(ids))
        assert set(inline_ids + celery_ids) <= set(ids)
        routes = {v["task_id"]: v["route"] for v in seen}
        assert {routes[i] for i in inline_ids} == {"inline"}
        assert {routes[i] for i in celery_ids} == {"celery"}
        only_celery = client.get(f"{api_url}/tasks", params={
            "since": since, "route": "celery", "name": "samples.progress_*",
            "state": "SUCCESS", "limit": 100}).json()["items"]
        assert {v["task_id"] for v in only_celery} == set(celery_ids)


def test_event_stream_of_a_celery_job(api_url: str) -> None:
    with httpx.Client(timeout=30) as client:
        task_id = _dispatch(client, api_url, "samples.progress_steps", steps=3, pause=0.4,
                            hold=0.2)
        events: list[tuple[str, dict[str, Any]]] = []
        kind = None
        with client.stream("GET", f"{api_url}/tasks/{task_id}/events") as response:
            assert response.status_code == 200
            for line in response.iter_lines():
                if line.startswith("event: "):
                    kind = line.removeprefix("event: ")
                elif line.startswith("data: ") and kind:
                    events.append((kind, json.loads(line.removeprefix("data: "))))
    states = [d["state"] for k, d in events if k == "state"]
    assert states[-1] == "SUCCESS" and "STARTED" in states
    percents = [d["progress"]["percent"] for k, d in events if k == "progress"]
    assert percents and percents == sorted(percents)
    assert events[-1][1]["progress"]["percent"] == 100.0


def test_records_expire_with_the_result_ttl(broker: str, redis_server: Any) -> None:
    configure(DispatcherSettings(broker_url=broker, result_ttl=2,  # type: ignore[call-arg]
                                 _env_file=None))

    @task(name="integration.records.short_lived")
    def short_lived() -> str:
        return "gone soon"

    client = redis.Redis.from_url(broker)
    for _ in range(5):  # a loaded machine may take the 2 s before the look: once more
        handle = short_lived.dispatch()
        assert handle.get(timeout=5) == "gone soon"
        # The final record lands with the writer's next flush (the inline result is
        # known in this process first): look once it has, or once it has expired.
        key = KEY_PREFIX + handle.id
        wait_until(lambda k=key: b"SUCCESS" in (client.get(k) or b"SUCCESS"), "the final record")
        with client.pipeline(transaction=True) as pipe:  # one moment for all three
            pipe.ttl(KEY_PREFIX + handle.id)
            pipe.ttl(HISTORY_PREFIX + handle.id)
            pipe.zscore(INDEX_KEY, handle.id)
            record_ttl, history_ttl, indexed = pipe.execute()
        if -2 not in (record_ttl, history_ttl):  # -2: expired before this look
            break
    assert 0 < record_ttl <= 2
    assert 0 < history_ttl <= 2
    assert indexed is not None
    deadline = time.monotonic() + 10
    while client.exists(KEY_PREFIX + handle.id) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert get_job(current().records, handle.id) is None
    listed = list_jobs(current().records, limit=1000).items
    assert handle.id not in {v["task_id"] for v in listed}
    # the next dispatch trims the index of what expired
    short_lived.dispatch().get(timeout=5)
    deadline = time.monotonic() + 5
    while client.zscore(INDEX_KEY, handle.id) is not None and time.monotonic() < deadline:
        time.sleep(0.1)
    assert client.zscore(INDEX_KEY, handle.id) is None


def test_a_pending_job_is_filed_and_its_record_built_by_the_writer(redis_server: Any) -> None:
    from dispatcher.core.job import Job, new_job_id
    from dispatcher.core.record import make_record
    from dispatcher.store.records import RedisRecordStore as BufferedStatusStore

    @task(name="it.records.filed")
    def filed(n: int) -> None: ...

    client = redis.Redis.from_url(redis_server.url)
    store = BufferedStatusStore(client, ttl=60, interval=10.0)  # no write until flush
    job = Job(id=new_job_id(), spec=filed.spec, route="inline", queue=None, priority=5,
              payload={"n": 1}, dispatched_at=time.time())
    store.save_pending(job)
    expected = make_record(job, "PENDING")
    assert store.load(job.id) == expected  # this process reads its own dispatch at once
    assert store.load_many([job.id]) == [expected]
    assert client.get(KEY_PREFIX + job.id) is None
    assert store.flush()
    assert json.loads(client.get(KEY_PREFIX + job.id)) == expected
    assert client.zscore(INDEX_KEY, job.id) == pytest.approx(job.dispatched_at)
    store.save(make_record(job, "STARTED"))
    assert store.load(job.id)["status"] == "STARTED"  # type: ignore[index]


def test_a_forked_child_starts_with_an_empty_buffer_and_free_locks(redis_server: Any) -> None:
    """As a Celery pool process does: the parent's filed job stays the parent's to write,
    and a lock another parent thread held at the fork does not block the child."""
    from dispatcher.core.job import Job, new_job_id
    from dispatcher.store.records import RedisRecordStore as BufferedStatusStore

    @task(name="it.records.forked")
    def forked(n: int) -> None: ...

    def job(n: int) -> Job:
        return Job(id=new_job_id(), spec=forked.spec, route="inline", queue=None,
                   priority=5, payload={"n": n}, dispatched_at=time.time())

    client = redis.Redis.from_url(redis_server.url)
    store = BufferedStatusStore(client, ttl=60, interval=10.0)
    parents, childs = job(1), job(2)
    store.save_pending(parents)
    store._lock.acquire()  # another thread of the parent in the middle of a save
    try:
        pid = os.fork()
        if pid == 0:  # the child: report through the exit code, never return to pytest
            ok = False
            try:
                ok = store._lock.acquire(timeout=2)
                store._lock.release()
                ok = ok and store.load(parents.id) is None  # not in its buffer, not written
                store.save_pending(childs)
                ok = ok and store.flush()
            finally:
                os._exit(0 if ok else 1)
    finally:
        store._lock.release()
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert json.loads(client.get(KEY_PREFIX + childs.id))["status"] == "PENDING"
    assert client.get(KEY_PREFIX + parents.id) is None  # the child did not write it
    assert store.flush()
    assert json.loads(client.get(KEY_PREFIX + parents.id))["status"] == "PENDING"


def test_a_state_saved_before_the_filed_pending_is_written_wins(redis_server: Any) -> None:
    from dispatcher.core.job import Job, new_job_id
    from dispatcher.core.record import make_record
    from dispatcher.store.records import RedisRecordStore as BufferedStatusStore

    @task(name="it.records.filed_then_started")
    def filed(n: int) -> None: ...

    client = redis.Redis.from_url(redis_server.url)
    store = BufferedStatusStore(client, ttl=60, interval=10.0)
    job = Job(id=new_job_id(), spec=filed.spec, route="inline", queue=None, priority=5,
              payload={"n": 1}, dispatched_at=time.time())
    store.save_pending(job)
    store.save(make_record(job, "STARTED"))  # before any write: the newer state stays
    assert store.flush()
    written = json.loads(client.get(KEY_PREFIX + job.id))
    assert written["status"] == "STARTED"
    assert client.zscore(INDEX_KEY, job.id) == pytest.approx(job.dispatched_at)
    assert [json.loads(e)["state"] for e in client.lrange(HISTORY_PREFIX + job.id, 0, -1)] \
        == ["STARTED"]

    gone = Job(id=new_job_id(), spec=filed.spec, route="inline", queue=None, priority=5,
               payload={"n": 2}, dispatched_at=time.time())
    store.save_pending(gone)
    store.delete(gone.id)  # deleted before the writer ran: never written afterwards
    assert store.flush()
    assert store.load(gone.id) is None and client.get(KEY_PREFIX + gone.id) is None


def test_reads_during_a_write_see_the_batch_being_written(redis_server: Any) -> None:
    """A read between the writer taking its batch and Redis having it must still find
    the newest state and every history entry (it used to find neither)."""
    import threading

    from dispatcher.core.job import Job, new_job_id
    from dispatcher.core.record import make_record
    from dispatcher.store.records import RedisRecordStore as BufferedStatusStore

    @task(name="it.records.mid_write")
    def mid_write(n: int) -> None: ...

    class PausedWriter(BufferedStatusStore):
        def _write_chunk(self, *args: Any) -> None:
            taken.set()
            assert resume.wait(5)
            super()._write_chunk(*args)

    taken, resume = threading.Event(), threading.Event()
    client = redis.Redis.from_url(redis_server.url)
    store = PausedWriter(client, ttl=60, interval=10.0)
    job = Job(id=new_job_id(), spec=mid_write.spec, route="inline", queue=None, priority=5,
              payload={"n": 1}, dispatched_at=time.time())
    store.save_pending(job)
    store.save(make_record(job, "STARTED"))
    store.save(make_record(job, "FAILURE", error={"type": "E", "message": "m"}))
    flushed: list[bool] = []
    writer = threading.Thread(target=lambda: flushed.append(store.flush()))
    writer.start()
    try:
        assert taken.wait(5)
        assert client.get(KEY_PREFIX + job.id) is None  # not written yet
        assert store.load(job.id)["status"] == "FAILURE"  # type: ignore[index]
        assert [r and r["status"] for r in store.load_many([job.id])] == ["FAILURE"]
        assert [e["state"] for e in store.history(job.id)] == ["STARTED", "FAILURE"]
    finally:
        resume.set()
        writer.join(5)
    assert flushed == [True]
    # Written now: each entry once, from Redis alone.
    assert [e["state"] for e in store.history(job.id)] == ["STARTED", "FAILURE"]
    assert json.loads(client.get(KEY_PREFIX + job.id))["status"] == "FAILURE"


def test_many_filed_jobs_are_written_in_chunks_with_their_index(redis_server: Any) -> None:
    from dispatcher.core.job import Job, new_job_id
    from dispatcher.core.record import make_record
    from dispatcher.store.records import WRITE_CHUNK
    from dispatcher.store.records import RedisRecordStore as BufferedStatusStore

    @task(name="it.records.many_filed")
    def filed(n: int) -> None: ...

    client = redis.Redis.from_url(redis_server.url)
    store = BufferedStatusStore(client, ttl=60, interval=10.0)
    jobs = [Job(id=new_job_id(), spec=filed.spec, route="inline", queue=None, priority=5,
                payload={"n": n}, request_id=None if n % 2 else f"req-{n}",
                dispatched_at=time.time()) for n in range(WRITE_CHUNK * 2 + 3)]
    for job in jobs:
        store.save_pending(job)
    assert store.flush()
    written = client.mget([KEY_PREFIX + job.id for job in jobs])
    assert [json.loads(raw) for raw in written] == [make_record(j, "PENDING") for j in jobs]
    assert all(client.zscore(INDEX_KEY, job.id) is not None for job in jobs)


def test_pending_inline_records_are_held_while_the_server_is_saturated(
    redis_server: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    import dispatcher.store.record_buffer as record_buffer
    from dispatcher.core.job import Job, new_job_id
    from dispatcher.core.record import make_record
    from dispatcher.store.records import RedisRecordStore as BufferedStatusStore

    @task(name="it.records.held")
    def held(n: int) -> None: ...

    saturated = [True]
    monkeypatch.setattr(record_buffer, "BUSY_INTERVAL", 0.01)
    client = redis.Redis.from_url(redis_server.url)
    store = BufferedStatusStore(client, ttl=60, interval=0.01, busy=lambda: saturated[0])

    def job(route: str, n: int) -> Job:
        return Job(id=new_job_id(), spec=held.spec, route=route,  # type: ignore[arg-type]
                   queue=None if route == "inline" else "default", priority=5,
                   payload={"n": n}, dispatched_at=time.time())

    def written(job_id: str) -> dict[str, Any] | None:
        raw = client.get(KEY_PREFIX + job_id)
        return None if raw is None else json.loads(raw)  # type: ignore[no-any-return]

    def wait_written(job_id: str) -> dict[str, Any]:
        deadline = time.monotonic() + 5
        while (record := written(job_id)) is None and time.monotonic() < deadline:
            time.sleep(0.01)
        assert record is not None, f"{job_id} was never written"
        return record

    inline, started, flushed = job("inline", 1), job("inline", 2), job("inline", 3)
    celery = job("celery", 4)
    for each in (inline, started, flushed, celery):
        store.save_pending(each)
    assert wait_written(celery.id) == make_record(celery, "PENDING")  # never held
    time.sleep(0.1)  # several writer cycles while saturated
    assert written(inline.id) is None and client.zscore(INDEX_KEY, inline.id) is None
    assert store.load(inline.id) == make_record(inline, "PENDING")  # this process knows
    assert store.load_many([inline.id, celery.id])[0] == make_record(inline, "PENDING")

    store.save(make_record(started, "STARTED"))  # its next state goes out, with its index
    assert wait_written(started.id)["status"] == "STARTED"
    assert client.zscore(INDEX_KEY, started.id) == pytest.approx(started.dispatched_at)

    assert store.flush()  # an explicit flush writes everything, held or not
    assert written(flushed.id) == make_record(flushed, "PENDING")

    late = job("inline", 5)
    store.save_pending(late)
    time.sleep(0.1)
    assert written(late.id) is None
    saturated[0] = False  # the load eases: the held records are written without a save
    assert wait_written(late.id) == make_record(late, "PENDING")
    assert client.zscore(INDEX_KEY, late.id) == pytest.approx(late.dispatched_at)


def test_records_of_a_failed_write_are_written_once_redis_answers(tmp_path: Any) -> None:
    """A write that fails (Redis paused past the client's timeout) keeps its records and
    writes them when Redis answers again, with no new save to wake it: a finished job
    must not keep showing PENDING after an outage."""
    from dispatcher.core.job import Job, new_job_id
    from dispatcher.core.record import decode_record, make_record
    from dispatcher.store.client import redis_client
    from dispatcher.store.embedded import EmbeddedRedis
    from dispatcher.store.records import RedisRecordStore

    @task(name="it.records.after_pause")
    def after_pause(n: int) -> None: ...

    with EmbeddedRedis(data_dir=str(tmp_path)) as server:
        admin = redis.Redis.from_url(server.url)
        store = RedisRecordStore(redis_client(server.url, 0.3), ttl=60)
        job = Job(id=new_job_id(), spec=after_pause.spec, route="inline", queue=None,
                  priority=5, payload={"n": 1}, dispatched_at=time.time())
        admin.execute_command("CLIENT", "PAUSE", 3000, "WRITE")
        store.save(make_record(job, "STARTED"))
        store.save(make_record(job, "SUCCESS", result=None))
        wait_until(lambda: store.failed_at is not None, "the write failing on the pause")
        wait_until(lambda: admin.get(KEY_PREFIX + job.id) is not None,
                   "the kept records written once Redis answers")
        record = decode_record(admin.get(KEY_PREFIX + job.id))
        assert record is not None and record["status"] == "SUCCESS"
        states = [json.loads(e)["state"] for e in admin.lrange(HISTORY_PREFIX + job.id, 0, -1)]
        assert states[-1] == "SUCCESS" and "STARTED" in states
