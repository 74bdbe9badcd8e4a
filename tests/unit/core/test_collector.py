"""The collector paused around a dispatched batch: restored after, counted across
threads, never left off in a forked child, and never turned on if it was off."""

from __future__ import annotations

import gc
import os
from collections.abc import Iterator

import pytest

from dispatcher.core.collector import PAUSE_AT_MOST, paused_for


@pytest.fixture(autouse=True)
def collector_on() -> Iterator[None]:
    gc.enable()
    yield
    gc.enable()


def test_paused_during_the_batch_and_back_after_it_even_on_an_error() -> None:
    with paused_for(10):
        assert not gc.isenabled()
    assert gc.isenabled()
    with pytest.raises(ValueError), paused_for(10):
        raise ValueError("a bad item")
    assert gc.isenabled()


def test_overlapping_batches_leave_it_paused_until_the_last_ends() -> None:
    first, second = paused_for(10), paused_for(10)
    first.__enter__()
    second.__enter__()
    first.__exit__(None, None, None)
    assert not gc.isenabled()
    second.__exit__(None, None, None)
    assert gc.isenabled()


def test_a_large_batch_is_not_paused_for() -> None:
    with paused_for(PAUSE_AT_MOST + 1):
        assert gc.isenabled()


def test_a_collector_switched_off_by_the_app_stays_off() -> None:
    gc.disable()
    with paused_for(10):
        assert not gc.isenabled()
    assert not gc.isenabled()


def test_a_child_forked_during_a_pause_has_its_collector_back() -> None:
    with paused_for(10):
        pid = os.fork()
        if pid == 0:  # the child: exit code 0 if its collector is on
            os._exit(0 if gc.isenabled() else 1)
        _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
