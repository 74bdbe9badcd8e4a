"""The write side of the Redis records store: a buffer of the newest state per job,
written by a background thread in pipelined script calls (``lua/write_records.lua``).
The read side, which also looks into this buffer, is ``store.records``."""

from __future__ import annotations

import atexit
import collections
import logging
import os
import threading
import time
import weakref
from collections.abc import Callable

import redis

from ..core.job import Job
from ..core.record import HistoryEntry, JobRecord, history_entry, make_record
from ..policy.governor import never_busy
from .link import Link
from .record_script import Batch, write_records

log = logging.getLogger("dispatcher.records")

#: Seconds between two writes while the web server is saturated: each wake-up of the
#: writer takes the GIL from the server's loop (see ``policy.governor.HOLD_NAP``).
BUSY_INTERVAL = 0.25
#: Jobs per write call.
WRITE_CHUNK = 32
#: Seconds between two tries to write what a failed write put back.
RETRY_PAUSE = 0.5


def _nothing(task_id: str) -> Job | None:
    return None


def _as_record(held: JobRecord | Job) -> JobRecord:
    """A copy of a held record, or the PENDING record of a held job."""
    return make_record(held, "PENDING") if isinstance(held, Job) else held.copy()


#: Every buffered store of this process: a forked child resets each (``_after_fork``).
_stores: weakref.WeakSet[RecordBuffer] = weakref.WeakSet()


def _reset_stores_in_child() -> None:
    for store in list(_stores):
        store._after_fork()


os.register_at_fork(after_in_child=_reset_stores_in_child)


