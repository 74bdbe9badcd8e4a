"""The spare's rule (``routes/celery/spare.py``): one message beyond the prefetch count
only while the jobs timed so far average less than the threshold."""

from __future__ import annotations

from typing import Any

import pytest

from dispatcher.routes.celery import spare
from dispatcher.routes.celery.spare import SPARE_BELOW_OPTION, SpareQoS


class Clock:
    now = 100.0

    def __call__(self) -> float:
        return self.now


class QoS(SpareQoS):
    def __init__(self, prefetch: int, below: float) -> None:
        self.prefetch_count = prefetch
        self._delivered: dict[str, Any] = {}
        self._dirty: set[str] = set()
        self.init_spare({SPARE_BELOW_OPTION: below})


def run(qos: QoS, clock: Clock, tag: str, seconds: float) -> None:
    qos.note_start(tag)
    clock.now += seconds
    qos.note_end(tag)


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    clock = Clock()
    monkeypatch.setattr(spare.time, "monotonic", clock)
    return clock


def test_no_spare_until_jobs_were_timed(clock: Clock) -> None:
    qos = QoS(prefetch=2, below=0.05)
    qos._delivered = {"a": 1, "b": 2}
    assert qos.spare() == 0 and not qos.can_consume()
    run(qos, clock, "t", 0.001)
    assert qos.spare() == 1 and qos.can_consume()
    qos._delivered["c"] = 3
    assert not qos.can_consume()  # one spare, not more


def test_long_jobs_hold_no_spare_and_short_ones_bring_it_back(clock: Clock) -> None:
    qos = QoS(prefetch=1, below=0.05)
    qos._delivered = {"running": 1}
    run(qos, clock, "short", 0.001)
    assert qos.can_consume()
    run(qos, clock, "long", 2.0)
    assert qos.spare() == 0 and not qos.can_consume()
    for n in range(40):
        run(qos, clock, f"s{n}", 0.001)
    assert qos.spare() == 1


def test_an_acknowledgement_never_started_here_is_not_timed(clock: Clock) -> None:
    qos = QoS(prefetch=1, below=0.05)
    qos.note_end("restored")  # no start seen (a foreign task, a hand-back)
    assert qos.job_time is None


def test_zero_turns_the_spare_off(clock: Clock) -> None:
    qos = QoS(prefetch=1, below=0.0)
    run(qos, clock, "t", 0.0)
    assert qos.spare() == 0


def test_no_prefetch_limit_consumes_freely() -> None:
    qos = QoS(prefetch=0, below=0.05)
    qos._delivered = {str(n): n for n in range(10)}
    assert qos.can_consume()
