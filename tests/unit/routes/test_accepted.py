"""What the inline executor's accepted jobs are expected to take (the spill-over's
weight): each waiting job at its own task's mean run time, counted once."""

from __future__ import annotations

import pytest

from dispatcher.core.job import Job
from dispatcher.core.spec import TaskSpec
from dispatcher.policy.governor import Governor
from dispatcher.policy.routing import UNTIMED_RUN
from dispatcher.routes.inline.accepted import Accepted


def _noop() -> None:
    return None


HEAVY = TaskSpec(name="t.heavy", fn=_noop, weight=1)
CHEAP = TaskSpec(name="t.cheap", fn=_noop, weight=1)


def job(spec: TaskSpec, job_id: str) -> Job:
    return Job(job_id, spec, "inline", None, 5, {})


def test_each_waiting_job_counts_at_its_tasks_mean_once() -> None:
    governor = Governor(1.0)
    accepted = Accepted(governor)
    assert accepted.weighed_run() is None  # nothing ran, nothing waits
    accepted.add(job(HEAVY, "h1"))
    assert accepted.weighed_run() == UNTIMED_RUN  # not timed yet
    governor.spent(0.0, 0.5, HEAVY.name)
    governor.spent(0.0, 0.001, CHEAP.name)
    accepted.add(job(HEAVY, "h2"))
    accepted.add(job(CHEAP, "c1"))
    assert accepted.weighed_run() == pytest.approx((UNTIMED_RUN + 0.5 + 0.001) / 3)
    accepted.add(job(HEAVY, "h1").next_attempt(1.0))  # its retry waits: counted once
    assert accepted.weighed_run() == pytest.approx((0.5 + 0.5 + 0.001) / 3)
    accepted.started(job(HEAVY, "h1"))
    assert len(accepted.jobs) == 3  # running: still accepted, no longer waiting
    assert accepted.weighed_run() == pytest.approx((0.5 + 0.001) / 2)
    assert accepted.finished("h2") is not None and accepted.finished("h2") is None
    assert accepted.weighed_run() == pytest.approx(0.001)
    assert [j.id for j in accepted.clear()] == ["h1", "c1"]
    assert accepted.weighed_run() == governor.mean_run  # none waits: the process's mean
