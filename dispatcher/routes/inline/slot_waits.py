"""Inline chains waiting for a concurrency slot: each waits on a timer (the limiter's
recheck), and a slot given back by a job of this process wakes the one that has waited
longest at once, so a freed slot does not sit idle until a timer fires. (A slot freed
in another process wakes no inline job here: the timer covers that.)"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Callable

from ...core.limits import Admission
from .chain import Chain


class SlotWaits:
    """Chains parked per slot key; each one is started once, by whichever comes first:
    its timer or a wake-up."""

    def __init__(self, later: Callable[[float, Callable[[], None]], None],
                 start: Callable[[Chain], None]) -> None:
        #: ``later(delay, callback)``: call ``callback`` after ``delay`` seconds.
        self._later = later
        self._start = start
        self._lock = threading.Lock()
        self._parked: dict[str, dict[int, Chain]] = {}
        self._tokens = itertools.count()

    def defer(self, refused: Admission, chain: Chain) -> None:
        """Start ``chain`` when the limit that refused its first job says: a job waiting
        for a slot is parked (a wake-up may start it sooner), any other on a timer."""
        if refused.reason == "concurrency" and refused.slot is not None:
            self.park(refused.slot, chain, refused.wait)
        else:
            self._later(refused.wait, lambda: self._start(chain))

    def park(self, slot: str, chain: Chain, delay: float) -> None:
        """Start ``chain`` after ``delay`` seconds, or sooner if ``wake(slot)`` comes."""
        token = next(self._tokens)
        with self._lock:
            self._parked.setdefault(slot, {})[token] = chain
        self._later(delay, lambda: self._resume(slot, token))

    def wake(self, slot: str | None) -> None:
        """A slot of ``slot`` was given back: start the chain that waited longest."""
        if slot is None or slot not in self._parked:
            return
        with self._lock:
            waiting = self._parked.get(slot)
            token = next(iter(waiting), None) if waiting else None
        if token is not None:
            self._resume(slot, token)

    def waiting(self) -> int:
        return sum(len(chains) for chains in self._parked.values())

    def _resume(self, slot: str, token: int) -> None:
        with self._lock:
            waiting = self._parked.get(slot, {})
            chain = waiting.pop(token, None)
            if not waiting:
                self._parked.pop(slot, None)
        if chain is not None:  # not started already (by its timer or a wake-up)
            self._start(chain)
