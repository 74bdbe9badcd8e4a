"""Routing decisions are values: each carries the ``Cause`` code branches on; the
reason is display text only."""

from __future__ import annotations

from dispatcher import DispatcherSettings
from dispatcher.core.settings import RouteRule
from dispatcher.core.spec import CallOptions, TaskSpec
from dispatcher.policy.routing import (
    Cause,
    decide_route,
    handed_over_queue,
    pending_limit,
    spilled,
    spills,
)


def _noop() -> None: ...


def _settings(**fields: object) -> DispatcherSettings:
    return DispatcherSettings(_env_file=None, **fields)  # type: ignore[arg-type]


LIGHT = TaskSpec(name="t.light", fn=_noop, weight=1)
HEAVY = TaskSpec(name="t.heavy", fn=_noop, weight=8, queue="big")
PINNED = TaskSpec(name="t.pinned", fn=_noop, weight=8, route="inline")
AUTO = TaskSpec(name="t.auto", fn=_noop, adaptive=True)
BROKER = "redis://127.0.0.1:1/0"


def test_each_branch_names_its_cause() -> None:
    plain = _settings()
    assert decide_route(LIGHT, CallOptions(route="celery"), plain).cause is Cause.CALL_OPTION
    assert decide_route(LIGHT, CallOptions(), _settings(force_route="celery")).cause is \
        Cause.FORCED
    ruled = _settings(routes=[RouteRule(match="t.*", route="celery", queue="r")])
    decision = decide_route(LIGHT, CallOptions(), ruled)
    assert (decision.cause, decision.route, decision.queue) == (Cause.RULE, "celery", "r")
    assert decide_route(PINNED, CallOptions(), plain).cause is Cause.PIN
    assert decide_route(HEAVY, CallOptions(), plain).cause is Cause.WEIGHT
    assert decide_route(LIGHT, CallOptions(), plain).cause is Cause.WEIGHT
    moved = decide_route(AUTO, CallOptions(), _settings(broker_url=BROKER),
                         ("celery", "p95 2s > 1s"))
    assert (moved.cause, moved.route) == (Cause.ADAPTIVE, "celery")


def test_only_the_callers_inline_choice_is_pinned() -> None:
    plain = _settings()
    assert decide_route(LIGHT, CallOptions(route="inline"), plain).pinned_inline
    assert decide_route(PINNED, CallOptions(), plain).pinned_inline
    assert not decide_route(LIGHT, CallOptions(), _settings(force_route="inline")).pinned_inline
    assert not decide_route(LIGHT, CallOptions(), plain).pinned_inline


def test_spill_over_applies_to_policy_choices_with_a_broker_only() -> None:
    settings = _settings(broker_url=BROKER, inline_max_pending=10)
    by_weight = decide_route(LIGHT, CallOptions(), settings)
    assert spills(by_weight, settings)
    for pinned in (decide_route(LIGHT, CallOptions(route="inline"), settings),
                   decide_route(PINNED, CallOptions(), settings),
                   decide_route(LIGHT, CallOptions(), _settings(broker_url=BROKER,
                                                                force_route="inline"))):
        assert not spills(pinned, settings)
    assert not spills(by_weight, _settings())  # no broker
    overflow = spilled(by_weight, LIGHT, CallOptions(queue="q"), settings, 10)
    assert (overflow.route, overflow.cause, overflow.queue) == ("celery", Cause.SPILL_OVER, "q")
    assert overflow.reason == "spill-over: >= 10 inline jobs waiting"
    assert handed_over_queue(HEAVY, settings) == "big"


def test_the_pending_limit_weighs_the_mean_run_time() -> None:
    settings = _settings(broker_url=BROKER, inline_max_pending=10_000, inline_max_backlog=2.5,
                         inline_concurrency=4)
    # Untimed: 10 ms a job, so 2.5 s over 4 slots is 1,000 jobs (the old fixed limit).
    assert pending_limit(settings, None) == 1000
    assert pending_limit(settings, 0.1) == 100  # heavy jobs: a short backlog
    assert pending_limit(settings, 0.0002) == 10_000  # no-ops: up to the count limit
    assert pending_limit(settings, 60.0) == 1  # never below one
    assert pending_limit(_settings(inline_max_pending=7), 0.0) == 7
