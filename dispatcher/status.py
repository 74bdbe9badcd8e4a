"""Job records: one record per job id, written at each state change by both routes.

Records live in Redis when a broker (or result backend) is configured, so any API
process can answer for any job, written by a background thread (``BufferedStatusStore``);
otherwise in this process's memory. The Redis key
and the core fields follow Celery's result-backend layout (``celery-task-meta-<id>``,
``status``, ``result``, ``traceback``, ``date_done``), so Celery's ``AsyncResult`` can
read them too.
"""

from __future__ import annotations

import atexit
import collections
import hashlib
import json
import logging
import os
import threading
import time
import weakref
from collections import OrderedDict
from datetime import UTC, datetime
from json.encoder import encode_basestring_ascii as _json_string
from typing import Any, Literal, Protocol

import redis

from .governor import server_busy
from .job import Job
from .link import LUA_HELPERS, Link, as_text, join_fields

log = logging.getLogger("dispatcher.status")

State = Literal["PENDING", "STARTED", "RETRY", "SUCCESS", "FAILURE"]
STATES: tuple[State, ...] = ("PENDING", "STARTED", "RETRY", "SUCCESS", "FAILURE")
TERMINAL: frozenset[str] = frozenset({"SUCCESS", "FAILURE"})
KEY_PREFIX = "celery-task-meta-"
#: Sorted set of job ids scored by dispatch time: the listing's index (kept for the TTL).
INDEX_KEY = "dispatch:jobs"
#: Per job, a Redis list of its state changes after dispatch (JSON entries).
HISTORY_PREFIX = "dispatch:history:"
#: How often records are written while the web server is saturated (see governor).
BUSY_INTERVAL = 0.05
#: Jobs per write call.
WRITE_CHUNK = 32
#: A position in the index: (dispatch time, job id); listings go newest first.
Position = tuple[float, str]

# Writes one flush of the buffer: ARGV[1] ttl, ARGV[2] the index's retention cut-off,
# then three counted runs of fields (``join_fields``): ARGV[3] pairs in ARGV[4] of
# (job id, record), ARGV[5] pairs in ARGV[6] of (job id, history entry), ARGV[7] pairs
# in ARGV[8] of (job id, dispatch time). Keys are built here, as in the publish script
# (single Redis).
_WRITE = LUA_HELPERS + r"""
local ttl = ARGV[1]
local field = fields(ARGV[4])
for _ = 1, tonumber(ARGV[3]) do
  local job, record = field(), field()
  redis.call('SET', 'celery-task-meta-' .. job, record, 'EX', ttl)
end
field = fields(ARGV[6])
local touched = {}
for _ = 1, tonumber(ARGV[5]) do
  local key, entry = 'dispatch:history:' .. field(), field()
  redis.call('RPUSH', key, entry)
  touched[key] = true
end
for key in pairs(touched) do redis.call('EXPIRE', key, ttl) end
field = fields(ARGV[8])
local scored = {}
for _ = 1, tonumber(ARGV[7]) do
  local job, at = field(), field()
  scored[#scored + 1] = at
  scored[#scored + 1] = job
end
if #scored > 0 then
  bulk('ZADD', 'dispatch:jobs', scored)
  redis.call('ZREMRANGEBYSCORE', 'dispatch:jobs', '-inf', ARGV[2])
end
return 1
"""
_WRITE_SHA = hashlib.sha1(_WRITE.encode()).hexdigest()


