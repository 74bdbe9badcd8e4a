"""The jobs an inline executor accepted and has not finished, and what those not
running (queued, on a timer, waiting for a limit) are expected to take: each counts at
its task's mean run time here (``UNTIMED_RUN`` for a task not timed yet).

The spill-over limit weighs a waiting job at their mean (``weighed_run``), so a stream
of cheap jobs does not let a heavy task's jobs pile up behind it, and a heavy task's
history does not make cheap jobs spill (one mean run time for every task let both
happen)."""

from __future__ import annotations

from ...core.job import Job
from ...policy.governor import Governor
from ...policy.routing import UNTIMED_RUN


class Accepted:
    """Not thread-safe: the executor calls it under its lock (reads excepted)."""

    def __init__(self, governor: Governor) -> None:
        self._governor = governor
        #: By job id; a job waiting for its retry is here as its next attempt.
        self.jobs: dict[str, Job] = {}
        self._expected: dict[str, float] = {}
        self._sum = 0.0

    def add(self, job: Job) -> None:
        """``job`` is accepted, or waits again for its retry: it waits."""
        self.jobs[job.id] = job
        mean = self._governor.task_mean(job.spec.name)
        expected = UNTIMED_RUN if mean is None else mean
        self._sum += expected - self._expected.get(job.id, 0.0)
        self._expected[job.id] = expected

    def started(self, job: Job) -> None:
        """``job`` runs: it no longer waits."""
        self._no_longer_waits(job.id)

    def finished(self, job_id: str) -> Job | None:
        """The job ended or was dropped; it, if it was here."""
        self._no_longer_waits(job_id)
        return self.jobs.pop(job_id, None)

    def _no_longer_waits(self, job_id: str) -> None:
        expected = self._expected.pop(job_id, None)
        if expected is not None:
            self._sum -= expected
            if not self._expected:
                self._sum = 0.0  # no rounding left over

    def clear(self) -> list[Job]:
        """Drop every job; them."""
        jobs = list(self.jobs.values())
        self.jobs.clear()
        self._expected.clear()
        self._sum = 0.0
        return jobs

    def weighed_run(self) -> float | None:
        """Seconds the spill-over limit weighs a waiting job at: the waiting jobs' mean
        expected run time; with none waiting, the process's mean over every task."""
        count = len(self._expected)
        if count == 0:
            return self._governor.mean_run
        return max(0.0, self._sum) / count
