"""Log formatting for the ``dispatcher`` logger: JSON lines or key=value text.

``DISPATCH_LOG_FORMAT=json`` prints one JSON object per line, ``text`` (the default)
``time level event key=value ...``. ``configure_logging`` runs when ``install(app)``
does, in every worker, and on the first dispatch of a plain script.
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
