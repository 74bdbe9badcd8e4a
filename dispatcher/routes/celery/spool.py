"""The outage spool: jobs accepted while the broker is down, kept on local disk.

SQLite in WAL mode, one row per job, written before ``dispatch()`` returns. The relay
(see ``monitor.BrokerMonitor``) publishes rows once Redis answers again and deletes
them; the publish marker makes a row sent twice land in the queue only once.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True, slots=True)
class SpooledJob:
    job_id: str
    queue_key: str
    message: str
    record: str | None
    #: When a delayed job is due (``time.time()`` seconds); None: due now.
    due: float | None = None


#: Seconds a connection waits for another one's lock, and for the switch to WAL mode
#: while another connection reads.
_BUSY_WAIT, _MODE_WAIT = 10.0, 0.2


def _write_ahead(db: sqlite3.Connection) -> None:
    """Put the file in WAL mode (it stays so). The switch needs the file to itself:
    while another connection reads it SQLite leaves the mode as it was, and while one
    writes it refuses at once, without waiting (two threads opening a new spool
    together: one of them spooled nothing). So it is tried again: for up to
    ``_BUSY_WAIT`` while refused, for a moment while left as it was (a file system
    without WAL would leave it so for good). Past that the spool works on in the mode
    it has (as durable, with less concurrency)."""
    start = time.monotonic()
    while True:
        try:
            if db.execute("PRAGMA journal_mode=WAL").fetchone()[0] == "wal":
                return
            wait = _MODE_WAIT
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc):
                raise
            wait = _BUSY_WAIT
        if time.monotonic() - start > wait:
            return
        time.sleep(0.005)


class Spool:
    """A durable FIFO of prepared messages; safe across threads and processes."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._local = threading.local()

    def _connect(self) -> sqlite3.Connection:
        """This thread's connection (a new one after a fork); creates the file on first use."""
        db: sqlite3.Connection | None = getattr(self._local, "db", None)
        if db is None or getattr(self._local, "pid", 0) != os.getpid():
            self.path.parent.mkdir(parents=True, exist_ok=True)
            db = sqlite3.connect(self.path, timeout=_BUSY_WAIT, isolation_level=None)
            _write_ahead(db)
            db.execute("PRAGMA synchronous=FULL")
            db.execute(
                "CREATE TABLE IF NOT EXISTS spool ("
                " job_id TEXT PRIMARY KEY, queue_key TEXT NOT NULL, message TEXT NOT NULL,"
                " record TEXT, created REAL NOT NULL)"
            )
            columns = {row[1] for row in db.execute("PRAGMA table_info(spool)")}
            if "due" not in columns:  # a spool written by an older version
                with contextlib.suppress(sqlite3.OperationalError):  # added by another
                    db.execute("ALTER TABLE spool ADD COLUMN due REAL")  # process just now
            self._local.db, self._local.pid = db, os.getpid()
        return db

    def put(self, job: SpooledJob) -> None:
        """Store ``job`` durably (fsync'd) before returning."""
        self._connect().execute(
            "INSERT OR REPLACE INTO spool (job_id, queue_key, message, record, due, created)"
            " VALUES (?, ?, ?, ?, ?, ?)",
            (job.job_id, job.queue_key, job.message, job.record, job.due, time.time()),
        )

    def peek(self, limit: int = 100) -> list[SpooledJob]:
        if not self.path.exists():
            return []
        rows = (
            self._connect()
            .execute(
                "SELECT job_id, queue_key, message, record, due FROM spool"
                " ORDER BY created LIMIT ?",
                (limit,),
            )
            .fetchall()
        )
        return [SpooledJob(*row) for row in rows]

    def remove(self, job_ids: list[str]) -> None:
        if job_ids:
            marks = ",".join("?" * len(job_ids))
            self._connect().execute(f"DELETE FROM spool WHERE job_id IN ({marks})", job_ids)

    def depth(self) -> int:
        if not self.path.exists():
            return 0
        return int(self._connect().execute("SELECT COUNT(*) FROM spool").fetchone()[0])