def make_record(job: Job, status: State, **fields: Any) -> dict[str, Any]:
    """The record for ``job`` in ``status``; ``fields`` adds result, error and timings."""
    record: dict[str, Any] = {
        "task_id": job.id,
        "status": status,
        "task_name": job.spec.name,
        "route": job.route,
        "queue": job.queue,
        "priority": job.priority,
        "attempt": job.attempt,
        "max_attempts": job.spec.retry.max_attempts,
        "request_id": job.request_id,
        "dispatched_at": job.dispatched_at,
        "result": None,
        "error": None,
        "traceback": None,
        "children": [],
        "date_done": None,
    }
    record.update(fields)
    if status in TERMINAL:
        now = time.time()
        record["finished_at"] = now
        record["date_done"] = datetime.fromtimestamp(now, UTC).isoformat()
    error = record.get("error")
    if status == "FAILURE" and isinstance(error, dict):
        # Celery's JSON encoding of an exception, for AsyncResult readers.
        record["result"] = {
            "exc_type": error.get("type"),
            "exc_message": [error.get("message")],
            "exc_module": "builtins",
        }
    return record


def _as_record(held: dict[str, Any] | Job) -> dict[str, Any]:
    """A copy of a held record, or the PENDING record of a held job."""
    return make_record(held, "PENDING") if isinstance(held, Job) else dict(held)


#: Stand-ins for the values that differ between the PENDING records of one task.
_ID_TOKEN, _REQUEST_TOKEN, _AT_TOKEN = "@@task-id@@", "@@request-id@@", "@@dispatched-at@@"
#: PENDING record templates: (task name, route, queue, priority, attempt, max attempts)
#: -> the JSON text around the job id, the request id and the dispatch time.
_pending_templates: dict[tuple[Any, ...], tuple[str, str, str, str]] = {}
_TEMPLATES_KEPT = 1024


def pending_json(job: Job) -> str:
    """``json.dumps(make_record(job, "PENDING"))``, from a template per task and route.

    Every dispatched job gets a PENDING record, written by a thread that shares the web
    server's GIL: filling three values into ready JSON costs a fraction of building
    and encoding the whole record each time.
    """
    key = (job.spec.name, job.route, job.queue, job.priority, job.attempt,
           job.spec.retry.max_attempts)
    parts = _pending_templates.get(key)
    if parts is None:
        record = make_record(job, "PENDING")
        record.update(task_id=_ID_TOKEN, request_id=_REQUEST_TOKEN, dispatched_at=_AT_TOKEN)
        text = json.dumps(record)
        try:
            head, rest = text.split(json.dumps(_ID_TOKEN))
            middle, rest = rest.split(json.dumps(_REQUEST_TOKEN))
            tail, end = rest.split(json.dumps(_AT_TOKEN))
        except ValueError:  # a task or queue name that holds a stand-in: no template
            return json.dumps(make_record(job, "PENDING"))
        parts = (head, middle, tail, end)
        if len(_pending_templates) >= _TEMPLATES_KEPT:
            _pending_templates.clear()
        _pending_templates[key] = parts
    head, middle, tail, end = parts
    request_id = "null" if job.request_id is None else _json_string(job.request_id)
    return (head + _json_string(job.id) + middle + request_id + tail
            + repr(job.dispatched_at) + end)


def _record_json(held: dict[str, Any] | Job) -> str:
    return pending_json(held) if isinstance(held, Job) else json.dumps(held)


def history_entry(record: dict[str, Any]) -> dict[str, Any]:
    """What a state change adds to the job's history."""
    return {"state": record["status"], "at": time.time(), "attempt": record.get("attempt")}


def after(position: Position, before: Position | None) -> bool:
    """Whether ``position`` comes after ``before`` in the newest-first listing."""
    return before is None or position < before


class StatusStore(Protocol):
    """Where job records are kept.

    ``save(record, transition=False)`` updates a record without a new history entry
    (progress reports). PENDING is not stored in the history: it is the dispatch itself.
    """

    def save(self, record: dict[str, Any], *, transition: bool = True) -> None: ...

    def save_pending(self, job: Job) -> None: ...

    def load(self, task_id: str) -> dict[str, Any] | None: ...

    def load_many(self, task_ids: list[str]) -> list[dict[str, Any] | None]: ...

    def history(self, task_id: str) -> list[dict[str, Any]]: ...

    def index_page(
        self, before: Position | None, since: float | None, count: int
    ) -> list[Position]: ...

    def delete(self, task_id: str) -> None: ...

    def flush(self, timeout: float = 5.0) -> bool: ...


