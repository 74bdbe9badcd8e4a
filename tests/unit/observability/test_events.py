"""Structured log events on the ``dispatcher`` logger, and their two formats."""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from dispatcher import (
    RetryPolicy,
    TaskCancelled,
    TaskFailed,
    TaskHandle,
    cancel,
    cancelled,
    progress,
    task,
)
from dispatcher.core.context import request_id_var
from dispatcher.core.events import EVENTS
from dispatcher.observability.logging import JsonFormatter, TextFormatter, configure_logging
from dispatcher.testing import wait_for_inline_jobs
from tests.support import wait_until
from tests.unit.helpers import ListHandler, unit_settings

COMMON_FIELDS = {
    "event",
    "task_id",
    "task_name",
    "route",
    "queue",
    "priority",
    "weight",
    "attempt",
    "retry_in",
    "reason",
    "queue_wait_ms",
    "max_attempts",
    "duration_ms",
    "error",
    "request_id",
}


@pytest.fixture
def request_id() -> Iterator[str]:
    token = request_id_var.set("req-unit-42")
    yield "req-unit-42"
    request_id_var.reset(token)


def fields(record: logging.LogRecord) -> dict[str, Any]:
    data = record.dispatch  # type: ignore[attr-defined]
    assert isinstance(data, dict)
    return data


def run_success(log: ListHandler) -> tuple[str, list[logging.LogRecord]]:
    @task(name="unit.events.ok", weight=2, priority="high")
    def ok(n: int) -> int:
        return n + 1

    handle = ok.dispatch(1)
    assert handle.get(timeout=5) == 2
    wait_for_inline_jobs(timeout=5)
    return handle.id, log.events(handle.id)


def run_failure(log: ListHandler) -> tuple[str, list[logging.LogRecord]]:
    @task(
        name="unit.events.flaky",
        retry=RetryPolicy(max_attempts=3, base_delay=0.01, jitter=False),
    )
    def flaky() -> None:
        raise ValueError("boom")

    handle = flaky.dispatch()
    with pytest.raises(TaskFailed):
        handle.get(timeout=5)
    wait_for_inline_jobs(timeout=5)  # the failed event is emitted after the record
    return handle.id, log.events(handle.id)


def cancel_running(handle: TaskHandle) -> None:
    """Cancel a job once it runs; it must end REVOKED (``get`` raises ``TaskCancelled``)."""
    wait_until(lambda: handle.state() == "STARTED", "the job running")
    assert cancel(handle.id) is True
    with pytest.raises(TaskCancelled):
        handle.get(timeout=30)
    wait_for_inline_jobs(timeout=5)


def run_cancelled(log: ListHandler) -> tuple[str, list[logging.LogRecord]]:
    """A running inline job told to stop: ``progress()`` raises, the job ends REVOKED."""
    @task(name="unit.events.endless")
    def endless() -> None:
        while True:
            progress(1)
            time.sleep(0.01)

    handle = endless.dispatch()
    cancel_running(handle)
    assert cancel(handle.id) is False  # finished: nothing changes
    return handle.id, log.events(handle.id)


def run_limited(log: ListHandler) -> tuple[str, list[logging.LogRecord]]:
    """A job over its task's concurrency limit waits (``task.limited``), then runs."""
    gate = threading.Event()

    @task(name="unit.events.one_at_a_time", concurrency=1)
    def one_at_a_time() -> None:
        gate.wait(30)

    first = one_at_a_time.dispatch()
    wait_until(lambda: first.state() == "STARTED", "the first job holding the slot")
    second = one_at_a_time.dispatch()
    wait_until(lambda: any(fields(r)["event"] == "task.limited" for r in log.events(second.id)),
               "the second job refused")
    gate.set()
    assert second.get(timeout=30) is None
    return second.id, log.events(second.id)


def test_success_sequence(dispatcher_log: ListHandler, request_id: str) -> None:
    task_id, records = run_success(dispatcher_log)
    assert [r.getMessage() for r in records] == [
        "task.dispatched",
        "task.started",
        "task.succeeded",
    ]
    assert [fields(r)["event"] for r in records] == [r.getMessage() for r in records]
    assert all(r.levelno == logging.INFO for r in records)
    for record in records:
        data = fields(record)
        assert set(data) == COMMON_FIELDS
        assert data["task_id"] == task_id
        assert data["task_name"] == "unit.events.ok"
        assert (data["route"], data["queue"]) == ("inline", None)
        assert (data["priority"], data["weight"]) == (8, 2)
        assert (data["attempt"], data["max_attempts"]) == (1, 1)
        assert data["error"] is None
        assert data["request_id"] == request_id
    assert fields(records[0])["duration_ms"] is None
    assert fields(records[1])["duration_ms"] is None
    duration = fields(records[2])["duration_ms"]
    assert isinstance(duration, float)
    assert duration >= 0


def test_retry_then_failure_sequence(dispatcher_log: ListHandler, request_id: str) -> None:
    task_id, records = run_failure(dispatcher_log)
    assert [fields(r)["event"] for r in records] == [
        "task.dispatched",
        "task.started",
        "task.retrying",
        "task.started",
        "task.retrying",
        "task.started",
        "task.failed",
    ]
    assert [fields(r)["attempt"] for r in records] == [1, 1, 1, 2, 2, 3, 3]
    assert [r.levelno for r in records] == [
        logging.INFO,
        logging.INFO,
        logging.WARNING,
        logging.INFO,
        logging.WARNING,
        logging.INFO,
        logging.ERROR,
    ]
    for record in records:
        data = fields(record)
        assert data["task_id"] == task_id
        assert data["max_attempts"] == 3
        assert data["request_id"] == request_id
    retrying = [fields(r) for r in records if fields(r)["event"] == "task.retrying"]
    assert [r["retry_in"] for r in retrying] == [0.01, 0.02]
    for data in retrying:
        assert data["error"] == {"type": "ValueError", "message": "boom"}
        assert data["duration_ms"] >= 0
    failed = fields(records[-1])
    assert failed["error"] == {"type": "ValueError", "message": "boom"}
    assert failed["reason"] == "attempts_exhausted"


