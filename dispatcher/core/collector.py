"""Python's cyclic garbage collector, paused while a batch of jobs is dispatched.

A ``dispatch_many`` of 10,000 jobs allocates tens of thousands of objects (jobs, their
payloads and handles, messages) that all live until it returns. Counting those
allocations, the collector runs dozens of times meanwhile and frees nothing; about
every other batch it walks the whole heap, which in a process that has loaded Celery
and pydantic costs ~30 ms (measured: a 10,000-job batch 48,500-76,000 jobs/s with the
collector, 63,000-77,000 paused; see bench/README).

The pause is process-wide, so it is kept short: only batches of ``PAUSE_AT_LEAST``
to ``PAUSE_AT_MOST`` jobs (about a second's work) take it, a batch that starts once a
pause is ``JOIN_WITHIN`` seconds old runs without it (batches that keep overlapping
cannot keep the collector off), and it is counted: the collector comes back when the
last batch in it ends, and only if it was on before. A process forked meanwhile starts
with the collector as it was before the pause.
"""

from __future__ import annotations

import gc
import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

#: The smallest and the largest batch dispatched with the collector paused.
PAUSE_AT_LEAST, PAUSE_AT_MOST = 500, 50_000
#: Seconds after a pause began during which another batch may join it.
JOIN_WITHIN = 1.0

_lock = threading.Lock()
_batches = 0
_was_enabled = False
_since = 0.0


@contextmanager
def paused_for(jobs: int) -> Iterator[None]:
    """The collector paused while the block dispatches ``jobs`` jobs (see the module's
    docstring for when it is not)."""
    global _batches, _was_enabled, _since
    with _lock:
        joins = PAUSE_AT_LEAST <= jobs <= PAUSE_AT_MOST and (
            _batches == 0 or time.monotonic() - _since < JOIN_WITHIN)
        if joins:
            if _batches == 0:
                _was_enabled, _since = gc.isenabled(), time.monotonic()
                gc.disable()
            _batches += 1
    if not joins:
        yield
        return
    try:
        yield
    finally:
        with _lock:
            _batches = max(0, _batches - 1)  # 0 already: forked inside its own pause
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
