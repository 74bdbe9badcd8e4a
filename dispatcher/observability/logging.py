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
from collections.abc import Callable, Sequence
from typing import Any, cast

from ..core.events import logger, set_line_writer
from ..core.settings import DispatcherSettings


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, then the event fields."""

    def format(self, record: logging.LogRecord) -> str:
        fields = getattr(record, "dispatch", None)
        if not isinstance(fields, dict):
            fields = {"message": record.getMessage()}
        data = self._data(record.created, record.levelname, record.name, fields)
        if record.exc_info:
            data["exc_info"] = self.formatException(record.exc_info)
        return json.dumps(data, default=str)

    def line(self, created: float, level: str, name: str, fields: dict[str, Any]) -> str:
        """An event's line, from its fields (the same for a record and without one)."""
        return json.dumps(self._data(created, level, name, fields), default=str)

    @staticmethod
    def _data(created: float, level: str, name: str, fields: dict[str, Any]) -> dict[str, Any]:
        data: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(created))
            + f".{int((created - int(created)) * 1000):03d}Z",
            "level": level,
            "logger": name,
        }
        data.update(fields)
        return data


class TextFormatter(logging.Formatter):
    """``time level event key=value ...``, skipping empty fields."""

    #: The last second formatted and its text: lines come many to a second.
    _second: tuple[int, str] = (-1, "")

    def format(self, record: logging.LogRecord) -> str:
        fields = getattr(record, "dispatch", None)
        if isinstance(fields, dict):
            line = self.line(record.created, record.levelname, record.name, fields)
        else:
            line = (f"{self._stamp(record.created)} {record.levelname} {record.name}: "
                    f"{record.getMessage()}")
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line

    def line(self, created: float, level: str, name: str, fields: dict[str, Any]) -> str:
        """An event's line, from its fields (the same for a record and without one)."""
        parts = [f"{self._stamp(created)} {level} {fields.get('event')}"]
        for key, value in fields.items():
            if key == "event" or value is None:
                continue
            if isinstance(value, dict):
                value = json.dumps(value, default=str)
            parts.append(f"{key}={value}")
        return " ".join(parts)

    def _stamp(self, created: float) -> str:
        second, cached = int(created), self._second  # one read: threads share it
        if second != cached[0]:
            cached = self._second = (
                second, time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(second)))
        return cached[1]


_HANDLER_FLAG = "_dispatcher_handler"
#: On the handlers ``write_lines`` may write to: ours, stream handlers of our formats.
_LINES_FLAG = "_dispatcher_lines"


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
    setattr(handler, _LINES_FLAG, True)
    handler.setFormatter(formatter(settings))
    logger.addHandler(handler)
    logger.setLevel(settings.log_level)
    logger.propagate = False
    set_line_writer(write_lines, write_same_lines, prepare_lines)


def write_lines(level: int, batch: Sequence[dict[str, Any]]) -> bool:
    """Write events' lines straight to the handler ``configure_logging`` or
    ``log_until_configured`` gave the logger, as that handler would write their
    records, in one write; False (the events then go through ``logging``) unless it is
    the logger's only output and nothing could see, filter or alter a record on the way
    (a filter, another handler, a patched ``Logger`` such as an error tracker's, a
    record factory of your own)."""
    return _write(level, _lines(batch))


def _lines(batch: Sequence[dict[str, Any]]) -> Callable[[_Formatter, float, str, str], str]:
    """The text of ``batch``'s lines, given the formatter, time, level name and end."""
    def text(formatter: _Formatter, now: float, level_name: str, end: str) -> str:
        return "".join([formatter.line(now, level_name, logger.name, fields) + end
                        for fields in batch])

    return text


#: Stands for the task id in a line formatted once for many jobs (``write_same_lines``).
_ID = "\x00task_id\x00"


def write_same_lines(level: int, fields: dict[str, Any], ids: Sequence[str]) -> bool:
    """``write_lines`` for events whose fields differ only in their task id: the line
    is formatted once with a stand-in for the id, which each id then replaces (the
    same text as ``write_lines``'s, which a test compares)."""
    def text(formatter: _Formatter, now: float, level_name: str, end: str) -> str:
        json_lines = isinstance(formatter, JsonFormatter)
        line = formatter.line(now, level_name, logger.name, {**fields, "task_id": _ID}) + end
        head, _, tail = line.partition(json.dumps(_ID)[1:-1] if json_lines else _ID)
        return "".join([head + (json.dumps(task_id)[1:-1] if json_lines
                                and not _plain(task_id) else task_id) + tail
                        for task_id in ids])

    return _write(level, text)


_Formatter = TextFormatter | JsonFormatter


def _write(level: int, text: Callable[[_Formatter, float, str, str], str]) -> bool:
    """Write ``text(formatter, now, level name, line end)`` to the logger's only output
    in one write; False when it is not ours alone (``_only_output``)."""
    handler = _only_output(level)
    if handler is None:
        return False
    _write_text(handler, level, text)
    return True


def prepare_lines(level: int, batch: Sequence[dict[str, Any]]) -> Callable[[], None] | None:
    """``write_lines`` in two steps: the lines are formatted now, and written when the
    returned callable is called (None: they go through ``logging``, as lines that
    cannot be formatted do, to be reported when written, never raised here)."""
    handler = _only_output(level)
    if handler is None:
        return None
    try:
        text = _lines(batch)(cast(_Formatter, handler.formatter), time.time(),
                             logging.getLevelName(level), handler.terminator)
    except Exception:
        return None
    return lambda: _write_text(handler, level, lambda *_: text)


def _write_text(handler: logging.StreamHandler[Any], level: int,
                text: Callable[[_Formatter, float, str, str], str]) -> None:
    handler.acquire()
    try:
        handler.stream.write(text(cast(_Formatter, handler.formatter), time.time(),
                                  logging.getLevelName(level), handler.terminator))
        handler.flush()
    except Exception:  # as logging does: reported on stderr, never raised
        handler.handleError(logger.makeRecord(logger.name, level, __file__, 0,
                                              "event lines", (), None))
    finally:
        handler.release()


def _plain(text: str) -> bool:
    """Whether JSON writes ``text`` as it is (inside its quotes)."""
    return text.isascii() and text.isprintable() and '"' not in text and "\\" not in text


def _only_output(level: int) -> logging.StreamHandler[Any] | None:
    """The handler a record at ``level`` would reach and nothing else, if it is ours."""
    handlers = logger.handlers
    if (len(handlers) != 1 or logger.filters or logger.disabled
            or type(logger) is not logging.Logger
            or logging.Logger.handle.__module__ != "logging"
            or logging.Logger.callHandlers.__module__ != "logging"
            or logging.getLogRecordFactory() is not logging.LogRecord):
        return None
    handler = handlers[0]
    root_handlers = logging.getLogger().handlers
    if (not getattr(handler, _LINES_FLAG, False) or handler.filters or level < handler.level
            or not isinstance(handler, logging.StreamHandler)
            or type(handler.formatter) not in (TextFormatter, JsonFormatter)
            or (root_handlers and (logger.propagate or isinstance(handler, _UntilConfigured)))):
        return None
    return handler


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
    setattr(handler, _LINES_FLAG, True)
    handler.setFormatter(formatter(settings))
    logger.addHandler(handler)
    set_line_writer(write_lines, write_same_lines, prepare_lines)
    if logger.level == logging.NOTSET:
        logger.setLevel(settings.log_level)
