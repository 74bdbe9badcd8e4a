"""``supervisor.once``: the stop handler of the supervisor and of each direct consumer
runs its action once, even when a second signal arrives while the first is handled."""

from __future__ import annotations

import os
import signal
import threading

from dispatcher.routes.celery.supervisor import once


def test_a_signal_arriving_while_the_action_runs_does_not_run_it_again() -> None:
    runs: list[int] = []
    stopped = threading.Event()

    def action() -> None:
        runs.append(len(runs))
        if len(runs) == 1:
            # A second signal, as Ctrl-C and the supervisor's SIGTERM close together: its
            # handler runs in this thread at the next instruction, before we go on.
            os.kill(os.getpid(), signal.SIGUSR2)
            for _ in range(100):
                pass
        stopped.set()

    handler = once(action)
    previous = signal.signal(signal.SIGUSR2, handler)
    try:
        handler(signal.SIGTERM, None)
    finally:
        signal.signal(signal.SIGUSR2, previous)
    assert runs == [0]
    assert stopped.is_set()


def test_later_signals_and_calls_are_ignored() -> None:
    runs: list[str] = []
    handler = once(lambda: runs.append("stop"))
    handler(signal.SIGINT, None)
    handler(signal.SIGTERM, None)
    handler(signal.SIGTERM, None)
    assert runs == ["stop"]
