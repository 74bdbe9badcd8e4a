"""The one set of structured log events, identical on both routes.

Events go to the ``dispatcher`` logger with the fields under ``record.dispatch``
(``dispatcher.observability.logging`` prints them as JSON or key=value lines). Each
event is also passed to the listeners (the Prometheus metrics), whatever the level.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from .job import Job

logger = logging.getLogger("dispatcher")

EVENTS = ("task.dispatched", "task.started", "task.retrying", "task.succeeded", "task.failed",
          "task.cancelled", "task.limited")

#: ``(event, job, duration_ms, extra fields)``: told of every event; must not raise.
Listener = Callable[[str, Job, "float | None", Mapping[str, Any]], None]
_listeners: tuple[Listener, ...] = ()

#: ``(level, fields of each event)``: writes the events' lines itself and returns True,
#: or returns False and they go through ``logging`` (see ``set_line_writer``).
LineWriter = Callable[[int, Sequence[dict[str, Any]]], bool]
_line_writer: LineWriter | None = None
#: ``(level, fields, task ids)``: the same, for events whose fields differ only in
#: their task id (a batch of one task's jobs: one line formatted, the ids put in).
SameLinesWriter = Callable[[int, dict[str, Any], Sequence[str]], bool]
_same_writer: SameLinesWriter | None = None
#: ``(level, fields of each event)``: formats the lines now and returns what writes
#: them, or None (they go through ``logging``): for ``Announcement.prepare``.
LinePreparer = Callable[[int, Sequence[dict[str, Any]]], "Callable[[], None] | None"]
_line_preparer: LinePreparer | None = None


def set_listeners(*listeners: Listener) -> None:
    """Who hears every event besides the log (set by ``dispatcher.runtime`` each time
    it makes a runtime: that runtime's metrics)."""
    global _listeners
    _listeners = listeners


def set_line_writer(writer: LineWriter | None, same: SameLinesWriter | None = None,
                    prepare: LinePreparer | None = None) -> None:
    """Let ``writer`` (``same``, for a batch of one task's jobs; ``prepare``, in two
    steps) write event lines without a ``logging.LogRecord`` each (set by
    ``dispatcher.observability.logging`` while the logger's only output is its own
    handler: a record costs more than the line it becomes, on every job)."""
    global _line_writer, _same_writer, _line_preparer
    _line_writer, _same_writer, _line_preparer = writer, same, prepare


def error_fields(error: BaseException) -> dict[str, str]:
    return {"type": type(error).__name__, "message": str(error)}


def emit(
    event: str,
    job: Job,
    *,
    level: int = logging.INFO,
    duration_ms: float | None = None,
    error: BaseException | None = None,
    **extra: Any,
) -> None:
    """Log ``event`` for ``job`` with the common fields (cheap when the level is off)
    and tell the listeners (whatever the level)."""
    for listener in _listeners:
        listener(event, job, duration_ms, extra)
    if logger.isEnabledFor(level):
        _log(level, [_fields(event, job, duration_ms, error, extra)])


class Announcement:
    """``emit(event, job, **extra)`` once the outcome is known, its line formatted
    beforehand (``prepare``) while the process would only wait: ``.dispatch()``
    formats ``task.dispatched`` while Redis runs the publish script, about a tenth of
    the call's time."""

    __slots__ = ("_write", "event", "extra", "job")

    def __init__(self, event: str, job: Job, **extra: Any) -> None:
        self.event, self.job, self.extra = event, job, extra
        self._write: Callable[[], None] | None = None

    def prepare(self) -> None:
        """Format the line now (nothing is written)."""
        if self._write is None and logger.isEnabledFor(logging.INFO):
            batch = [_fields(self.event, self.job, None, None, self.extra)]
            prepare = _line_preparer
            self._write = (prepare(logging.INFO, batch) if prepare is not None else None) \
                or (lambda: _log(logging.INFO, batch))

    def emit(self) -> None:
        """Tell the listeners and write the line (formatted now if not yet)."""
        for listener in _listeners:
            listener(self.event, self.job, None, self.extra)
        self.prepare()
        if self._write is not None:
            self._write()


def emit_many(event: str, jobs: Sequence[Job], *, level: int = logging.INFO,
              **extra: Any) -> None:
    """``emit(event, job, **extra)`` for each of ``jobs``, their lines written at once."""
    for job in jobs:
        for listener in _listeners:
            listener(event, job, None, extra)
    if not jobs or not logger.isEnabledFor(level):
        return
    first = jobs[0]
    same = _same_writer
    if (same is not None and all(_alike(job, first) for job in jobs)
            and same(level, _fields(event, first, None, None, extra), [job.id for job in jobs])):
        return
    _log(level, [_fields(event, job, None, None, extra) for job in jobs])


def _alike(job: Job, other: Job) -> bool:
    """Whether the two jobs' events have the same fields but for the task id."""
    return (job.spec is other.spec and job.route == other.route and job.queue == other.queue
            and job.priority == other.priority and job.attempt == other.attempt
            and job.request_id == other.request_id)


def _fields(event: str, job: Job, duration_ms: float | None, error: BaseException | None,
            extra: Mapping[str, Any]) -> dict[str, Any]:
    fields: dict[str, Any] = {
        "event": event,
        "task_id": job.id,
        "task_name": job.spec.name,
        "route": job.route,
        "queue": job.queue,
        "priority": job.priority,
        "weight": job.spec.weight,
        "attempt": job.attempt,
        "max_attempts": job.spec.retry.max_attempts,
        "duration_ms": None if duration_ms is None else round(duration_ms, 3),
        "error": None if error is None else error_fields(error),
        "request_id": job.request_id,
        "retry_in": None,
        "reason": None,
        "queue_wait_ms": None,
    }
    if extra:
        fields.update(extra)
    return fields


def _log(level: int, batch: list[dict[str, Any]]) -> None:
    writer = _line_writer
    if writer is not None and writer(level, batch):
        return
    for fields in batch:
        # makeRecord + handle: logger.log would walk the stack for the caller's file
        # and line on every event, a cost paid per job for a field we never print.
        record = logger.makeRecord(logger.name, level, __file__, 0, fields["event"], (),
                                   None, extra={"dispatch": fields})
        logger.handle(record)