class MemoryStatusStore:
    """In-process records, for a process without Redis; keeps the newest ``limit``."""

    def __init__(self, limit: int = 10_000) -> None:
        self._records: OrderedDict[str, dict[str, Any]] = OrderedDict()
        self._history: dict[str, list[dict[str, Any]]] = {}
        self._limit = limit
        self._lock = threading.Lock()

    def save(self, record: dict[str, Any], *, transition: bool = True) -> None:
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

    def load(self, task_id: str) -> dict[str, Any] | None:
        with self._lock:
            record = self._records.get(task_id)
            return dict(record) if record is not None else None

    def load_many(self, task_ids: list[str]) -> list[dict[str, Any] | None]:
        return [self.load(task_id) for task_id in task_ids]

    def history(self, task_id: str) -> list[dict[str, Any]]:
        with self._lock:
            return [dict(entry) for entry in self._history.get(task_id, [])]

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


#: Every buffered store of this process: a forked child resets each (``_after_fork``).
_stores: weakref.WeakSet[BufferedStatusStore] = weakref.WeakSet()


def _reset_stores_in_child() -> None:
    for store in list(_stores):
        store._after_fork()


os.register_at_fork(after_in_child=_reset_stores_in_child)


class BufferedStatusStore:
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

    def __init__(self, client: redis.Redis, ttl: int, interval: float = 0.005,
                 on_error: Any = None, *, poll: bool = False) -> None:
        self._client = client
        #: Writes go through a connection of the writer's own (callers hold _write_lock).
        self._link = Link(client)
        self._ttl = ttl
        self._interval = interval
        #: Poll every ``interval`` instead of being woken by each save: for Celery pool
        #: processes, which flush each job's records themselves before the ack, so the
        #: writer only matters for what a long job reports while it runs (progress).
        self.poll = poll
        self._on_error = on_error
        #: Newest state per job: a record, or the Job itself for a PENDING record that
        #: the writer builds (off the request path).
        self._pending: dict[str, dict[str, Any] | Job] = {}
        self._pending_history: dict[str, list[dict[str, Any]]] = {}
        self._pending_index: dict[str, float] = {}
        #: Jobs just dispatched, filed without the lock (``deque.append`` is atomic) and
        #: moved into ``_pending`` by whoever next takes the lock (``_absorb_filed``).
        self._filed: collections.deque[Job] = collections.deque()
        #: PENDING inline jobs held back while the server is saturated (see above).
        self._held: dict[str, Job] = {}
        #: The batch being written right now: taken from the buffer, not yet in Redis.
        #: Readers look here too, or a read landing mid-write would see neither.
        self._inflight: dict[str, dict[str, Any] | Job] = {}
        self._inflight_history: dict[str, list[dict[str, Any]]] = {}
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._write_lock = threading.Lock()
        self._thread: threading.Thread | None = None
        _stores.add(self)

    def _after_fork(self) -> None:
        """In a forked child (a Celery pool process): fresh locks, buffer and thread.
        The parent's buffer is the parent's to write; a lock some other thread held at
        the fork would never be released here. Run by an at-fork hook, so no call on the
        request path has to ask for the process id."""
        self._lock = threading.Lock()
        self._write_lock = threading.Lock()
        self._wake = threading.Event()
        self._pending = {}
        self._pending_history = {}
        self._pending_index = {}
        self._filed = collections.deque()
        self._held = {}
        self._inflight = {}
        self._inflight_history = {}
        self._thread = None

    def save(self, record: dict[str, Any], *, transition: bool = True) -> None:
        # Encoded by the writer thread, and only the newest state of each job.
        task_id = record["task_id"]
        with self._lock:
            self._pending[task_id] = record
            if self._held:
                self._release(task_id)
            if record["status"] == "PENDING":
                self._pending_index[task_id] = float(record.get("dispatched_at") or time.time())
            elif transition:
                self._pending_history.setdefault(task_id, []).append(history_entry(record))
            wake = self._writer_due()
        if wake:
            self._wake.set()

    def save_pending(self, job: Job) -> None:
        """``save(make_record(job, "PENDING"))``, with the record built by the writer
        when it writes (or by ``load``): a dispatch on the request path only files the
        job, without taking the lock."""
        self._filed.append(job)
        if self.poll or not self._wake.is_set():
            with self._lock:
                wake = self._writer_due()
            if wake:
                self._wake.set()

    def _absorb_filed(self) -> None:
        """Move filed jobs into the buffer (callers hold ``_lock``). A state saved since
        (STARTED, ...) is newer than the PENDING a filed job stands for, and stays."""
        filed = self._filed
        for _ in range(len(filed)):
            job = filed.popleft()
            self._pending.setdefault(job.id, job)
            self._pending_index[job.id] = job.dispatched_at or time.time()

    def _release(self, task_id: str) -> None:
        """Give a held job's index mark back to the buffer (callers hold ``_lock``); its
        newer state, already in the buffer, replaces the PENDING record."""
        job = self._held.pop(task_id, None)
        if job is not None:
            self._pending_index[task_id] = job.dispatched_at or time.time()

    def _hold_inline(self, batch: dict[str, dict[str, Any] | Job],
                     index: dict[str, float]) -> None:
        """Move plain PENDING inline jobs from ``batch`` to ``_held`` (callers hold
        ``_lock``). Celery-route jobs are never held: a worker writes their next state."""
        for task_id, job in [(t, v) for t, v in batch.items()
                             if isinstance(v, Job) and v.route == "inline"]:
            del batch[task_id]
            index.pop(task_id, None)
            self._held[task_id] = job

    def _writer_due(self) -> bool:
        """See that the writer runs (callers hold ``_lock``); True if it must be woken:
        once per cycle (``set()`` takes a lock), a polling writer never."""
        if self.poll or not self._wake.is_set():
            self._ensure_thread()
            return not self.poll
        return False

    def poll_every(self, interval: float) -> None:
        """Switch the writer to polling (see ``poll``)."""
        self._interval = interval
        self.poll = True
        self._wake.set()  # a writer waiting to be woken now loops on its own

    def _unwritten(self, task_id: str) -> dict[str, Any] | Job | None:
        """The newest state of ``task_id`` not yet known to be in Redis (callers hold
        ``_lock``): buffered, held back, or in the write under way."""
        return (self._pending.get(task_id) or self._held.get(task_id)
                or self._inflight.get(task_id))

    def load(self, task_id: str) -> dict[str, Any] | None:
        with self._lock:
            self._absorb_filed()
            pending = self._unwritten(task_id)
        if pending is not None:
            return _as_record(pending)
        raw = self._client.get(KEY_PREFIX + task_id)
        if raw is None:
            return None
        value = json.loads(raw)
        return value if isinstance(value, dict) else None

    def load_many(self, task_ids: list[str]) -> list[dict[str, Any] | None]:
        if not task_ids:
            return []
        raws = self._client.mget([KEY_PREFIX + task_id for task_id in task_ids])
        with self._lock:
            self._absorb_filed()
            pending = {t: held for t in task_ids if (held := self._unwritten(t)) is not None}
        records: list[dict[str, Any] | None] = []
        for task_id, raw in zip(task_ids, raws, strict=True):
            held = pending.get(task_id)
            value = _as_record(held) if held is not None else (
                json.loads(raw) if raw is not None else None)
            records.append(dict(value) if isinstance(value, dict) else None)
        return records

    def history(self, task_id: str) -> list[dict[str, Any]]:
        # The unwritten entries are taken before Redis is read: an entry written in
        # between is then in both (and kept once), never in neither.
        with self._lock:
            unwritten = [*self._inflight_history.get(task_id, ()),
                         *self._pending_history.get(task_id, ())]
        written = [json.loads(raw) for raw in self._client.lrange(HISTORY_PREFIX + task_id, 0, -1)]
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
                INDEX_KEY, top, bottom, start=offset, num=count, withscores=True
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
        self._client.delete(KEY_PREFIX + task_id, HISTORY_PREFIX + task_id)
        self._client.zrem(INDEX_KEY, task_id)

    def flush(self, timeout: float = 5.0) -> bool:
        """Write everything saved so far, now, from this thread; False if Redis failed.

        (``timeout`` bounds the wait for a write the background thread has under way.)
        """
        if not self._write_lock.acquire(timeout=timeout):
            return False
        try:
            return self._write_pending()
        finally:
            self._write_lock.release()

    def _ensure_thread(self) -> None:
        if self._thread is None or not self._thread.is_alive():
            self._thread = threading.Thread(target=self._run, name="dispatch-records",
                                            daemon=True)
            self._thread.start()
            atexit.register(self.flush, 2.0)

    def _write_pending(self, *, hold_inline: bool = False) -> bool:
        """Take the buffer and write it; callers hold ``_write_lock``, so batches reach
        Redis in the order they were taken and a newer state is never overwritten.
        ``hold_inline``: keep PENDING inline jobs back (the server is saturated);
        otherwise the held ones are written too."""
        with self._lock:
            self._absorb_filed()
            batch, self._pending = self._pending, {}
            history, self._pending_history = self._pending_history, {}
            index, self._pending_index = self._pending_index, {}
            if hold_inline:
                self._hold_inline(batch, index)
            elif self._held:
                for task_id, job in self._held.items():
                    batch.setdefault(task_id, job)
                    index[task_id] = job.dispatched_at or time.time()
                self._held = {}
            if not batch and not history:
                return True
            self._inflight, self._inflight_history = batch, history
        ids = list(batch)
        try:
            # A few dozen jobs per call: encoding is CPU under the web server's GIL,
            # and each call's socket I/O hands the GIL back to request handling.
            for start in range(0, len(ids), WRITE_CHUNK):
                self._write_chunk(ids[start:start + WRITE_CHUNK], batch, history, index)
            return True
        except Exception as exc:  # an outage: these records are lost, jobs are not
            if self._on_error is not None:
                self._on_error(exc)
            return False
        finally:
            with self._lock:
                self._inflight, self._inflight_history = {}, {}

    def _write_chunk(self, ids: list[str], batch: dict[str, dict[str, Any] | Job],
                     history: dict[str, list[dict[str, Any]]], index: dict[str, float]) -> None:
        records: list[str] = []
        entries: list[str] = []
        marks: list[str] = []
        for task_id in ids:
            if "\x00" in task_id:  # would break the NUL-joined fields; no id of ours
                log.warning("not recording task %r: its id holds a NUL character", task_id)
                continue
            records += (task_id, _record_json(batch[task_id]))
            for entry in history.get(task_id, ()):
                entries += (task_id, json.dumps(entry))
            if task_id in index:
                marks += (task_id, repr(index[task_id]))
        args = (self._ttl, repr(time.time() - self._ttl),
                len(records) // 2, join_fields(records), len(entries) // 2, join_fields(entries),
                len(marks) // 2, join_fields(marks))
        try:
            self._link.call("EVALSHA", _WRITE_SHA, 0, *args)
        except redis.exceptions.NoScriptError:  # Redis restarted and forgot it
            self._client.script_load(_WRITE)
            self._link.call("EVALSHA", _WRITE_SHA, 0, *args)

    def _run(self) -> None:
        while True:
            if self.poll:
                time.sleep(self._interval)
                with self._write_lock:
                    self._write_pending()
                continue
            self._wake.wait()
            self._wake.clear()
            # Let a burst of state changes coalesce; longer while the server is saturated,
            # as each wake-up of this thread takes the GIL from request handling.
            time.sleep(BUSY_INTERVAL if server_busy() else self._interval)
            with self._write_lock:
                self._write_pending(hold_inline=server_busy())
            if self._held:  # look again later: they are written once the load eases
                self._wake.set()
