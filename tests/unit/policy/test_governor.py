"""The governor: inline jobs start at once while the server is idle, and are paced to
their share while the server loop's thread is saturated."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest

from dispatcher.policy import governor
from dispatcher.policy.governor import HANDOFF, Governor, ServerLoad
from dispatcher.runtime.container import current


@pytest.fixture
def server_thread() -> Iterator[ServerLoad]:
    """The runtime's server-load meter, its watched thread forgotten before and after:
    tests register their own."""
    load = current().load
    load._thread = load._clock = None
    yield load
    load._thread = load._clock = None


def _watch_from(
    load: ServerLoad, target_ready: threading.Event, stop: threading.Event, burn: bool
) -> None:
    load.watch_server_thread()
    target_ready.set()
    while not stop.is_set():
        if not burn:
            stop.wait(0.01)


def _busy_reading(load: ServerLoad, burn: bool, seconds: float = 2.0) -> bool:
    """Whether busy() reports True at some point while a thread that burns CPU
    (or sleeps) is the watched server thread."""
    ready, stop = threading.Event(), threading.Event()
    thread = threading.Thread(target=_watch_from, args=(load, ready, stop, burn), daemon=True)
    thread.start()
    ready.wait(5)
    seen = False
    deadline = time.monotonic() + seconds
    try:
        while time.monotonic() < deadline and not seen:
            seen = load.busy()
            time.sleep(governor.WINDOW)
    finally:
        stop.set()
        thread.join(5)
    return seen


def test_a_saturated_server_thread_reads_as_busy(server_thread: ServerLoad) -> None:
    assert _busy_reading(server_thread, burn=True)


def test_an_idle_server_thread_never_reads_as_busy(server_thread: ServerLoad) -> None:
    assert not _busy_reading(server_thread, burn=False, seconds=0.5)


def test_without_a_server_thread_nothing_is_held_back(server_thread: ServerLoad) -> None:
    assert server_thread.server_cpu_seconds() is None
    assert not server_thread.busy()


def test_a_finished_server_thread_is_not_busy(server_thread: ServerLoad) -> None:
    thread = threading.Thread(target=server_thread.watch_server_thread)
    thread.start()
    thread.join()
    time.sleep(governor.WINDOW * 2)
    assert not server_thread.busy()


def test_while_busy_the_next_start_waits_for_the_share() -> None:
    gov = Governor(0.2, busy=lambda: True)
    gov.wait_turn()  # nothing spent yet: at once
    before = time.perf_counter()
    gov.spent(0.002)
    gov.wait_turn()
    waited = time.perf_counter() - before
    # 0.2 share: each second of job time (plus the hand-off) buys four of requests.
    assert waited >= (0.002 + HANDOFF) * 4 * 0.99


def test_while_idle_jobs_are_not_paced() -> None:
    gov = Governor(0.01, busy=lambda: False)
    gov.spent(10.0)  # a huge job: would mean a 990 s pause if the server were busy
    started = time.perf_counter()
    gov.wait_turn()
    assert time.perf_counter() - started < 1.0


def test_share_one_never_holds_back() -> None:
    gov = Governor(1.0, busy=lambda: True)
    gov.spent(10.0)
    started = time.perf_counter()
    gov.wait_turn()
    assert time.perf_counter() - started < 1.0


def test_pacing_stops_as_soon_as_the_server_is_idle_again() -> None:
    busy = [True]
    gov = Governor(0.01, busy=lambda: busy[0])
    gov.spent(1.0)  # ~99 s pause while busy
    threading.Timer(0.05, lambda: busy.__setitem__(0, False)).start()
    started = time.perf_counter()
    gov.wait_turn()
    assert time.perf_counter() - started < 5.0


def test_while_busy_a_job_is_held_for_its_max_hold_then_starts() -> None:
    gov = Governor(0.5, max_hold=0.3, busy=lambda: True)
    due = time.time()
    gov.wait_turn(due)
    # Held for its whole hold although the server never eased, and then started.
    assert time.time() - due >= 0.3 * 0.99


def test_a_held_job_starts_as_soon_as_the_burst_ends() -> None:
    busy = [True]
    gov = Governor(0.5, max_hold=60.0, busy=lambda: busy[0])
    threading.Timer(0.05, lambda: busy.__setitem__(0, False)).start()
    started = time.perf_counter()
    gov.wait_turn(time.time())
    assert time.perf_counter() - started < 5.0


def test_a_job_due_longer_ago_than_the_hold_is_paced_not_held() -> None:
    gov = Governor(0.5, max_hold=60.0, busy=lambda: True)
    started = time.perf_counter()
    gov.wait_turn(time.time() - 61.0)  # nothing spent yet: its turn is now
    assert time.perf_counter() - started < 1.0
    gov.spent(0.002)
    before = time.perf_counter()
    gov.wait_turn(time.time() - 61.0)
    assert time.perf_counter() - before >= (0.002 + HANDOFF) * 0.99  # 0.5 share: 1 for 1


def test_while_idle_a_fresh_job_is_not_held() -> None:
    gov = Governor(0.5, max_hold=60.0, busy=lambda: False)
    started = time.perf_counter()
    gov.wait_turn(time.time())
    assert time.perf_counter() - started < 1.0


def test_after_a_burst_the_held_backlog_drains_paced_to_the_recovery_share() -> None:
    busy = [True]
    gov = Governor(0.02, busy=lambda: busy[0])
    gov.wait_turn(time.time() - 60.0)  # read as saturated: a burst
    busy[0] = False
    gov.spent(0.01)  # the burst just ended: draining
    before = time.perf_counter()
    gov.wait_turn()
    share = governor.RECOVERY_SHARE
    assert time.perf_counter() - before >= 0.01 * (1 - share) / share * 0.99


def test_the_drain_is_not_paced_once_the_loop_has_been_calm_for_a_while(
    monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(governor, "RECOVERY", 0.0)
    busy = [True]
    gov = Governor(0.02, busy=lambda: busy[0])
    gov.wait_turn(time.time() - 60.0)
    busy[0] = False
    gov.spent(10.0)  # would mean a 30 s pause while draining
    started = time.perf_counter()
    gov.wait_turn()
    assert time.perf_counter() - started < 1.0


def test_the_mean_run_time_follows_the_jobs() -> None:
    gov = Governor(1.0)
    assert gov.mean_run is None
    gov.spent(0.0, 0.2)
    assert gov.mean_run == 0.2  # the first job sets it
    for _ in range(200):
        gov.spent(0.0, 0.001)
    assert gov.mean_run is not None and gov.mean_run < 0.002  # and it moves to the newest


def test_each_task_has_a_mean_run_time_of_its_own() -> None:
    gov = Governor(1.0)
    assert gov.task_mean("heavy") is None
    gov.spent(0.0, 0.5, "heavy")
    for _ in range(200):
        gov.spent(0.0, 0.001, "cheap")
    assert gov.task_mean("heavy") == 0.5  # cheap jobs do not move it
    cheap = gov.task_mean("cheap")
    assert cheap is not None and abs(cheap - 0.001) < 1e-9
    assert gov.mean_run is not None and gov.mean_run < 0.002  # the process's: all of them
