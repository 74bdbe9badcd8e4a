"""One call of ``lua/write_records.lua``: records, history entries and index marks of
a chunk of jobs, in one atomic script call (``store.record_buffer`` chunks the buffer),
and for a direct consumer the acknowledgement of the job they belong to."""

from __future__ import annotations

import json
import logging
import time
from typing import Any, NamedTuple

import redis

from ..core.job import Job
from ..core.record import TERMINAL, HistoryEntry, JobRecord, encode_record, pending_json
from . import keys
from .link import Link, join_fields
from .scripts import WRITE_RECORDS

log = logging.getLogger("dispatcher.records")


class Batch(NamedTuple):
    """What one write takes from the buffer: per job its newest state, history entries
    and index mark."""

    records: dict[str, JobRecord | Job]
    history: dict[str, list[HistoryEntry]]
    marks: dict[str, float]


def record_json(held: JobRecord | Job) -> str:
    return pending_json(held) if isinstance(held, Job) else encode_record(held)


def write_records(link: Link, client: redis.Redis, ttl: int, ids: list[str],
                  batch: dict[str, JobRecord | Job], history: dict[str, list[HistoryEntry]],
                  index: dict[str, float]) -> None:
    """Write ``ids``' records (a ready one is also announced, as Celery's result backend
    does), their history entries and their index marks."""
    command = records_command(ttl, ids, batch, history, index)
    try:
        link.call(*command)
    except redis.exceptions.NoScriptError:  # Redis restarted and forgot it
        client.script_load(WRITE_RECORDS.source)
        link.call(*command)


def records_command(ttl: int, ids: list[str], batch: dict[str, JobRecord | Job],
                    history: dict[str, list[HistoryEntry]], index: dict[str, float],
                    ack: str | None = None) -> tuple[Any, ...]:
    """The ``EVALSHA`` that writes ``ids``' records, history entries and index marks;
    with ``ack``, a delivery tag, that message is acknowledged in the same step."""
    records: list[str] = []
    entries: list[str] = []
    marks: list[str] = []
    for task_id in ids:
        if "\x00" in task_id:  # would break the NUL-joined fields; no id of ours
            log.warning("not recording task %r: its id holds a NUL character", task_id)
            continue
        held = batch[task_id]
        ready = isinstance(held, dict) and held["status"] in TERMINAL
        records += (task_id, record_json(held), "1" if ready else "")
        for entry in history.get(task_id, ()):
            entries += (task_id, json.dumps(entry))
        if task_id in index:
            marks += (task_id, repr(index[task_id]))
    args = (ttl, repr(time.time() - ttl),
            len(records) // 3, join_fields(records), len(entries) // 2, join_fields(entries),
            len(marks) // 2, join_fields(marks), keys.RECORD_PREFIX, keys.HISTORY_PREFIX)
    if ack is None:
        return ("EVALSHA", WRITE_RECORDS.sha, 1, keys.JOBS_INDEX, *args)
    return ("EVALSHA", WRITE_RECORDS.sha, 3, keys.JOBS_INDEX, keys.KOMBU_UNACKED_INDEX,
            keys.KOMBU_UNACKED, *args, ack)
