"""Python's cyclic garbage collector, paused while a batch of jobs is dispatched.

A ``dispatch_many`` of 10,000 jobs allocates tens of thousands of objects (jobs, their
payloads and handles, messages) that all live until it returns. Counting those
allocations, the collector runs dozens of times meanwhile and frees nothing; about
every other batch it walks the whole heap, which in a process that has loaded Celery
and pydantic costs ~30 ms (measured: a 10,000-job batch 48,500-76,000 jobs/s with the
collector, 63,000-77,000 paused; see bench/README).

The pause is process-wide, so it is only taken for batches of at most
``PAUSE_AT_MOST`` jobs (about a second's work), and it is counted: the collector
comes back when the last batch ends, and only if it was on before. A process forked
meanwhile starts with the collector as it was before the pause.
"""

from __future__ import annotations

import gc
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager

#: The largest batch dispatched with the collector paused.
PAUSE_AT_MOST = 50_000

_lock = threading.Lock()
_batches = 0
_was_enabled = False


@contextmanager
def paused_for(jobs: int) -> Iterator[None]:
    """The collector paused while the block dispatches ``jobs`` jobs (not paused for
    more than ``PAUSE_AT_MOST``)."""
    if jobs > PAUSE_AT_MOST:
        yield
        return
    global _batches, _was_enabled
    with _lock:
        if _batches == 0:
            _was_enabled = gc.isenabled()
            gc.disable()
        _batches += 1
    try:
        yield
    finally:
        with _lock:
            _batches -= 1
            if _batches == 0 and _was_enabled:
                gc.enable()


def _reset_in_child() -> None:
    """A child forked during a pause: no batch of its own is running."""
    global _batches, _lock
    _lock = threading.Lock()
    if _batches and _was_enabled:
        gc.enable()
    _batches = 0


os.register_at_fork(after_in_child=_reset_in_child)
