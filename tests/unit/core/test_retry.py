"""``RetryPolicy``: exponential backoff with a cap, optional jitter, and ``decide``."""

from __future__ import annotations

import dataclasses
import random

import pytest

from dispatcher import RetryPolicy, TaskTimeout
from dispatcher.core.retry import RetryDecision


@pytest.mark.parametrize(
    ("base", "multiplier", "cap", "expected"),
    [
        (1.0, 2.0, 60.0, [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 60.0, 60.0]),
        (0.5, 3.0, 10.0, [0.5, 1.5, 4.5, 10.0, 10.0]),
        (2.0, 1.0, 5.0, [2.0, 2.0, 2.0]),
        (0.0, 2.0, 0.0, [0.0, 0.0]),
    ],
)
def test_backoff_without_jitter_is_exact(
    base: float, multiplier: float, cap: float, expected: list[float]
) -> None:
    policy = RetryPolicy(base_delay=base, multiplier=multiplier, max_delay=cap, jitter=False)
    got = [policy.backoff(n) for n in range(1, len(expected) + 1)]
    assert got == expected
    for n, delay in enumerate(got, start=1):
        assert delay == min(cap, base * multiplier ** (n - 1))


def test_backoff_without_jitter_ignores_rand() -> None:
    policy = RetryPolicy(base_delay=1.0, jitter=False)
    assert policy.backoff(3, rand=lambda: 0.0) == 4.0
    assert policy.backoff(3, rand=lambda: 0.99) == 4.0


@pytest.mark.parametrize(("r", "factor"), [(0.0, 0.5), (0.5, 0.75), (0.25, 0.625), (1.0, 1.0)])
def test_backoff_with_jitter_is_in_the_upper_half(r: float, factor: float) -> None:
    policy = RetryPolicy(base_delay=1.0, multiplier=2.0, max_delay=60.0, jitter=True)
    for attempt, full in [(1, 1.0), (2, 2.0), (4, 8.0), (10, 60.0)]:
        assert policy.backoff(attempt, rand=lambda r=r: r) == pytest.approx(full * factor)


def test_backoff_with_real_randomness_stays_in_bounds() -> None:
    policy = RetryPolicy(base_delay=0.5, multiplier=2.0, max_delay=30.0, jitter=True)
    rng = random.Random(1234)
    for attempt in range(1, 12):
        full = min(30.0, 0.5 * 2.0 ** (attempt - 1))
        for _ in range(50):
            delay = policy.backoff(attempt, rand=rng.random)
            assert full / 2 <= delay <= full


def test_jitter_is_on_by_default() -> None:
    assert RetryPolicy().jitter is True
    assert RetryPolicy().backoff(1, rand=lambda: 0.0) == 0.5


def test_decide_retries_until_max_attempts() -> None:
    policy = RetryPolicy(max_attempts=3, base_delay=0.1, jitter=False)
    error = ValueError("boom")
    assert policy.decide(1, error) == RetryDecision(True, 0.1, "retry_on")
    assert policy.decide(2, error) == RetryDecision(True, 0.2, "retry_on")
    assert policy.decide(3, error) == RetryDecision(False, 0.0, "attempts_exhausted")
    assert policy.decide(4, error).retry is False


def test_decide_honours_retry_on() -> None:
    policy = RetryPolicy(retry_on=(ConnectionError, TimeoutError), jitter=False)
    assert policy.decide(1, ConnectionResetError()).retry is True  # subclass matches
    assert policy.decide(1, TaskTimeout("t", 1.0)).retry is True  # TaskTimeout is a TimeoutError
    decision = policy.decide(1, ValueError())
    assert decision == RetryDecision(False, 0.0, "not_retryable")


def test_decide_honours_give_up_on() -> None:
    policy = RetryPolicy(give_up_on=(PermissionError,), jitter=False)
    assert policy.decide(1, PermissionError()) == RetryDecision(False, 0.0, "give_up_on")
    assert policy.decide(1, OSError()).retry is True


