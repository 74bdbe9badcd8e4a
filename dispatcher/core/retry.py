"""The one retry policy: whether a failed attempt is retried, and after how long.

Both routes ask ``RetryPolicy.decide`` and only carry out its answer (a timer on the
inline route, a re-publish with a countdown on the Celery route), so the same task
makes the same attempts with the same delays wherever it runs.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True, slots=True)
class RetryDecision:
    """What to do after a failed attempt."""

    retry: bool
    delay: float
    reason: str


def _exception_types(value: Any, what: str) -> tuple[type[BaseException], ...]:
    items = value if isinstance(value, tuple | list) else (value,)
    for item in items:
        if not (isinstance(item, type) and issubclass(item, BaseException)):
            raise TypeError(f"RetryPolicy.{what} must contain exception classes, got {item!r}")
    return tuple(items)


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Exponential backoff with a cap and optional jitter.

    ``max_attempts`` counts the first run: 3 means one run and up to two retries.
    The delay before attempt ``n + 1`` is ``min(max_delay, base_delay * multiplier ** (n - 1))``;
    with ``jitter`` it is drawn uniformly from the upper half of that value, which
    spreads a thundering herd without ever retrying sooner than half the backoff.
    An error is retried when it matches ``retry_on`` and not ``give_up_on``.
    """

    max_attempts: int = 3
    base_delay: float = 1.0
    max_delay: float = 60.0
    multiplier: float = 2.0
    jitter: bool = True
    retry_on: tuple[type[BaseException], ...] = (Exception,)
    give_up_on: tuple[type[BaseException], ...] = field(default=())

    def __post_init__(self) -> None:
        if isinstance(self.max_attempts, bool) or not isinstance(self.max_attempts, int):
            raise TypeError("RetryPolicy.max_attempts must be an int")
        if self.max_attempts < 1:
            raise ValueError("RetryPolicy.max_attempts must be >= 1")
        if self.base_delay < 0 or self.max_delay < 0:
            raise ValueError("RetryPolicy delays must be >= 0")
        if self.max_delay < self.base_delay:
            raise ValueError("RetryPolicy.max_delay must be >= base_delay")
        if self.multiplier < 1:
            raise ValueError("RetryPolicy.multiplier must be >= 1")
        object.__setattr__(self, "retry_on", _exception_types(self.retry_on, "retry_on"))
        object.__setattr__(self, "give_up_on", _exception_types(self.give_up_on, "give_up_on"))

    @classmethod
    def never(cls) -> RetryPolicy:
        """One attempt, no retries: the default for tasks without ``retry=``."""
        return cls(max_attempts=1, base_delay=0.0, max_delay=0.0, jitter=False)

    def backoff(self, attempt: int, rand: Callable[[], float] = random.random) -> float:
        """Seconds to wait after failed attempt number ``attempt`` (1-based)."""
        delay = min(self.max_delay, self.base_delay * self.multiplier ** max(attempt - 1, 0))
        if self.jitter:
            delay = delay / 2 + rand() * delay / 2
        return delay

    def decide(self, attempt: int, error: BaseException) -> RetryDecision:
        """Decide after failed attempt ``attempt`` with ``error``."""
        if isinstance(error, self.give_up_on):
            return RetryDecision(False, 0.0, "give_up_on")
        if not isinstance(error, self.retry_on):
            return RetryDecision(False, 0.0, "not_retryable")
        if attempt >= self.max_attempts:
            return RetryDecision(False, 0.0, "attempts_exhausted")
        return RetryDecision(True, self.backoff(attempt), "retry_on")

    def describe(self) -> dict[str, Any]:
        """A JSON-friendly summary, for ``python -m dispatcher routes`` and the API."""
        return {
            "max_attempts": self.max_attempts,
            "base_delay": self.base_delay,
            "max_delay": self.max_delay,
            "multiplier": self.multiplier,
            "jitter": self.jitter,
            "retry_on": [t.__name__ for t in self.retry_on],
            "give_up_on": [t.__name__ for t in self.give_up_on],
        }
