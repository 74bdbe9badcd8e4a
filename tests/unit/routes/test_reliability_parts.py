"""Unit tests of the reliability parts: start-up checks, wire format, spool, dead-letter
redaction, idempotency without Redis, SecretStr arguments, API guards."""

from __future__ import annotations

import base64
import json
import sqlite3
from pathlib import Path

import pytest
from fastapi import Depends, FastAPI
from fastapi.testclient import TestClient
from pydantic import SecretStr

from dispatcher import ConfigurationError, RetryPolicy, configure, task
from dispatcher.core.job import Job
from dispatcher.core.record import make_dead_letter
from dispatcher.core.redaction import REDACTED
from dispatcher.fastapi import install, require_api_token
from dispatcher.ops.checks import check_configuration, problems
from dispatcher.ops.dashboard_data import redacted_dead_letters
from dispatcher.routes.celery.protocol import queue_key, task_message
from dispatcher.routes.celery.spool import Spool, SpooledJob
from dispatcher.store.memory import MemoryDeadLetters
from tests.unit.helpers import unit_settings


def test_checks_refuse_timeouts_beyond_the_visibility_timeout_not_retry_delays() -> None:
    @task(name="unit.checks.slow", timeout=30)
    def slow() -> None: ...

    # Retries wait in the delay store, not in a worker: any delay is fine.
    @task(name="unit.checks.patient", retry=RetryPolicy(max_attempts=2, max_delay=45))
    def patient() -> None: ...

    found = problems(unit_settings(visibility_timeout=30))
    assert any("unit.checks.slow" in p and "timeout" in p for p in found)
    assert not any("unit.checks.patient" in p for p in found)
    assert not [p for p in problems(unit_settings(visibility_timeout=60)) if "unit.checks" in p]
    with pytest.raises(ConfigurationError, match="refusing to start"):
        check_configuration(unit_settings(visibility_timeout=30))


def test_checks_refuse_pickle_and_unverified_tls() -> None:
    conf = {"accept_content": ["json", "pickle"], "task_serializer": "pickle"}
    found = problems(unit_settings(), conf)
    assert any("accept_content" in p for p in found)
    assert any("task_serializer" in p for p in found)
    insecure = "rediss://cache.example:6380/0?ssl_cert_reqs=none"
    assert any("certificate" in p for p in problems(unit_settings(broker_url=insecure)))
    allowed = unit_settings(broker_url=insecure, allow_insecure_tls=True)
    assert not any("certificate" in p for p in problems(allowed))
    verified = "rediss://cache.example:6380/0?ssl_cert_reqs=required"
    assert not any("certificate" in p for p in problems(unit_settings(broker_url=verified)))


def _job(priority: int = 5, payload: dict[str, object] | None = None) -> Job:
    @task(name=f"unit.wire.t{priority}")
    def t(x: int) -> int:
        return x

    return Job(id="abc", spec=t.spec, route="celery", queue="q", priority=priority,
               payload=payload or {"x": 1}, attempt=2, request_id="rid")


def test_message_is_celery_protocol_2_json() -> None:
    message = task_message(_job())
    assert message["content-type"] == "application/json"
    headers = message["headers"]
    assert (headers["id"], headers["task"], headers["retries"]) == ("abc", "unit.wire.t5", 1)
    assert headers["eta"] is None  # never: delayed jobs wait in the delay store
    assert headers["dispatch"]["request_id"] == "rid"
    args, kwargs, embed = json.loads(base64.b64decode(message["body"]))
    assert (args, kwargs) == ([], {"x": 1})
    assert set(embed) == {"callbacks", "errbacks", "chain", "chord"}
    assert message["properties"]["delivery_info"]["routing_key"] == "q"


