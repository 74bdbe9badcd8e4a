"""Dead letters, idempotency and the outage policies through the real API and worker."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from dispatcher import DispatcherSettings, configure, task
from dispatcher.fastapi import install, jobs_router
from dispatcher.store.embedded import EmbeddedRedis, free_port
from tests.integration import sample_tasks as samples
from tests.integration.conftest import ROOT, Process, poll_state


def test_failed_jobs_are_dead_lettered_listed_without_secrets_and_retryable(
    api_url: str, api_server: Process
) -> None:
    account = f"acct-{uuid.uuid4().hex[:8]}"
    with httpx.Client() as client:
        accepted = client.post(f"{api_url}/tasks/samples.charge",
                               json={"account": account, "card_token": "tok_SECRET_42",
                                     "pin": "9999"}).json()
        poll_state(client, api_url, accepted["task_id"], {"FAILURE"})
        dead = client.get(f"{api_url}/tasks/dead").json()
        entry = next(e for e in dead if e["task_id"] == accepted["task_id"])
        assert entry["error"]["type"] == "PermissionError"
        assert entry["arguments"]["account"] == account
        assert entry["arguments"]["card_token"] == "***"  # SecretStr parameter
        assert "tok_SECRET_42" not in json.dumps(dead)
        status = client.get(f"{api_url}/tasks/{accepted['task_id']}").text
        assert "tok_SECRET_42" not in status

        again = client.post(f"{api_url}/tasks/{accepted['task_id']}/retry")
        assert again.status_code == 202
        assert again.json()["task_id"] != accepted["task_id"]
        poll_state(client, api_url, again.json()["task_id"], {"FAILURE"})
        ids = {e["task_id"] for e in client.get(f"{api_url}/tasks/dead").json()}
        assert accepted["task_id"] not in ids and again.json()["task_id"] in ids
        assert client.post(f"{api_url}/tasks/{uuid.uuid4()}/retry").status_code == 404
    assert "tok_SECRET_42" not in api_server.output()


def test_idempotency_key_on_the_celery_route(broker: str) -> None:
    key = f"order-{uuid.uuid4()}"
    ledger_key = f"idem:{uuid.uuid4()}"
    on_celery = samples.flaky.options(route="celery", idempotency_key=key)
    first = on_celery.dispatch(ledger_key, fail_times=0)
    second = on_celery.dispatch(ledger_key, fail_times=0)
    assert second == first and first.route == "celery"
    assert first.get(timeout=20) == 1
    assert len(samples.entries(ledger_key)) == 1


def test_raise_policy_answers_503_with_retry_after() -> None:
    dead_broker = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens there
    configure(DispatcherSettings(broker_url=dead_broker, broker_outage="raise",
                                 publish_timeout=0.5, _env_file=None))  # type: ignore[call-arg]

    @task(name="it.outage.heavy", weight=9)
    def heavy(n: int) -> None: ...

    app = FastAPI()
    install(app)

    @app.post("/heavy")
    def dispatch_heavy() -> dict[str, str]:
        return {"id": heavy.dispatch(1).id}

    with TestClient(app) as client:
        for _ in range(2):  # the first finds out, the second knows without waiting
            response = client.post("/heavy")
            assert response.status_code == 503
            assert response.headers["retry-after"] == "5"
            assert "unavailable" in response.json()["detail"]


def test_job_endpoints_answer_503_while_redis_is_away(tmp_path: Path) -> None:
    """With the broker away, a job is spooled (202) and every operator endpoint that
    reads Redis answers a JSON 503 with Retry-After, naming no host; the app's own
    endpoints are left alone."""
    dead_broker = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens there
    configure(DispatcherSettings(broker_url=dead_broker, publish_timeout=0.5,  # type: ignore[call-arg]
                                 spool_path=str(tmp_path / "spool.sqlite3"), _env_file=None))

    @task(name="it.outage.spooled", weight=9)
    def spooled(n: int) -> None: ...

    app = FastAPI()
    install(app)
    app.include_router(jobs_router)

    @app.get("/own")
    def own() -> None:
        raise RuntimeError("the app's own error")

    with TestClient(app, raise_server_exceptions=False) as client:
        accepted = client.post("/tasks/it.outage.spooled", json={"n": 1})
        assert accepted.status_code == 202, accepted.text
        task_id = accepted.json()["task_id"]
        for method, path in [("GET", f"/tasks/{task_id}"), ("GET", "/tasks"),
                             ("GET", "/tasks/dead"), ("GET", "/schedules"),
                             ("GET", f"/tasks/{uuid.uuid4()}"),
                             ("POST", f"/tasks/{task_id}/cancel"),
                             ("POST", f"/tasks/{task_id}/retry")]:
            response = client.request(method, path)
            assert response.status_code == 503, (path, response.status_code, response.text)
            assert response.headers["retry-after"] == "5"
            detail = response.json()["detail"]
            assert "job store (Redis) is unavailable" in detail
            assert "127.0.0.1" not in detail
        assert client.get("/own").status_code == 500  # not ours to answer


def test_worker_refuses_a_task_timeout_beyond_the_visibility_timeout(
    service_env: dict[str, str],
) -> None:
    env = {**service_env, "DISPATCH_VISIBILITY_TIMEOUT": "30"}  # generate_report: 60 s
    result = subprocess.run([sys.executable, "-m", "worker"], env=env, cwd=ROOT,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode != 0
    assert "refusing to start" in result.stderr
    assert "api.tasks.generate_report" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.fixture
def own_broker(tmp_path: Path) -> Iterator[str]:
    """A Redis of this test's own as the broker: a sweep with ``after=0`` looks at every
    publication in flight, and must neither see nor re-queue the jobs of tests running
    beside it on the shared one."""
    with EmbeddedRedis() as own:
        configure(DispatcherSettings(broker_url=own.url, _env_file=None,  # type: ignore[call-arg]
                                     spool_path=str(tmp_path / "spool.sqlite3")))
        yield own.url


def test_sweeper_requeues_only_publications_that_redis_lost(own_broker: str) -> None:
    import redis as redis_lib

    from dispatcher.routes.celery.protocol import queue_key
    from dispatcher.routes.celery.recovery import Sweeper

    client = redis_lib.Redis.from_url(own_broker)
    queue = f"parked-{uuid.uuid4().hex[:8]}"  # no worker consumes it
    parked = samples.echo.options(route="celery", queue=queue)
    waiting, reserved, lost = (parked.dispatch({"n": i}) for i in range(3))
    key = queue_key(queue, 5)
    messages = {json.loads(raw)["headers"]["id"]: raw
                for raw in client.lrange(key, 0, -1)}
    # "reserved": popped by a worker that noted it as unacknowledged, as kombu does
    client.lrem(key, 1, messages[reserved.id])
    tag = json.loads(messages[reserved.id])["properties"]["delivery_tag"]
    client.hset("unacked", tag, messages[reserved.id])
    # "lost": popped, then Redis crashed before the worker's bookkeeping
    client.lrem(key, 1, messages[lost.id])

    assert Sweeper(client, after=0).sweep() == 1
    ids = [json.loads(raw)["headers"]["id"] for raw in client.lrange(key, 0, -1)]
    assert sorted(ids) == sorted([waiting.id, lost.id])
    assert Sweeper(client, after=0).sweep() == 0  # nothing lost any more


def test_sweeper_leaves_jobs_that_left_a_queue_other_workers_consume(own_broker: str) -> None:
    """A job a stock Celery worker ran looks lost (only our workers mark a start): on a
    queue such a worker consumed after the job's publication, it is dropped from the
    watch, never re-queued. A sighting older than the job proves nothing."""
    import redis as redis_lib

    from dispatcher.routes.celery.protocol import queue_key
    from dispatcher.routes.celery.recovery import Sweeper
    from dispatcher.store.keys import INFLIGHT

    client = redis_lib.Redis.from_url(own_broker)
    shared, earlier, ours = (f"parked-{uuid.uuid4().hex[:8]}" for _ in range(3))
    before = time.time() - 1
    taken, stale, lost = (samples.echo.options(route="celery", queue=q).dispatch({"n": n})
                          for n, q in enumerate((shared, earlier, ours)))
    for queue in (shared, earlier, ours):
        assert client.rpop(queue_key(queue, 5)) is not None  # gone from its queue
    asked: list[float] = []

    def sightings() -> tuple[float, dict[str, float]]:
        asked.append(time.time())
        return observed[0], {shared: time.time() + 10, earlier: before}

    observed = [before]  # our workers last looked before any of these was published
    sweeper = Sweeper(client, after=0, sightings=sightings)
    sweeper.sweep()
    assert len(asked) == 1  # read once per pass
    assert client.llen(queue_key(shared, 5)) == 0  # not run a second time
    assert client.zscore(INFLIGHT, f"{taken.id}:1") is None  # no longer watched
    # Not re-queued yet: nobody has looked for stock workers since they were found gone.
    assert client.llen(queue_key(earlier, 5)) == client.llen(queue_key(ours, 5)) == 0
    observed[0] = time.time()
    sweeper.sweep()
    for handle, queue in ((stale, earlier), (lost, ours)):
        key = queue_key(queue, 5)
        assert [json.loads(raw)["headers"]["id"] for raw in client.lrange(key, 0, -1)] \
            == [handle.id]
        assert client.zscore(INFLIGHT, f"{handle.id}:1") is not None  # re-queued, watched
        client.delete(key)
        client.zrem(INFLIGHT, f"{handle.id}:1")


def test_sweeper_never_requeues_a_finished_job(own_broker: str) -> None:
    """A publication that left its queue unstarted by us, whose job has a terminal
    record (a worker that did not have the task failed it, say): not run again."""
    import redis as redis_lib

    from dispatcher.routes.celery.protocol import queue_key
    from dispatcher.routes.celery.recovery import Sweeper
    from dispatcher.runtime.container import current
    from dispatcher.store import keys

    client = redis_lib.Redis.from_url(own_broker)
    queue = f"parked-{uuid.uuid4().hex[:8]}"
    finished, lost = (samples.echo.options(route="celery", queue=queue).dispatch({"n": n})
                      for n in range(2))
    key = queue_key(queue, 5)
    assert client.delete(key) == 1  # both gone, unstarted
    assert current().records.flush()  # our PENDING records first, then the "FAILURE"
    client.set(keys.record(finished.id), json.dumps({"task_id": finished.id,
                                                       "status": "FAILURE"}))
    assert Sweeper(client, after=0).sweep() == 1
    assert [json.loads(raw)["headers"]["id"] for raw in client.lrange(key, 0, -1)] \
        == [lost.id]
    assert client.zscore(keys.INFLIGHT, f"{finished.id}:1") is None  # no longer watched
    client.delete(key)
    client.zrem(keys.INFLIGHT, f"{lost.id}:1")
