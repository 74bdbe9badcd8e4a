"""Event lines written without a ``LogRecord`` each (``observability.logging``'s
``write_lines``) are the lines the records would have become, and only taken where
nothing could see or alter a record on the way."""

from __future__ import annotations

import io
import json
import logging
from typing import Any

import pytest

from dispatcher import task
from dispatcher.core import events
from dispatcher.core.events import Announcement, emit, emit_many, set_listeners
from dispatcher.core.job import Job
from dispatcher.observability.logging import configure_logging
from tests.unit.helpers import unit_settings


@task(name="unit.lines.noop", weight=1)
def noop() -> None:
    return None


def jobs(count: int) -> list[Job]:
    return [Job(id=f"job-{n}", spec=noop.spec, route="celery", queue="q", priority=5,
                payload={}, request_id="req-1") for n in range(count)]


def written(logger: logging.Logger, log_format: str) -> tuple[list[str], int]:
    """The lines one emit, one emit_many and one prepared ``Announcement`` write, and
    how many records were made."""
    stream = io.StringIO()
    ours = [h for h in logger.handlers if isinstance(h, logging.StreamHandler)]
    assert len(ours) == 1
    ours[0].setStream(stream)
    made = 0
    make_record = logger.makeRecord

    def counting(*args: Any, **kwargs: Any) -> logging.LogRecord:
        nonlocal made
        made += 1
        return make_record(*args, **kwargs)

    logger.makeRecord = counting  # type: ignore[method-assign]
    try:
        first, *rest = jobs(3)
        emit("task.succeeded", first, duration_ms=1.23456)
        emit_many("task.dispatched", rest, reason="spill_over")
        announced = Announcement("task.dispatched", first, reason="announced")
        announced.prepare()
        assert stream.getvalue().count("\n") == 3  # formatted, not written yet
        announced.emit()
    finally:
        del logger.makeRecord
    lines = stream.getvalue().splitlines()
    if log_format == "json":  # the time aside
        return [json.dumps({k: v for k, v in json.loads(x).items() if k != "ts"})
                for x in lines], made
    return [x.split(" ", 2)[2] for x in lines], made


@pytest.mark.parametrize("log_format", ["text", "json"])
def test_lines_written_directly_are_those_of_the_records(
        pristine_logger: logging.Logger, log_format: str) -> None:
    configure_logging(unit_settings(log_format=log_format))
    direct, made_direct = written(pristine_logger, log_format)
    pristine_logger.addFilter(lambda record: True)  # a filter must see records: none skipped
    via_records, made_via_records = written(pristine_logger, log_format)
    assert (made_direct, made_via_records) == (0, 4)
    assert direct == via_records
    assert len(direct) == 4
    assert "duration_ms" in direct[0] and "reason" in direct[2]
    assert "announced" in direct[3]


def test_another_handler_gets_records(pristine_logger: logging.Logger) -> None:
    configure_logging(unit_settings())
    seen: list[logging.LogRecord] = []
    extra = logging.Handler()
    extra.emit = seen.append  # type: ignore[method-assign]
    pristine_logger.addHandler(extra)
    _, made = written(pristine_logger, "text")
    assert made == 4
    assert [r.dispatch["event"] for r in seen] == [  # type: ignore[attr-defined]
        "task.succeeded", "task.dispatched", "task.dispatched", "task.dispatched"]


def test_emit_many_tells_the_listeners_of_each_job_even_with_the_level_off(
        pristine_logger: logging.Logger) -> None:
    configure_logging(unit_settings(log_level="warning"))
    heard: list[tuple[str, str]] = []
    saved = events._listeners  # the runtime's metrics, put back after
    set_listeners(lambda event, job, duration, extra: heard.append((event, job.id)))
    try:
        emit_many("task.dispatched", jobs(2), reason="x")
    finally:
        set_listeners(*saved)
    assert heard == [("task.dispatched", "job-0"), ("task.dispatched", "job-1")]


def test_an_announcement_tells_the_listeners_once_emitted_not_when_prepared(
        pristine_logger: logging.Logger) -> None:
    configure_logging(unit_settings(log_level="warning"))
    heard: list[str] = []
    saved = events._listeners
    set_listeners(lambda event, job, duration, extra: heard.append(extra["reason"]))
    try:
        announced = Announcement("task.dispatched", jobs(1)[0], reason="x")
        announced.prepare()
        assert heard == []
        announced.emit()
    finally:
        set_listeners(*saved)
    assert heard == ["x"]