def test_every_event_has_the_common_fields(dispatcher_log: ListHandler) -> None:
    _, ok_records = run_success(dispatcher_log)
    _, failed_records = run_failure(dispatcher_log)
    _, cancelled_records = run_cancelled(dispatcher_log)
    assert [fields(r)["event"] for r in cancelled_records][-1] == "task.cancelled"
    _, limited_records = run_limited(dispatcher_log)
    limited = [fields(r) for r in limited_records if fields(r)["event"] == "task.limited"]
    assert limited[0]["reason"] == "concurrency"
    assert limited[0]["retry_in"] > 0
    assert [fields(r)["event"] for r in limited_records][-1] == "task.succeeded"
    records = ok_records + failed_records + cancelled_records + limited_records
    assert {fields(r)["event"] for r in records} == set(EVENTS)
    for record in records:
        data = fields(record)
        assert set(data) == COMMON_FIELDS, data["event"]


def test_no_request_id_outside_a_request(dispatcher_log: ListHandler) -> None:
    _, records = run_success(dispatcher_log)
    assert [fields(r)["request_id"] for r in records] == [None, None, None]


def test_events_are_not_built_when_the_level_is_off() -> None:
    logger = logging.getLogger("dispatcher")
    handler = ListHandler()
    old_level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.ERROR)
    try:
        run_success(handler)
        assert handler.events() == []
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old_level)


def test_json_formatter_writes_one_object_per_line(dispatcher_log: ListHandler) -> None:
    _, ok_records = run_success(dispatcher_log)
    _, failed_records = run_failure(dispatcher_log)
    formatter = JsonFormatter()
    lines = [formatter.format(r) for r in ok_records + failed_records]
    text = "\n".join(lines)
    parsed = [json.loads(line) for line in text.splitlines()]
    assert len(parsed) == len(lines) == 10
    for obj, record in zip(parsed, ok_records + failed_records, strict=True):
        assert isinstance(obj, dict)
        assert set(obj) >= COMMON_FIELDS
        assert {"ts", "level", "logger"} <= set(obj)
        assert obj["logger"] == "dispatcher"
        assert obj["level"] == record.levelname
        assert obj["ts"].endswith("Z")
        for key, value in fields(record).items():
            assert obj[key] == value
    assert parsed[-1]["error"] == {"type": "ValueError", "message": "boom"}


def test_json_formatter_handles_plain_records_and_exceptions() -> None:
    formatter = JsonFormatter()
    try:
        raise RuntimeError("kaput")
    except RuntimeError:
        import sys

        record = logging.LogRecord(
            "dispatcher.x", logging.ERROR, __file__, 1, "hello %s", ("you",), sys.exc_info()
        )
    line = formatter.format(record)
    assert "\n" not in line
    obj = json.loads(line)
    assert obj["message"] == "hello you"
    assert obj["level"] == "ERROR"
    assert "RuntimeError: kaput" in obj["exc_info"]


def test_text_formatter(dispatcher_log: ListHandler) -> None:
    _, ok_records = run_success(dispatcher_log)
    _, failed_records = run_failure(dispatcher_log)
    formatter = TextFormatter()
    for record in ok_records + failed_records:
        line = formatter.format(record)
        assert "\n" not in line
        assert f" {fields(record)['event']} " in line
        assert "task_name=unit.events." in line
        assert f"task_id={fields(record)['task_id']}" in line
        assert "queue=" not in line  # None fields are skipped (inline: no queue)
    failed_line = formatter.format(failed_records[-1])
    assert 'error={"type": "ValueError", "message": "boom"}' in failed_line
    assert "reason=attempts_exhausted" in failed_line
    assert "error=" not in formatter.format(ok_records[0])
    plain = logging.LogRecord("dispatcher", logging.INFO, __file__, 1, "plain %d", (7,), None)
    assert formatter.format(plain).endswith("INFO dispatcher: plain 7")


def test_configure_logging_is_idempotent(pristine_logger: logging.Logger) -> None:
    configure_logging(unit_settings(log_format="json", log_level="warning"))
    configure_logging(unit_settings(log_format="json", log_level="warning"))
    assert len(pristine_logger.handlers) == 1
    assert isinstance(pristine_logger.handlers[0].formatter, JsonFormatter)
    assert pristine_logger.level == logging.WARNING
    assert pristine_logger.propagate is False
    configure_logging(unit_settings(log_format="text"))
    assert len(pristine_logger.handlers) == 1
    assert isinstance(pristine_logger.handlers[0].formatter, TextFormatter)


def test_configure_logging_leaves_an_app_configured_logger_alone(
    pristine_logger: logging.Logger,
) -> None:
    mine = logging.NullHandler()
    pristine_logger.addHandler(mine)
    configure_logging(unit_settings(log_format="json"))
    assert pristine_logger.handlers == [mine]


def test_a_cancelled_job_that_fails_is_not_retried(dispatcher_log: ListHandler) -> None:
    @task(name="unit.events.cancel_then_fail",
          retry=RetryPolicy(max_attempts=3, base_delay=0.01, jitter=False))
    def stubborn() -> None:
        while not cancelled():
            time.sleep(0.01)
        raise ValueError("fails once told to stop")

    handle = stubborn.dispatch()
    cancel_running(handle)
    events = [fields(r)["event"] for r in dispatcher_log.events(handle.id)]
    assert "task.retrying" not in events and events[-1] == "task.cancelled"
