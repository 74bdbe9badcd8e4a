"""Job records in Redis (``RedisRecordStore``): written by a background thread
(``store.record_buffer``), read here.

One record per job id, written at each state change by both routes, so any API
process can answer for any job. The record's shape is ``dispatcher.core.record``'s;
without Redis a process keeps its records in memory (``store.memory``).
"""

from __future__ import annotations

import json
from typing import Any

from ..core.record import (
    HistoryEntry,
    JobRecord,
    Position,
    after,
    decode_record,
    implied_pending,
)
from . import keys
from .link import as_text
from .record_buffer import WRITE_CHUNK, RecordBuffer, _as_record
from .record_script import Batch, records_command

__all__ = ["WRITE_CHUNK", "RedisRecordStore"]


def _implied(marker: bytes | str | None) -> JobRecord | None:
    """The PENDING record a first publication's marker implies: it holds "<queue
    key>\n<message>" until a worker takes the job (then "1")."""
    if marker is None:
        return None
    _, newline, message = as_text(marker).partition("\n")
    try:
        envelope = json.loads(message) if newline else None
    except ValueError:
        return None
    return implied_pending(envelope.get("headers") if isinstance(envelope, dict) else None)


class RedisRecordStore(RecordBuffer):
    """Writes records from a background thread, pipelined, newest state per job only.

    ``save`` never does I/O, so dispatching on the request path does not wait for
    Redis; a job that goes PENDING -> STARTED -> SUCCESS within one flush costs one
    write. ``load`` and ``history`` answer from what is not yet in Redis first (the
    buffer, and the batch being written), so this process always reads its own writes;
    other processes see them a few milliseconds later.

    While the web server is saturated, the PENDING records of inline jobs are held in
    memory rather than written: the executor is holding those jobs back too, and
    writing a record per dispatch (encoding here, a SET and a ZADD in Redis) cost a
    saturated server ~5 % of its requests. Each is written with the job's next state
    (STARTED), or as soon as the server has time again, or by ``flush``. Until then
    other processes do not see it (Celery, too, keeps no record of a job not started).
    """

    #: What ``write_with_ack`` took, until ``written``.
    _acked: Batch

    def load(self, task_id: str) -> JobRecord | None:
        with self._lock:
            self._absorb_filed()
            pending = self._unwritten(task_id)
        if pending is not None:
            return _as_record(pending)
        return self._stored([task_id])[0]

    def load_many(self, task_ids: list[str]) -> list[JobRecord | None]:
        if not task_ids:
            return []
        stored = self._stored(task_ids)
        with self._lock:
            self._absorb_filed()
            pending = {t: held for t in task_ids if (held := self._unwritten(t)) is not None}
        records: list[JobRecord | None] = []
        for task_id, record in zip(task_ids, stored, strict=True):
            held = pending.get(task_id)
            records.append(_as_record(held) if held is not None else record)
        return records

    def _stored(self, task_ids: list[str]) -> list[JobRecord | None]:
        """The records in Redis; for a job without one, the PENDING record its publish
        marker implies while it waits for a worker (a ``dispatch_many`` job's is written
        by the take). Record and marker are read together for those: the take writes
        one as it clears the other, so a reader sees one of them, never neither."""
        records = [decode_record(raw)
                   for raw in self._client.mget([keys.record(t) for t in task_ids])]
        missing = [index for index, record in enumerate(records) if record is None]
        if missing:
            pairs = self._client.mget([key for index in missing for key in (
                keys.record(task_ids[index]), keys.marker(f"{task_ids[index]}:1"))])
            for n, index in enumerate(missing):
                raw, marker = pairs[2 * n], pairs[2 * n + 1]
                records[index] = decode_record(raw) or _implied(marker)
        return records

    def history(self, task_id: str) -> list[HistoryEntry]:
        # The unwritten entries are taken before Redis is read: an entry written in
        # between is then in both (and kept once), never in neither.
        with self._lock:
            unwritten = [*self._inflight_history.get(task_id, ()),
                         *self._pending_history.get(task_id, ())]
        written = [json.loads(raw) for raw in self._client.lrange(keys.history(task_id), 0, -1)]
        return written + [entry for entry in unwritten if entry not in written]

    def index_page(
        self, before: Position | None, since: float | None, count: int
    ) -> list[Position]:
        top = "+inf" if before is None else repr(before[0])
        bottom = "-inf" if since is None else repr(since)
        page: list[Position] = []
        offset = 0
        while len(page) < count:
            raw: list[tuple[bytes, float]] = self._client.zrevrangebyscore(  # type: ignore[assignment]
                keys.JOBS_INDEX, top, bottom, start=offset, num=count, withscores=True
            )
            offset += len(raw)
            for member, score in raw:
                task_id = as_text(member)
                position = (float(score), task_id)
                if after(position, before):
                    page.append(position)
            if len(raw) < count:
                break
        return page[:count]

    def delete(self, task_id: str) -> None:
        with self._lock:
            self._absorb_filed()
            self._pending.pop(task_id, None)
            self._held.pop(task_id, None)
            self._pending_history.pop(task_id, None)
            self._pending_index.pop(task_id, None)
            self._inflight.pop(task_id, None)
        self._client.delete(keys.record(task_id), keys.history(task_id))
        self._client.zrem(keys.JOBS_INDEX, task_id)

    def write_with_ack(self, tag: str, timeout: float) -> tuple[Any, ...] | None:
        """Take everything saved so far out of the buffer and return one command that
        writes it and acknowledges the message with delivery tag ``tag`` in the same step
        (``records_command``), for a consumer to send with its next take; ``written``
        must follow once it is answered (the write lock is held until then, so writes
        still reach Redis in the order they were taken). None, with nothing taken: the
        write lock stayed busy for ``timeout``."""
        if not self._write_lock.acquire(timeout=timeout):
            return None
        try:
            with self._lock:
                self._acked = self._take()
            return records_command(self._ttl, list(self._acked.records), *self._acked,
                                   ack=tag)
        except BaseException as exc:  # nothing sent: all of it back, the lock given back
            self.written(exc)
            raise

    def written(self, error: BaseException | None) -> None:
        """``write_with_ack``'s command was answered; ``error``: it failed, and what it
        held goes back to the buffer (the acknowledgement is the caller's to send again)."""
        try:
            self._done(self._acked, list(self._acked.records), error)
        finally:
            self._acked = Batch({}, {}, {})
            self._write_lock.release()
