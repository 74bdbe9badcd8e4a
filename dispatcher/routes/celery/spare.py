"""A worker holds one job ahead of its free slots while its jobs are short.

With late acks and a prefetch of one per pool process, a pool process that finishes a
job waits for the consumer to acknowledge it, take the next message from Redis (a round
trip) and hand it over: on jobs of a millisecond the pool processes sat idle for a good
part of the time and the machine's cores with them (steady drain of no-op jobs, 2 slots:
~25 % of both cores idle). One job taken ahead, the *spare*, is handed over as soon as a
process frees (+6-24 % on that drain, see ``bench/README.md``).

A spare is held only while the worker's jobs take less than ``DISPATCH_WORKER_SPARE_BELOW``
seconds on average (started to acknowledged, a moving average): a job held behind long
ones would wait while another worker may idle, which is why Celery's advice for long
tasks is a prefetch of one. Until its jobs have been timed a worker holds none.

A spare is counted in its job's run count as it is taken (``lua/count_delivery.lua``) and
marked taken; when a pool process accepts the job, ``started.StartedRequest`` tells the transport,
which clears the mark (``DeliveryQoS.started``). A worker that dies holding a spare leaves
the mark, and the job's next delivery takes the count over: no death is counted for a job
that never started.
"""

from __future__ import annotations

import time
from typing import Any

#: Transport option: a spare is held while jobs average less than this many seconds.
SPARE_BELOW_OPTION = "dispatch_spare_below"
#: Weight of the newest job in the moving average of job times.
_WEIGHT = 0.2


class JobTimes:
    """A moving average of how long jobs take, and whether they count as short: a
    worker holds jobs ahead only then (this spare; a direct consumer's ``ahead``)."""

    def __init__(self, short_below: float) -> None:
        self.short_below = short_below
        #: None until a job was timed.
        self.average: float | None = None

    def add(self, took: float) -> None:
        average = self.average
        self.average = took if average is None else average + _WEIGHT * (took - average)

    def short(self) -> bool:
        return self.average is not None and self.average < self.short_below


class SpareQoS:
    """Mixin before kombu's ``QoS``: one message beyond the prefetch count while the
    jobs are short. Times jobs from their start to their acknowledgement."""

    prefetch_count: int
    _delivered: Any
    _dirty: Any

    def init_spare(self, options: dict[str, Any]) -> None:
        self._times = JobTimes(float(options.get(SPARE_BELOW_OPTION) or 0.0))
        self._started_at: dict[Any, float] = {}

    @property
    def job_time(self) -> float | None:
        """Moving average of the job times seen; None until one was timed."""
        return self._times.average

    def spare(self) -> int:
        """1 while a spare may be held, else 0."""
        return int(self._times.short())

    def note_start(self, delivery_tag: Any) -> None:
        self._started_at[delivery_tag] = time.monotonic()

    def note_end(self, delivery_tag: Any) -> None:
        started = self._started_at.pop(delivery_tag, None)
        if started is not None:
            self._times.add(time.monotonic() - started)

    def forget_starts(self) -> None:
        self._started_at.clear()

    def can_consume(self) -> bool:
        count = self.prefetch_count
        return not count or len(self._delivered) - len(self._dirty) < count + self.spare()