def test_give_up_on_wins_over_retry_on() -> None:
    policy = RetryPolicy(retry_on=(LookupError,), give_up_on=(KeyError,), jitter=False)
    assert policy.decide(1, KeyError("k")).reason == "give_up_on"
    assert policy.decide(1, IndexError()).retry is True
    both = RetryPolicy(retry_on=(ValueError,), give_up_on=(ValueError,))
    assert both.decide(1, ValueError()).reason == "give_up_on"
    # give_up_on is checked first, even for an error retry_on would not retry anyway
    unrelated = RetryPolicy(retry_on=(ValueError,), give_up_on=(KeyError,))
    assert unrelated.decide(1, KeyError()) == RetryDecision(False, 0.0, "give_up_on")


def test_give_up_on_wins_even_on_the_last_attempt() -> None:
    policy = RetryPolicy(max_attempts=2, give_up_on=(KeyError,))
    assert policy.decide(2, KeyError()).reason == "give_up_on"


def test_decide_with_jitter_uses_backoff_bounds() -> None:
    policy = RetryPolicy(max_attempts=5, base_delay=1.0, jitter=True)
    for attempt in range(1, 5):
        decision = policy.decide(attempt, RuntimeError())
        full = 2.0 ** (attempt - 1)
        assert decision.retry
        assert full / 2 <= decision.delay <= full


def test_exception_types_may_be_given_as_a_class_or_list() -> None:
    single = RetryPolicy(retry_on=ValueError, give_up_on=[KeyError, IndexError])  # type: ignore[arg-type]
    assert single.retry_on == (ValueError,)
    assert single.give_up_on == (KeyError, IndexError)


def test_never_makes_exactly_one_attempt() -> None:
    never = RetryPolicy.never()
    assert never.max_attempts == 1
    assert never.decide(1, Exception("x")) == RetryDecision(False, 0.0, "attempts_exhausted")
    assert never.describe()["max_attempts"] == 1


def test_defaults() -> None:
    policy = RetryPolicy()
    assert (policy.max_attempts, policy.base_delay, policy.max_delay) == (3, 1.0, 60.0)
    assert (policy.multiplier, policy.retry_on, policy.give_up_on) == (2.0, (Exception,), ())


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"max_attempts": 0}, ValueError),
        ({"max_attempts": -1}, ValueError),
        ({"max_attempts": 1.5}, TypeError),
        ({"max_attempts": True}, TypeError),
        ({"max_attempts": "3"}, TypeError),
        ({"base_delay": -1.0}, ValueError),
        ({"max_delay": -1.0, "base_delay": 0.0}, ValueError),
        ({"base_delay": 10.0, "max_delay": 5.0}, ValueError),
        ({"multiplier": 0.5}, ValueError),
        ({"retry_on": (int,)}, TypeError),
        ({"retry_on": ("ValueError",)}, TypeError),
        ({"give_up_on": (ValueError, 3)}, TypeError),
    ],
)
def test_invalid_constructions_raise(kwargs: dict[str, object], error: type[Exception]) -> None:
    with pytest.raises(error):
        RetryPolicy(**kwargs)  # type: ignore[arg-type]


def test_policy_is_immutable_and_comparable() -> None:
    policy = RetryPolicy(max_attempts=2)
    with pytest.raises(dataclasses.FrozenInstanceError):
        policy.max_attempts = 5  # type: ignore[misc]
    assert policy == RetryPolicy(max_attempts=2)
    assert hash(policy) == hash(RetryPolicy(max_attempts=2))


def test_describe_is_json_friendly() -> None:
    policy = RetryPolicy(max_attempts=4, retry_on=(OSError,), give_up_on=(PermissionError,))
    assert policy.describe() == {
        "max_attempts": 4,
        "base_delay": 1.0,
        "max_delay": 60.0,
        "multiplier": 2.0,
        "jitter": True,
        "retry_on": ["OSError"],
        "give_up_on": ["PermissionError"],
    }
