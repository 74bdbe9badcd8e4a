"""The one set of structured log events, identical on both routes.

Events go to the ``dispatcher`` logger with the fields under ``record.dispatch``;
``DISPATCH_LOG_FORMAT=json`` prints one JSON object per line, ``text`` a key=value line.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any

from .job import Job
from .metrics import observe_event
from .settings import DispatcherSettings

logger = logging.getLogger("dispatcher")

EVENTS = ("task.dispatched", "task.started", "task.retrying", "task.succeeded", "task.failed")


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
    and count it in the metrics (whatever the level)."""
    observe_event(event, job, duration_ms, extra)
    if not logger.isEnabledFor(level):
        return
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
    fields.update(extra)
    # makeRecord + handle: logger.log would walk the stack for the caller's file and
    # line on every event, a cost paid per job for a field we never print.
    record = logger.makeRecord(
        logger.name, level, __file__, 0, event, (), None, extra={"dispatch": fields}
    )
    logger.handle(record)


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, then the event fields."""

    def format(self, record: logging.LogRecord) -> str:
        data: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
        }
        fields = getattr(record, "dispatch", None)
        if isinstance(fields, dict):
            data.update(fields)
        else:
            data["message"] = record.getMessage()
        if record.exc_info:
            data["exc_info"] = self.formatException(record.exc_info)
        return json.dumps(data, default=str)


class TextFormatter(logging.Formatter):
    """``time level event key=value ...``, skipping empty fields."""

    def format(self, record: logging.LogRecord) -> str:
        stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(record.created))
        fields = getattr(record, "dispatch", None)
        if not isinstance(fields, dict):
            line = f"{stamp} {record.levelname} {record.name}: {record.getMessage()}"
        else:
            parts = [f"{stamp} {record.levelname} {fields.get('event')}"]
            for key, value in fields.items():
                if key == "event" or value is None:
                    continue
                if isinstance(value, dict):
                    value = json.dumps(value, default=str)
                parts.append(f"{key}={value}")
            line = " ".join(parts)
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


_HANDLER_FLAG = "_dispatcher_handler"


def configure_logging(settings: DispatcherSettings) -> None:
    """Give the ``dispatcher`` logger one stderr handler in the configured format.

    Idempotent; leaves alone a logger the application has already given handlers.
    """
    ours = [h for h in logger.handlers if getattr(h, _HANDLER_FLAG, False)]
    if logger.handlers and not ours:
        return
    for handler in ours:
        logger.removeHandler(handler)
    handler = logging.StreamHandler(sys.stderr)
    setattr(handler, _HANDLER_FLAG, True)
    handler.setFormatter(JsonFormatter() if settings.log_format == "json" else TextFormatter())
    logger.addHandler(handler)
    logger.setLevel(settings.log_level)
    logger.propagate = False