@pytest.mark.parametrize(("priority", "key"), [
    (9, "q"), (7, "q"), (6, "q\x06\x163"), (4, "q\x06\x163"), (3, "q\x06\x166"),
    (1, "q\x06\x166"), (0, "q\x06\x169"),
])
def test_queue_keys_follow_kombu_priority_steps(priority: int, key: str) -> None:
    assert queue_key("q", priority) == key


def test_spool_is_durable_and_ordered(tmp_path: Path) -> None:
    path = tmp_path / "spool.sqlite3"
    spool = Spool(path)
    for i in range(3):
        spool.put(SpooledJob(f"id{i}:1", "q", f"m{i}", None))
    reopened = Spool(path)  # another process would see the same rows
    assert reopened.depth() == 3
    assert [j.job_id for j in reopened.peek()] == ["id0:1", "id1:1", "id2:1"]
    reopened.remove(["id0:1", "id2:1"])
    assert [j.message for j in spool.peek()] == ["m1"]


def test_a_new_spool_opened_while_another_connection_reads_it_still_spools(
    tmp_path: Path
) -> None:
    """Switching a file to WAL mode is refused at once, without the busy wait, while
    another connection writes it (two threads spooling to a new spool together): the
    switch is tried again, and the job is spooled once the writer is done."""
    import threading

    path = tmp_path / "spool.db"
    writer = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    writer.execute("BEGIN IMMEDIATE")
    writer.execute("CREATE TABLE other (x)")  # holds the write lock
    done = threading.Timer(0.2, writer.execute, args=("COMMIT",))  # ends the write
    done.start()
    try:
        Spool(path).put(SpooledJob("id:1", "q", "m", None))
    finally:
        done.join()
    assert [job.job_id for job in Spool(path).peek()] == ["id:1"]
    fresh = sqlite3.connect(path)
    assert fresh.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_a_spool_from_before_delayed_jobs_keeps_its_rows_and_takes_due_times(
    tmp_path: Path,
) -> None:
    path = tmp_path / "old.sqlite3"
    with sqlite3.connect(path) as old:  # the table as the previous version created it
        old.execute("CREATE TABLE spool (job_id TEXT PRIMARY KEY, queue_key TEXT NOT NULL,"
                    " message TEXT NOT NULL, record TEXT, created REAL NOT NULL)")
        old.execute("INSERT INTO spool VALUES ('old:1', 'q', 'm', NULL, 1.0)")
    spool = Spool(path)
    spool.put(SpooledJob("new:1", "q", "m2", None, due=2e9))
    assert [(j.job_id, j.due) for j in spool.peek()] == [("old:1", None), ("new:1", 2e9)]


def test_secret_arguments_travel_but_are_redacted_in_listings() -> None:
    @task(name="unit.secret.login")
    def login(user: str, password: SecretStr) -> str:
        return password.get_secret_value()

    values, payload = login.validator.validate(("ann",), {"password": "hunter2"})
    assert payload == {"user": "ann", "password": "hunter2"}  # the task must receive it
    assert login.validator.decode(payload)["password"].get_secret_value() == "hunter2"
    assert "hunter2" not in repr(values)
    job = Job(id="j", spec=login.spec, route="inline", queue=None, priority=5,
              payload=payload)
    entry = make_dead_letter(job, {"type": "X", "message": "m"}, "attempts_exhausted", "")
    store = MemoryDeadLetters()
    store.add(entry)
    [shown] = redacted_dead_letters(store, 10)
    assert shown["arguments"] == {"user": "ann", "password": REDACTED}
    assert "hunter2" not in json.dumps(shown)


def test_idempotency_key_returns_the_first_handle_without_redis() -> None:
    runs: list[int] = []

    @task(name="unit.idem.once")
    def once(n: int) -> None:
        runs.append(n)

    first = once.options(idempotency_key="order-1").dispatch(1)
    second = once.options(idempotency_key="order-1").dispatch(2)
    other = once.options(idempotency_key="order-2").dispatch(3)
    assert second == first
    assert other.id != first.id
    from dispatcher.testing import wait_for_inline_jobs

    wait_for_inline_jobs(5)
    assert sorted(runs) == [1, 3]


