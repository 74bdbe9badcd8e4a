"""The collector paused around a dispatched batch: restored after, counted across
threads, never left off in a forked child, and never turned on if it was off."""

from __future__ import annotations

import gc
import os
from collections.abc import Iterator

import pytest

from dispatcher.core import collector
from dispatcher.core.collector import PAUSE_AT_LEAST, PAUSE_AT_MOST, paused_for

BATCH = PAUSE_AT_LEAST


@pytest.fixture(autouse=True)
def collector_on() -> Iterator[None]:
    gc.enable()
    yield
    gc.enable()


def test_paused_during_the_batch_and_back_after_it_even_on_an_error() -> None:
    with paused_for(BATCH):
        assert not gc.isenabled()
    assert gc.isenabled()
    with pytest.raises(ValueError), paused_for(BATCH):
        raise ValueError("a bad item")
    assert gc.isenabled()


def test_overlapping_batches_leave_it_paused_until_the_last_ends() -> None:
    first, second = paused_for(BATCH), paused_for(BATCH)
    first.__enter__()
    second.__enter__()
    first.__exit__(None, None, None)
    assert not gc.isenabled()
    second.__exit__(None, None, None)
    assert gc.isenabled()


@pytest.mark.parametrize("jobs", [PAUSE_AT_LEAST - 1, PAUSE_AT_MOST + 1])
def test_small_and_large_batches_are_not_paused_for(jobs: int) -> None:
    with paused_for(jobs):
        assert gc.isenabled()


def test_a_batch_does_not_join_a_pause_that_began_long_ago(
    monkeypatch: pytest.MonkeyPatch
) -> None:
    """Batches that keep overlapping cannot keep the collector off."""
    with paused_for(BATCH):
        monkeypatch.setattr(collector, "_since", collector._since - collector.JOIN_WITHIN)
        late = paused_for(BATCH)
        late.__enter__()
    assert gc.isenabled()  # back when the first ended, though the late one still runs
    late.__exit__(None, None, None)
    assert gc.isenabled()


def test_a_collector_switched_off_by_the_app_stays_off() -> None:
    gc.disable()
    with paused_for(BATCH):
        assert not gc.isenabled()
    assert not gc.isenabled()


def test_a_child_forked_during_a_pause_has_its_collector_back() -> None:
    with paused_for(BATCH):
        pid = os.fork()
        if pid == 0:  # the child: exit code 0 if its collector is on
            os._exit(0 if gc.isenabled() else 1)
        _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
