"""Inline chains parked for a concurrency slot: a wake-up starts the one that waited
longest, its timer then finds it gone; a timer alone starts it too; never twice."""

from __future__ import annotations

from collections.abc import Callable

from dispatcher.core.limits import Admission
from dispatcher.routes.inline.chain import Chain
from dispatcher.routes.inline.slot_waits import SlotWaits


class Timers:
    """Timers run by hand (a stand-in for the executor's event loop)."""

    def __init__(self) -> None:
        self.pending: list[tuple[float, Callable[[], None]]] = []

    def later(self, delay: float, call: Callable[[], None]) -> None:
        self.pending.append((delay, call))

    def fire_all(self) -> None:
        pending, self.pending = self.pending, []
        for _, call in pending:
            call()


def _waits() -> tuple[SlotWaits, Timers, list[Chain]]:
    timers, started = Timers(), []
    return SlotWaits(timers.later, started.append), timers, started


def test_a_wake_up_starts_the_longest_waiting_chain_once() -> None:
    waits, timers, started = _waits()
    first, second = ("a", None), ("b", None)  # stand-ins: the waits never look inside
    waits.park("slot", first, 1.0)  # type: ignore[arg-type]
    waits.park("slot", second, 1.0)  # type: ignore[arg-type]
    waits.wake("other")  # another slot: nothing
    assert started == []
    waits.wake("slot")
    assert started == [first]
    assert waits.waiting() == 1
    timers.fire_all()  # the first's timer finds it started; the second's starts it
    assert started == [first, second]
    assert waits.waiting() == 0
    waits.wake("slot")  # nobody left
    assert started == [first, second]


def test_refusals_are_parked_per_reason() -> None:
    waits, timers, started = _waits()
    rate = Admission(False, 0.0, 0.5, "rate_limit")
    slot = Admission(False, 0.0, 1.0, "concurrency", "t\x1fkey")
    waits.defer(rate, ("rate", None))  # type: ignore[arg-type]
    waits.defer(slot, ("slot", None))  # type: ignore[arg-type]
    assert waits.waiting() == 1  # only the slot waiter is parked (a wake-up can start it)
    assert [delay for delay, _ in timers.pending] == [0.5, 1.0]
    waits.wake("t\x1fkey")
    assert started == [("slot", None)]
    timers.fire_all()
    assert started == [("slot", None), ("rate", None)]