class RecordBuffer:
    """Buffered, pipelined writes of job records; see ``RedisRecordStore``."""

    def __init__(self, client: redis.Redis, ttl: int, interval: float = 0.005,
                 on_error: Callable[[BaseException], None] | None = None, *,
                 poll: bool = False, busy: Callable[[], bool] = never_busy) -> None:
        self._client = client
        #: Whether the web server is saturated (``policy.governor.ServerLoad.busy``).
        self._busy = busy
        #: Writes go through a connection of the writer's own (callers hold _write_lock).
        self._link = Link(client)
        self._ttl = ttl
        self._interval = interval
        #: Poll every ``interval`` instead of being woken by each save: for Celery pool
        #: processes, which flush each job's records themselves before the ack, so the
        #: writer only matters for what a long job reports while it runs (progress).
        self.poll = poll
        self._on_error = on_error
        #: When a write last failed (its records are back in the buffer); None: none.
        self.failed_at: float | None = None
        #: Newest state per job: a record, or the Job itself for a PENDING record that
        #: the writer builds (off the request path).
        self._pending: dict[str, JobRecord | Job] = {}
        self._pending_history: dict[str, list[HistoryEntry]] = {}
        self._pending_index: dict[str, float] = {}
        #: Jobs just dispatched, filed without the lock (``deque.append`` is atomic) and
        #: moved into ``_pending`` by whoever next takes the lock (``_absorb_filed``).
        self._filed: collections.deque[Job] = collections.deque()
        #: PENDING inline jobs held back while the server is saturated (see
        #: ``RedisRecordStore``).
        self._held: dict[str, Job] = {}
        #: The batch being written right now: taken from the buffer, not yet in Redis.
        #: Readers look here too, or a read landing mid-write would see neither.
        self._inflight: dict[str, JobRecord | Job] = {}
        self._inflight_history: dict[str, list[HistoryEntry]] = {}
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._write_lock = threading.Lock()
        self._thread: threading.Thread | None = None
        #: Jobs accepted but not yet published whose PENDING record the publish writes,
        #: or a batch's take (spill-over, see ``read_also``); never written from here.
        self._unpublished: Callable[[str], Job | None] = _nothing
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

    def save(self, record: JobRecord, *, transition: bool = True) -> None:
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

    def _hold_inline(self, batch: dict[str, JobRecord | Job],
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

    def _unwritten(self, task_id: str) -> JobRecord | Job | None:
        """The newest state of ``task_id`` not yet known to be in Redis (callers hold
        ``_lock``): buffered, held back, or in the write under way."""
        return (self._pending.get(task_id) or self._held.get(task_id)
                or self._inflight.get(task_id) or self._unpublished(task_id))

    def read_also(self, unpublished: Callable[[str], Job | None]) -> None:
        """Answer for jobs that ``unpublished`` holds (accepted, to be published with
        their PENDING record by someone else) as PENDING until they are in Redis."""
        self._unpublished = unpublished

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
            batch = self._take(hold_inline)
        ids, written, error = list(batch.records), 0, None
        try:
            # A few dozen jobs per call: encoding is CPU under the web server's GIL,
            # and each call's socket I/O hands the GIL back to request handling.
            for start in range(0, len(ids), WRITE_CHUNK):
                self._write_chunk(ids[start:start + WRITE_CHUNK], *batch)
                written = start + WRITE_CHUNK
            return True
        except Exception as exc:  # an outage: kept, and written once Redis answers
            error = exc
            return False
        finally:
            self._done(batch, ids[written:], error)

    def _take(self, hold_inline: bool = False) -> Batch:
        """Everything saved so far, out of the buffer and into the write under way
        (callers hold both locks; ``hold_inline``: see ``_write_pending``)."""
        self._absorb_filed()
        batch = Batch(self._pending, self._pending_history, self._pending_index)
        self._pending, self._pending_history, self._pending_index = {}, {}, {}
        if hold_inline:
            self._hold_inline(batch.records, batch.marks)
        elif self._held:
            for task_id, job in self._held.items():
                batch.records.setdefault(task_id, job)
                batch.marks[task_id] = job.dispatched_at or time.time()
            self._held = {}
        self._inflight, self._inflight_history = batch.records, batch.history
        return batch

    def _done(self, batch: Batch, unwritten: list[str], error: BaseException | None) -> None:
        """End the write under way (callers hold ``_write_lock``); after ``error``,
        ``unwritten`` goes back to the buffer."""
        with self._lock:
            if error is not None:
                self._put_back(unwritten, *batch)
            self._inflight, self._inflight_history = {}, {}
        if error is not None and self._on_error is not None:
            self._on_error(error)

    def _put_back(self, ids: list[str], batch: dict[str, JobRecord | Job],
                  history: dict[str, list[HistoryEntry]], index: dict[str, float]) -> None:
        """Return what a failed write did not get into Redis to the buffer, behind any
        newer state saved meanwhile (callers hold ``_lock``). A Redis outage (a stop, a
        ``CLIENT PAUSE``) must not leave a finished job's record at PENDING or STARTED."""
        for task_id in ids:
            self._pending.setdefault(task_id, batch[task_id])
            entries = history.get(task_id)
            if entries:
                self._pending_history[task_id] = [*entries,
                                                  *self._pending_history.get(task_id, ())]
            if task_id in index:
                self._pending_index.setdefault(task_id, index[task_id])
        self.failed_at = time.monotonic()

    def _write_chunk(self, ids: list[str], batch: dict[str, JobRecord | Job],
                     history: dict[str, list[HistoryEntry]], index: dict[str, float]) -> None:
        write_records(self._link, self._client, self._ttl, ids, batch, history, index)

    def _run(self) -> None:
        while True:
            if self.poll:
                time.sleep(self._interval)
                with self._write_lock:
                    self._write_pending()
                continue
            if self._wake.wait(RETRY_PAUSE if self.failed_at is not None else None):
                self._wake.clear()
            elif self.failed_at is not None and not self._pending:
                self.failed_at = None  # nothing left to retry
                continue
            # Let a burst of state changes coalesce; longer while the server is saturated,
            # as each wake-up of this thread takes the GIL from request handling.
            time.sleep(BUSY_INTERVAL if self._busy() else self._interval)
            with self._write_lock:
                if self._write_pending(hold_inline=self._busy()):
                    self.failed_at = None
            if self._held:  # look again later: they are written once the load eases
                self._wake.set()