def test_an_error_tracker_patching_logging_and_a_record_factory_get_records(
        pristine_logger: logging.Logger, monkeypatch: pytest.MonkeyPatch) -> None:
    """An error tracker (Sentry's logging integration) patches ``Logger.callHandlers``
    to see every record; a record factory adds fields to each: both get records."""
    configure_logging(unit_settings())
    seen: list[str] = []
    original = logging.Logger.callHandlers

    def tracking(self: logging.Logger, record: logging.LogRecord) -> None:
        seen.append(record.getMessage())
        original(self, record)

    monkeypatch.setattr(logging.Logger, "callHandlers", tracking)
    lines, made = written(pristine_logger, "text")
    assert made == 4 and len(seen) == 4 and len(lines) == 4
    monkeypatch.undo()
    factory = logging.getLogRecordFactory()
    monkeypatch.setattr(logging, "_logRecordFactory", lambda *a, **k: factory(*a, **k))
    assert written(pristine_logger, "text")[1] == 4


def test_a_line_that_cannot_be_formatted_is_reported_not_raised(
        pristine_logger: logging.Logger, capsys: pytest.CaptureFixture[str]) -> None:
    class Unprintable:
        def __str__(self) -> str:
            raise RuntimeError("no text")

    configure_logging(unit_settings())
    emit("task.dispatched", jobs(1)[0], reason=Unprintable())  # no exception here
    assert "no text" in capsys.readouterr().err  # logging's report of a failed emit
    announced = Announcement("task.dispatched", jobs(1)[0], reason=Unprintable())
    announced.prepare()  # no exception here either
    assert capsys.readouterr().err == ""  # reported when emitted, not before
    announced.emit()
    assert "no text" in capsys.readouterr().err


def test_the_fallback_handler_stays_silent_once_the_app_configured_logging(
        pristine_logger: logging.Logger) -> None:
    """``log_until_configured``'s handler writes only while the root logger has none;
    the direct path keeps to that even when the logger does not propagate."""
    from dispatcher.observability.logging import log_until_configured

    root = logging.getLogger()
    saved = root.handlers[:]  # pytest's own, put back after
    root.handlers.clear()
    try:
        log_until_configured(unit_settings())
        stream = io.StringIO()
        pristine_logger.handlers[0].setStream(stream)  # type: ignore[attr-defined]
        root.addHandler(logging.NullHandler())  # the app configured logging
        pristine_logger.propagate = False
        emit("task.dispatched", jobs(1)[0])
        assert stream.getvalue() == ""
        root.handlers.clear()
        emit("task.dispatched", jobs(1)[0])  # the root has no handler again: written
        assert "task.dispatched" in stream.getvalue()
    finally:
        root.handlers[:] = saved


def batch_lines(logger: logging.Logger, log_format: str, batch: list[Job]) -> list[str]:
    stream = io.StringIO()
    [handler] = [h for h in logger.handlers if isinstance(h, logging.StreamHandler)]
    handler.setStream(stream)
    emit_many("task.dispatched", batch, reason="spill_over")
    lines = stream.getvalue().splitlines()
    if log_format == "json":
        return [json.dumps({k: v for k, v in json.loads(x).items() if k != "ts"})
                for x in lines]
    return [x.split(" ", 2)[2] for x in lines]


@pytest.mark.parametrize("log_format", ["text", "json"])
def test_a_batch_of_one_tasks_jobs_reads_as_the_records_would(
        pristine_logger: logging.Logger, log_format: str,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """One line formatted for the batch, each id put in: ids JSON must escape included,
    and a batch whose jobs differ beyond their ids takes the line-per-job path."""
    configure_logging(unit_settings(log_format=log_format))
    same = jobs(3)
    same[1] = Job(id='job "quoted" \\ é', spec=noop.spec, route="celery", queue="q",
                  priority=5, payload={}, request_id="req-1")
    mixed = [*jobs(2), Job(id="job-other", spec=noop.spec, route="celery", queue="q",
                           priority=9, payload={}, request_id="req-1")]
    formatted_once: list[int] = []
    write_same = events._same_writer
    assert write_same is not None

    def counting(level: int, fields: dict[str, Any], ids: Any) -> bool:
        formatted_once.append(len(ids))
        return write_same(level, fields, ids)

    monkeypatch.setattr(events, "_same_writer", counting)
    direct = batch_lines(pristine_logger, log_format, same) + batch_lines(
        pristine_logger, log_format, mixed)
    assert formatted_once == [3]  # the mixed batch went line by line
    pristine_logger.addFilter(lambda record: True)  # records from here on
    via_records = batch_lines(pristine_logger, log_format, same) + batch_lines(
        pristine_logger, log_format, mixed)
    assert direct == via_records and len(direct) == 6
    assert 'quoted' in direct[1]
