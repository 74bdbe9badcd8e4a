"""Cancellation as a running job sees it: ``cancelled()`` and the marks of a process
without Redis (``LocalCancellations``). Marks that hold across processes live in Redis
(``dispatcher.store.cancellations``); both answer the ``Cancellations`` port."""

from __future__ import annotations

import threading

from .context import attempt_var

#: How often a running job asks whether it was cancelled, at most (``cancelled()``,
#: ``progress()`` and the watcher of a coroutine task ask through the attempt).
CANCEL_CHECK_EVERY = 0.25


def cancelled() -> bool:
    """Whether the running job was cancelled: a task that can stop early should check
    this between steps and return (or raise ``TaskCancelled``). ``progress()`` raises
    ``TaskCancelled`` by itself. False outside a dispatched job."""
    attempt = attempt_var.get()
    return attempt is not None and attempt.cancel_requested()


class LocalCancellations:
    """Cancel marks held in this process (no Redis: one process sees every job)."""

    def __init__(self) -> None:
        self._marked: set[str] = set()
        self._lock = threading.Lock()

    def cancel(self, task_id: str) -> None:
        with self._lock:
            self._marked.add(task_id)

    def is_cancelled(self, task_id: str) -> bool:
        return task_id in self._marked
