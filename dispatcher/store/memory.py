"""The memory adapters: records and dead letters of a process without Redis.

They keep the newest entries only (bounded) and answer exactly as the Redis
adapters do: the shared contract tests run against both.
"""

from __future__ import annotations

import threading
from collections import OrderedDict

from ..core.job import Job
from ..core.record import (
    DeadLetter,
    HistoryEntry,
    JobRecord,
    Position,
    after,
    history_entry,
    make_record,
)


class MemoryRecordStore:
    """In-process records, for a process without Redis; keeps the newest ``limit``."""

    def __init__(self, limit: int = 10_000) -> None:
        self._records: OrderedDict[str, JobRecord] = OrderedDict()
        self._history: dict[str, list[HistoryEntry]] = {}
        self._limit = limit
        self._lock = threading.Lock()

    def save(self, record: JobRecord, *, transition: bool = True) -> None:
        task_id = record["task_id"]
        with self._lock:
            self._records[task_id] = record
            self._records.move_to_end(task_id)
            if transition and record["status"] != "PENDING":
                self._history.setdefault(task_id, []).append(history_entry(record))
            while len(self._records) > self._limit:
                gone, _ = self._records.popitem(last=False)
                self._history.pop(gone, None)

    def save_pending(self, job: Job) -> None:
        self.save(make_record(job, "PENDING"))

    def load(self, task_id: str) -> JobRecord | None:
        with self._lock:
            record = self._records.get(task_id)
            return record.copy() if record is not None else None

    def load_many(self, task_ids: list[str]) -> list[JobRecord | None]:
        return [self.load(task_id) for task_id in task_ids]

    def history(self, task_id: str) -> list[HistoryEntry]:
        with self._lock:
            return [entry.copy() for entry in self._history.get(task_id, [])]

    def index_page(
        self, before: Position | None, since: float | None, count: int
    ) -> list[Position]:
        with self._lock:
            positions = [(float(r.get("dispatched_at") or 0.0), task_id)
                         for task_id, r in self._records.items()]
        positions.sort(reverse=True)
        return [p for p in positions
                if after(p, before) and (since is None or p[0] >= since)][:count]

    def delete(self, task_id: str) -> None:
        with self._lock:
            self._records.pop(task_id, None)
            self._history.pop(task_id, None)

    def flush(self, timeout: float = 5.0) -> bool:
        return True


class MemoryDeadLetters:
    def __init__(self, limit: int = 10_000) -> None:
        self._entries: OrderedDict[str, DeadLetter] = OrderedDict()
        self._limit = limit
        self._lock = threading.Lock()

    def add(self, entry: DeadLetter) -> None:
        with self._lock:
            self._entries[entry["task_id"]] = entry
            while len(self._entries) > self._limit:
                self._entries.popitem(last=False)

    def get(self, task_id: str) -> DeadLetter | None:
        with self._lock:
            return self._entries.get(task_id)

    def remove(self, task_id: str) -> None:
        with self._lock:
            self._entries.pop(task_id, None)

    def list(self, limit: int = 100) -> list[DeadLetter]:
        with self._lock:
            return list(reversed(self._entries.values()))[:limit]