def _guarded_app(client: tuple[str, int] = ("testclient", 50000)) -> TestClient:
    app = FastAPI()
    install(app)

    @app.post("/echo", dependencies=[Depends(require_api_token)])
    async def echo(body: dict[str, str]) -> dict[str, str]:
        return body

    return TestClient(app, client=client)


def test_bodies_over_the_limit_get_413() -> None:
    configure(unit_settings(max_payload_bytes=2048))
    with _guarded_app() as client:
        assert client.post("/echo", json={"a": "b"}).status_code == 200
        big = client.post("/echo", json={"a": "x" * 5000})
        assert big.status_code == 413
        assert "DISPATCH_MAX_PAYLOAD_BYTES" in big.json()["detail"]

        def chunks():  # type: ignore[no-untyped-def]
            yield b'{"a": "'
            yield b"x" * 5000
            yield b'"}'

        streamed = client.post("/echo", content=chunks(),
                               headers={"content-type": "application/json"})
        assert streamed.status_code == 413


def test_bearer_token_is_required_when_set() -> None:
    configure(unit_settings(api_token=SecretStr("s3cret")))
    with _guarded_app() as client:
        assert client.post("/echo", json={}).status_code == 401
        wrong = client.post("/echo", json={}, headers={"Authorization": "Bearer nope"})
        assert wrong.status_code == 401
        assert wrong.headers["www-authenticate"] == "Bearer"
        ok = client.post("/echo", json={"a": "b"}, headers={"Authorization": "Bearer s3cret"})
        assert ok.status_code == 200


@pytest.mark.parametrize("host", ["127.0.0.1", "127.3.2.1", "::1", "::ffff:127.0.0.1",
                                  "testclient"])
def test_without_a_token_this_machine_is_answered(host: str) -> None:
    configure(unit_settings())
    with _guarded_app((host, 4000)) as client:
        assert client.post("/echo", json={"a": "b"}).json() == {"a": "b"}


@pytest.mark.parametrize("host", ["203.0.113.5", "10.0.0.7", "2001:db8::1",
                                  "::ffff:203.0.113.5", "localhost", "api.example"])
def test_without_a_token_other_hosts_are_refused_naming_the_setting(host: str) -> None:
    configure(unit_settings())
    with _guarded_app((host, 4000)) as client:
        refused = client.post("/echo", json={"a": "b"})
        assert refused.status_code == 403
        assert "DISPATCH_API_TOKEN" in refused.json()["detail"]


@pytest.mark.parametrize("header", ["X-Forwarded-For", "Forwarded", "X-Real-IP"])
def test_without_a_token_a_request_through_a_proxy_is_refused(header: str) -> None:
    """A reverse proxy on this machine connects from loopback for every client."""
    configure(unit_settings())
    with _guarded_app(("127.0.0.1", 4000)) as client:
        passed_on = client.post("/echo", json={"a": "b"}, headers={header: "127.0.0.1"})
        assert passed_on.status_code == 403


def test_with_a_token_other_hosts_are_answered_with_it() -> None:
    configure(unit_settings(api_token=SecretStr("s3cret")))
    with _guarded_app(("203.0.113.5", 4000)) as client:
        assert client.post("/echo", json={}).status_code == 401
        ok = client.post("/echo", json={"a": "b"}, headers={"Authorization": "Bearer s3cret"})
        assert ok.status_code == 200


def test_a_unix_socket_client_is_not_taken_for_this_machine() -> None:
    """Reverse proxies reach their app over Unix sockets: no client address."""
    from starlette.requests import Request

    from dispatcher.fastapi.auth import is_local

    assert not is_local(Request({"type": "http", "client": None, "headers": []}))
    assert is_local(Request({"type": "http", "client": ("127.0.0.1", 1), "headers": []}))
