"""Log formatting for the ``dispatcher`` logger: JSON lines or key=value text.

``DISPATCH_LOG_FORMAT=json`` prints one JSON object per line, ``text`` (the default)
``time level event key=value ...``. ``configure_logging`` runs when ``install(app)``
does and in every worker; a plain script that configured no logging gets the same
lines on stderr until it configures some (``dispatcher.runtime``).
"""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any

from ..core.events import logger
from ..core.settings import DispatcherSettings


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

    #: The last second formatted and its text: lines come many to a second.
    _second: tuple[int, str] = (-1, "")

    def format(self, record: logging.LogRecord) -> str:
        second = int(record.created)
        if second != self._second[0]:
            self._second = (second, time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(second)))
        stamp = self._second[1]
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


def formatter(settings: DispatcherSettings) -> logging.Formatter:
    return JsonFormatter() if settings.log_format == "json" else TextFormatter()


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
    handler.setFormatter(formatter(settings))
    logger.addHandler(handler)
    logger.setLevel(settings.log_level)
    logger.propagate = False


class _UntilConfigured(logging.StreamHandler):  # type: ignore[type-arg]
    """Prints the dispatcher's events to stderr while the application has configured
    no logging at all; steps aside (the events propagate as usual) once it has."""

    def emit(self, record: logging.LogRecord) -> None:
        if not logging.getLogger().handlers:
            super().emit(record)


def log_until_configured(settings: DispatcherSettings) -> None:
    """A plain script that configured no logging still sees each event with its fields
    (Python's last-resort handler prints warnings only, and the event name alone)."""
    logger = logging.getLogger("dispatcher")
    if logger.handlers or logging.getLogger().handlers:
        return
    handler = _UntilConfigured(sys.stderr)
    handler.setFormatter(formatter(settings))
    logger.addHandler(handler)
    if logger.level == logging.NOTSET:
        logger.setLevel(settings.log_level)
