"""The spill-over publisher's own rules, with a recording stand-in for the Celery
route's ``dispatch_many`` (the real route is exercised in
tests/integration/routes/test_spill.py)."""

from __future__ import annotations

import threading
from collections.abc import Sequence

import pytest

from dispatcher import task
from dispatcher.core.errors import TaskValidationError
from dispatcher.core.job import Job, new_job_id
from dispatcher.routes.celery import spill as spill_module
from dispatcher.routes.celery.spill import SpillPublisher
from tests.support import wait_until


@task(name="tests.spill.unit")
def unit(n: int) -> int:
    return n


def job(n: int = 0) -> Job:
    return Job(new_job_id(), unit.spec, "celery", "celery", 5, {"n": n}, 1, None, 0.0,
               False, None)


class Broker:
    """Takes batches (refusing jobs whose ``n`` is negative as too large), or blocks
    until released, or fails."""

    def __init__(self) -> None:
        self.published: list[tuple[list[int], float | None, str]] = []
        self.fallen_back: list[int] = []
        self.release = threading.Event()
        self.release.set()
        self.error: Exception | None = None

    def publish(self, jobs: Sequence[Job], countdown: float | None, outage: str) -> list[str]:
        self.release.wait(30)
        if self.error is not None:
            raise self.error
        if any(j.payload["n"] < 0 for j in jobs):
            raise TaskValidationError("tests.spill.unit", [{"field": "(arguments)",
                                                            "message": "too large"}])
        self.published.append(([j.payload["n"] for j in jobs], countdown, outage))
        return ["celery"] * len(jobs)

    def fallback(self, jobs: Sequence[Job], countdown: float | None) -> None:
        self.fallen_back += [j.payload["n"] for j in jobs]

    def numbers(self) -> list[int]:
        return [n for batch, _, _ in self.published for n in batch]


def test_filed_jobs_are_visible_until_published_then_forgotten() -> None:
    broker = Broker()
    broker.release.clear()
    spill = SpillPublisher(broker.publish, broker.fallback, capacity=10)
    jobs = [job(n) for n in range(3)]
    for j in jobs:
        assert spill.put(j, None, "spool")
    assert all(spill.filed(j.id) is j for j in jobs) and spill.pending() == 3
    broker.release.set()
    wait_until(lambda: spill.pending() == 0, "the filed jobs published")
    assert broker.numbers() == [0, 1, 2] and spill.filed(jobs[0].id) is None
    spill.stop()


def test_a_full_buffer_refuses_the_job_and_files_nothing() -> None:
    broker = Broker()
    broker.release.clear()
    spill = SpillPublisher(broker.publish, broker.fallback, capacity=2)
    assert spill.put(job(1), None, "spool") and spill.put(job(2), None, "spool")
    refused = job(3)
    assert not spill.put(refused, None, "spool")
    assert spill.filed(refused.id) is None
    broker.release.set()
    spill.stop()
    assert broker.numbers() == [1, 2]


def test_jobs_are_grouped_by_countdown_and_outage_mode() -> None:
    broker = Broker()
    broker.release.clear()
    spill = SpillPublisher(broker.publish, broker.fallback, capacity=10)
    spill.put(job(1), None, "spool")
    spill.put(job(2), 5.0, "spool")
    spill.put(job(3), None, "inline")
    spill.put(job(4), None, "spool")
    broker.release.set()
    spill.stop()
    each = sorted((n, countdown, outage) for batch, countdown, outage in broker.published
                  for n in batch)
    assert each == [(1, None, "spool"), (2, 5.0, "spool"), (3, None, "inline"),
                    (4, None, "spool")]


def test_a_job_the_broker_refuses_runs_where_it_was_headed_and_the_rest_are_published(
) -> None:
    broker = Broker()
    broker.release.clear()
    spill = SpillPublisher(broker.publish, broker.fallback, capacity=10)
    for n in (1, -2, 3):
        spill.put(job(n), None, "spool")
    broker.release.set()
    spill.stop()
    assert broker.numbers() == [1, 3] and broker.fallen_back == [-2]


def test_an_unexpected_error_runs_the_batch_inline_rather_than_losing_it() -> None:
    broker = Broker()
    broker.error = RuntimeError("a bug")
    spill = SpillPublisher(broker.publish, broker.fallback, capacity=10)
    spill.put(job(1), None, "spool")
    spill.put(job(2), None, "spool")
    spill.stop()
    assert broker.fallen_back == [1, 2] and spill.pending() == 0


def test_stop_publishes_what_is_filed_and_refuses_later_jobs() -> None:
    broker = Broker()
    broker.release.clear()
    spill = SpillPublisher(broker.publish, broker.fallback, capacity=100)
    for n in range(50):
        spill.put(job(n), None, "spool")
    broker.release.set()
    spill.stop()
    assert broker.numbers() == list(range(50)) and spill.pending() == 0
    assert not spill.put(job(99), None, "spool")


def test_while_the_server_is_busy_jobs_gather_into_one_batch(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Each wake-up of the publisher takes the GIL from a saturated server loop, so
    while the server reads busy the jobs filed meanwhile go out together."""
    broker = Broker()
    asked, second_filed = threading.Event(), threading.Event()

    def busy() -> bool:
        asked.set()
        second_filed.wait(30)
        return True

    naps: list[float] = []
    sleep = spill_module.time.sleep

    def noted(seconds: float) -> None:  # the publisher's gathering, noted
        if threading.current_thread().name == "dispatch-spill":
            naps.append(seconds)
        sleep(seconds)

    monkeypatch.setattr(spill_module.time, "sleep", noted)
    spill = SpillPublisher(broker.publish, broker.fallback, capacity=10, busy=busy)
    assert spill.put(job(1), None, "spool")
    assert asked.wait(30)  # the publisher woke for the first job and asks about the load
    assert spill.put(job(2), None, "spool")
    second_filed.set()
    wait_until(lambda: spill.pending() == 0, "the filed jobs published")
    assert [batch for batch, _, _ in broker.published] == [[1, 2]]
    assert naps == [spill_module.BUSY_LINGER]
    spill.stop()


def test_a_lone_job_is_published_without_another_behind_it() -> None:
    broker = Broker()
    spill = SpillPublisher(broker.publish, broker.fallback, capacity=10)
    assert spill.put(job(7), None, "spool")  # the first put starts the thread
    wait_until(lambda: spill.pending() == 0, "the lone job published")
    assert broker.numbers() == [7]
    spill.stop()


def test_a_failing_load_signal_publishes_at_once_and_keeps_the_thread(
        caplog: pytest.LogCaptureFixture) -> None:
    """Should the server's load reading raise, the jobs still go out (and keep going
    out: the thread lives on), the error logged."""
    broker = Broker()

    def broken() -> bool:
        raise RuntimeError("no load reading")

    spill = SpillPublisher(broker.publish, broker.fallback, capacity=10, busy=broken)
    assert spill.put(job(1), None, "spool")
    wait_until(lambda: broker.numbers() == [1], "the first job published")
    assert spill.put(job(2), None, "spool")
    wait_until(lambda: broker.numbers() == [1, 2], "the next job published too")
    assert caplog.text.count("load could not be read") == 1  # logged once, not per batch
    spill.stop()
