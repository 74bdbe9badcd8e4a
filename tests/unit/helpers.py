"""Helpers shared by the unit tests (imported, unlike conftest fixtures)."""

from __future__ import annotations

import logging
import threading
from typing import Any

from dispatcher import DispatcherSettings


def unit_settings(**fields: Any) -> DispatcherSettings:
    """Settings that can never reach a broker and ignore any ``.env`` file."""
    fields.setdefault("broker_url", None)
    fields.setdefault("result_backend_url", None)
    return DispatcherSettings(_env_file=None, **fields)  # type: ignore[call-arg]


class ListHandler(logging.Handler):
    """Keeps every record it sees (thread-safe)."""

    def __init__(self) -> None:
        super().__init__(level=logging.DEBUG)
        self.records: list[logging.LogRecord] = []
        self._records_lock = threading.Lock()

    def emit(self, record: logging.LogRecord) -> None:
        with self._records_lock:
            self.records.append(record)

    def events(self, task_id: str | None = None) -> list[logging.LogRecord]:
        """Records carrying dispatcher event fields, optionally for one job only."""
        with self._records_lock:
            records = list(self.records)
        return [
            r
            for r in records
            if isinstance(getattr(r, "dispatch", None), dict)
            and (task_id is None or r.dispatch["task_id"] == task_id)
        ]
