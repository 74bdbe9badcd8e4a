"""A plain Celery client on the same Redis (another service, a script) calls our tasks
the way Celery users do: ``send_task(...).get()``, positional or keyword arguments, and
for jobs we dispatched, ``AsyncResult(id).get()``."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
import redis
from celery import Celery
from celery.result import AsyncResult, GroupResult

from dispatcher import get_settings
from dispatcher.core.record import JobRecord, decode_record
from dispatcher.store import keys
from tests.integration.sample_tasks import power


def stored(broker: str, task_id: str) -> JobRecord:
    """The job's record as stored (written with the announcement ``get()`` woke on)."""
    record = decode_record(redis.Redis.from_url(broker).get(keys.record(task_id)))
    assert record is not None
    return record


@pytest.fixture
def client(broker: str) -> Iterator[Celery]:
    """A stock Celery app: JSON, Redis broker and result backend, nothing of ours."""
    app = Celery("plain-client", broker=broker, backend=broker)
    app.conf.update(task_serializer="json", accept_content=["json"],
                    result_serializer="json", task_default_queue=get_settings().default_queue)
    yield app
    app.close()


@pytest.mark.parametrize(("args", "kwargs"), [([7], {}), ([], {"base": 7}),
                                              ([7], {"exponent": 3})])
def test_send_task_runs_with_positional_and_keyword_arguments(
    client: Celery, broker: str, args: list[int], kwargs: dict[str, int]
) -> None:
    result = client.send_task("samples.power", args=args, kwargs=kwargs)
    expected = 7 ** kwargs.get("exponent", 2)
    assert result.get(timeout=60) == expected
    assert result.ready() and result.successful()
    # Our record of the job, as for any dispatch: every field there.
    record = stored(broker, result.id)
    assert record["status"] == "SUCCESS" and record["task_name"] == "samples.power"
    assert record["attempt"] == 1
    assert record["dispatched_at"] and record["queue"] == get_settings().default_queue


def test_a_failing_task_raises_its_exception_in_the_client(client: Celery) -> None:
    result = client.send_task("samples.power", args=[-2])
    with pytest.raises(ValueError, match="negative base -2"):
        result.get(timeout=60)
    assert result.failed()


def test_bad_arguments_end_in_a_recorded_failure_naming_the_field(client: Celery,
                                                                 broker: str) -> None:
    result = client.send_task("samples.power", args=["not a number"])
    with pytest.raises(Exception) as raised:
        result.get(timeout=60)
    assert type(raised.value).__name__ == "TaskValidationError"
    assert "base" in str(raised.value)
    record = stored(broker, result.id)
    assert record["status"] == "FAILURE" and record["reason"] == "invalid_payload"
    too_many = client.send_task("samples.power", args=[1, 2, 3])
    with pytest.raises(Exception, match="positional"):
        too_many.get(timeout=60)


def test_async_result_waits_for_jobs_we_dispatched(client: Celery) -> None:
    handles = [power.dispatch(n) for n in range(5)]
    assert AsyncResult(handles[0].id, app=client).get(timeout=60) == 0
    group = GroupResult(str(uuid.uuid4()), [AsyncResult(h.id, app=client) for h in handles],
                        app=client)
    assert group.get(timeout=60) == [n * n for n in range(5)]


def test_get_wakes_when_a_running_job_finishes(client: Celery) -> None:
    """``get()`` finds no result when it starts and waits for the announcement."""
    result = client.send_task("samples.progress_steps", kwargs={"steps": 3, "pause": 0.2,
                                                                 "hold": 0.5})
    assert result.get(timeout=60) == 3
