"""``decide_route``: a pure function of (spec, call options, settings).

Precedence: call option > DISPATCH_FORCE_ROUTE > first matching DISPATCH_ROUTES rule
> decorator pin > weight threshold. Queue: call > rule > decorator > default_queue;
inline decisions have no queue.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from pydantic import ValidationError

from dispatcher import DispatcherSettings, task
from dispatcher.core.settings import RouteRule
from dispatcher.core.spec import CallOptions, TaskSpec
from dispatcher.policy.routing import Cause, RouteDecision, decide_route, rule_matches
from tests.unit.helpers import unit_settings


def _noop() -> None: ...


def spec(name: str = "app.jobs.send", **fields: Any) -> TaskSpec:
    return TaskSpec(name=name, fn=_noop, **fields)


def settings(**fields: Any) -> DispatcherSettings:
    return unit_settings(**fields)


CELERY_RULE = {"match": "app.*", "route": "celery", "queue": "rule-q"}
INLINE_RULE = {"match": "app.*", "route": "inline"}


# -- the weight threshold (lowest level) --------------------------------------------------


@pytest.mark.parametrize(
    ("weight", "threshold", "route"),
    [(1, 3, "inline"), (3, 3, "inline"), (4, 3, "celery"), (9, 3, "celery"), (9, 9, "inline")],
)
def test_weight_above_inline_max_weight_goes_to_celery(
    weight: int, threshold: int, route: str
) -> None:
    decision = decide_route(
        spec(weight=weight), CallOptions(), settings(inline_max_weight=threshold)
    )
    assert decision.route == route
    relation = ">" if route == "celery" else "<="
    assert decision.reason == f"weight {weight} {relation} {threshold}"


def test_default_threshold_is_3() -> None:
    assert decide_route(spec(weight=3), CallOptions(), settings()).route == "inline"
    assert decide_route(spec(weight=4), CallOptions(), settings()).route == "celery"


# -- decorator pin > weight ---------------------------------------------------------------


def test_decorator_pin_beats_weight() -> None:
    light_pinned = decide_route(spec(weight=1, route="celery"), CallOptions(), settings())
    assert (light_pinned.route, light_pinned.reason) == ("celery", "decorator pin")
    heavy_pinned = decide_route(spec(weight=10, route="inline"), CallOptions(), settings())
    assert (heavy_pinned.route, heavy_pinned.reason) == ("inline", "decorator pin")


# -- rules > decorator pin ----------------------------------------------------------------


def test_rule_beats_decorator_pin() -> None:
    decision = decide_route(spec(route="inline"), CallOptions(), settings(routes=[CELERY_RULE]))
    assert decision == RouteDecision("celery", "rule-q", 5, Cause.RULE, "rule 'app.*'")
    decision = decide_route(
        spec(route="celery", weight=10), CallOptions(), settings(routes=[INLINE_RULE])
    )
    assert (decision.route, decision.queue, decision.reason) == ("inline", None, "rule 'app.*'")


def test_rule_glob_match() -> None:
    rules = settings(routes=[{"match": "reports.*", "route": "celery"}])
    assert decide_route(spec("reports.daily"), CallOptions(), rules).route == "celery"
    assert decide_route(spec("reports.sub.weekly"), CallOptions(), rules).route == "celery"
    assert decide_route(spec("report.daily"), CallOptions(), rules).route == "inline"
    assert decide_route(spec("Reports.daily"), CallOptions(), rules).route == "inline"  # case
    assert decide_route(spec("x.reports.daily"), CallOptions(), rules).route == "inline"
    one_char = settings(routes=[{"match": "job?", "route": "celery"}])
    assert decide_route(spec("job1"), CallOptions(), one_char).route == "celery"
    assert decide_route(spec("job12"), CallOptions(), one_char).route == "inline"


def test_rule_match_defaults_to_everything() -> None:
    rules = settings(routes=[{"route": "celery"}])
    assert decide_route(spec("anything.at.all"), CallOptions(), rules).route == "celery"


def test_rule_priority_list() -> None:
    rules = settings(routes=[{"match": "*", "priority": ["high", 9], "route": "celery"}])
    assert rules.routes[0].priority == (8, 9)
    assert decide_route(spec(priority=8), CallOptions(), rules).route == "celery"
    assert decide_route(spec(priority=9), CallOptions(), rules).route == "celery"
    assert decide_route(spec(priority=5), CallOptions(), rules).route == "inline"
    assert decide_route(spec(priority=7), CallOptions(), rules).route == "inline"


def test_rule_priority_uses_the_call_priority() -> None:
    rules = settings(routes=[{"priority": "high", "route": "celery"}])
    normal = spec(priority=5)
    assert decide_route(normal, CallOptions(), rules).route == "inline"
    raised = decide_route(normal, CallOptions(priority=8), rules)
    assert (raised.route, raised.priority) == ("celery", 8)
    urgent = spec(priority=8)
    lowered = decide_route(urgent, CallOptions(priority=2), rules)
    assert (lowered.route, lowered.priority) == ("inline", 2)


@pytest.mark.parametrize(
    ("weight", "expected"),
    [(1, "inline"), (2, "celery"), (3, "celery"), (4, "celery"), (5, "inline")],
)
def test_rule_weight_range_is_inclusive(weight: int, expected: str) -> None:
    rules = settings(
        inline_max_weight=9,
        routes=[{"match": "*", "min_weight": 2, "max_weight": 4, "route": "celery"}],
    )
    assert decide_route(spec(weight=weight), CallOptions(), rules).route == expected


def test_rule_min_weight_alone_and_max_weight_alone() -> None:
    heavy = settings(inline_max_weight=9, routes=[{"min_weight": 5, "route": "celery"}])
    assert decide_route(spec(weight=5), CallOptions(), heavy).route == "celery"
    assert decide_route(spec(weight=4), CallOptions(), heavy).route == "inline"
    light = settings(routes=[{"max_weight": 5, "route": "inline"}])
    assert decide_route(spec(weight=5), CallOptions(), light).route == "inline"
    assert decide_route(spec(weight=6), CallOptions(), light).route == "celery"  # by weight


def test_first_matching_rule_wins() -> None:
    rules = settings(
        routes=[
            {"match": "other.*", "route": "inline"},  # does not match
            {"match": "app.jobs.*", "route": "celery", "queue": "first"},
            {"match": "app.*", "route": "celery", "queue": "second"},
            {"match": "*", "route": "inline"},
        ]
    )
    decision = decide_route(spec("app.jobs.send"), CallOptions(), rules)
    assert (decision.route, decision.queue, decision.reason) == (
        "celery",
        "first",
        "rule 'app.jobs.*'",
    )
    decision = decide_route(spec("app.mail.send"), CallOptions(), rules)
    assert (decision.route, decision.queue) == ("celery", "second")
    decision = decide_route(spec("zzz", weight=9), CallOptions(), rules)
    assert (decision.route, decision.reason) == ("inline", "rule '*'")


def test_rule_matches_helper() -> None:
    rule = RouteRule(match="a.*", priority=("low",), min_weight=2, route="celery")
    assert rule_matches(rule, spec("a.b", weight=2), 2)
    assert not rule_matches(rule, spec("a.b", weight=2), 5)
    assert not rule_matches(rule, spec("a.b", weight=1), 2)
    assert not rule_matches(rule, spec("b.b", weight=2), 2)


# -- force_route > rules ------------------------------------------------------------------


def test_force_route_beats_rules_pin_and_weight() -> None:
    forced_inline = settings(force_route="inline", routes=[CELERY_RULE])
    decision = decide_route(spec(weight=10, route="celery"), CallOptions(), forced_inline)
    assert decision == RouteDecision("inline", None, 5, Cause.FORCED, "DISPATCH_FORCE_ROUTE")
    forced_celery = settings(force_route="celery", routes=[INLINE_RULE])
    decision = decide_route(spec(weight=1, route="inline"), CallOptions(), forced_celery)
    assert (decision.route, decision.reason) == ("celery", "DISPATCH_FORCE_ROUTE")


# -- call option > force_route ------------------------------------------------------------


def test_call_option_beats_everything() -> None:
    everything_celery = settings(force_route="celery", routes=[CELERY_RULE])
    decision = decide_route(
        spec(weight=10, route="celery"), CallOptions(route="inline"), everything_celery
    )
    assert decision == RouteDecision("inline", None, 5, Cause.CALL_OPTION, "call option")
    everything_inline = settings(force_route="inline", routes=[INLINE_RULE])
    decision = decide_route(
        spec(weight=1, route="inline"), CallOptions(route="celery"), everything_inline
    )
    assert (decision.route, decision.reason) == ("celery", "call option")


# -- queues -------------------------------------------------------------------------------


def test_queue_precedence_call_then_rule_then_decorator_then_default() -> None:
    celery_spec = spec(route="celery", queue="deco-q")
    with_rule = settings(routes=[CELERY_RULE], default_queue="default-q")
    assert decide_route(celery_spec, CallOptions(queue="call-q"), with_rule).queue == "call-q"
    assert decide_route(celery_spec, CallOptions(), with_rule).queue == "rule-q"
    rule_without_queue = settings(
        routes=[{"match": "app.*", "route": "celery"}], default_queue="default-q"
    )
    assert decide_route(celery_spec, CallOptions(), rule_without_queue).queue == "deco-q"
    no_rule = settings(default_queue="default-q")
    assert decide_route(celery_spec, CallOptions(), no_rule).queue == "deco-q"
    assert decide_route(spec(route="celery"), CallOptions(), no_rule).queue == "default-q"
    assert decide_route(spec(route="celery"), CallOptions(), settings()).queue == "celery"


def test_rule_queue_applies_only_when_the_rule_matches() -> None:
    rules = settings(routes=[{"match": "other.*", "route": "celery", "queue": "rule-q"}])
    assert decide_route(spec(weight=9), CallOptions(), rules).queue == "celery"


def test_a_matching_rule_queue_is_used_even_when_the_route_came_from_elsewhere() -> None:
    # The route comes from the call option, the queue still from the matching rule.
    rules = settings(routes=[{"match": "app.*", "route": "inline", "queue": "rule-q"}])
    decision = decide_route(spec(), CallOptions(route="celery"), rules)
    assert (decision.route, decision.queue) == ("celery", "rule-q")


def test_inline_decisions_have_no_queue() -> None:
    decision = decide_route(
        spec(queue="deco-q"),
        CallOptions(route="inline", queue="call-q"),
        settings(routes=[{"match": "*", "route": "celery", "queue": "rule-q"}]),
    )
    assert decision.route == "inline"
    assert decision.queue is None
    assert decide_route(spec(queue="deco-q"), CallOptions(), settings()).queue is None


def test_decision_priority_is_call_option_else_spec() -> None:
    assert decide_route(spec(priority=2), CallOptions(), settings()).priority == 2
    assert decide_route(spec(priority=2), CallOptions(priority=9), settings()).priority == 9
    assert decide_route(spec(priority=2), CallOptions(priority=0), settings()).priority == 0


def test_decide_route_is_pure() -> None:
    s, o, settings_ = spec(weight=5, queue="q"), CallOptions(priority=1), settings()
    first = decide_route(s, o, settings_)
    assert decide_route(s, o, settings_) == first
    assert (s.weight, s.queue, o.priority, settings_.inline_max_weight) == (5, "q", 1, 3)


def test_task_route_for_uses_its_call_options(use_settings: Any) -> None:
    use_settings(routes=[{"match": "unit.routing.*", "priority": [8], "route": "celery"}])

    @task(name="unit.routing.route_for")
    def f() -> None: ...

    assert f.route_for().route == "inline"
    urgent = f.options(priority="high")
    assert (urgent.route_for().route, urgent.route_for().queue) == ("celery", "celery")
    assert f.options(route="celery", queue="x").route_for().queue == "x"
    assert f.route_for(settings(force_route="celery")).route == "celery"


# -- DISPATCH_ROUTES parsing --------------------------------------------------------------


def test_routes_parsed_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    rules = [
        {"match": "reports.*", "min_weight": 5, "route": "celery", "queue": "heavy"},
        {"match": "mail.*", "priority": ["low", "normal"], "route": "inline"},
        {"priority": "high", "route": "celery"},
        {"match": "x", "priority": 7, "max_weight": 2, "route": "inline"},
    ]
    monkeypatch.setenv("DISPATCH_ROUTES", json.dumps(rules))
    parsed = DispatcherSettings(_env_file=None).routes  # type: ignore[call-arg]
    assert parsed == [
        RouteRule(match="reports.*", min_weight=5, route="celery", queue="heavy"),
        RouteRule(match="mail.*", priority=(2, 5), route="inline"),
        RouteRule(match="*", priority=(8,), route="celery"),
        RouteRule(match="x", priority=(7,), max_weight=2, route="inline"),
    ]
    assert parsed[1].priority == (2, 5)
    assert parsed[2].priority == (8,)
    assert parsed[0].priority is None


@pytest.mark.parametrize(
    "rule",
    [
        {"match": "a.*", "route": "celery", "colour": "red"},  # unknown key
        {"match": "a.*", "route": "somewhere"},  # bad route
        {"match": "a.*"},  # route is required
        {"route": "celery", "priority": "urgent"},  # bad priority name
        {"route": "celery", "priority": [1, 10]},  # out of range
        {"route": "celery", "min_weight": 0},
        {"route": "celery", "queue": ""},
    ],
)
def test_invalid_rule_in_the_environment_is_refused(
    monkeypatch: pytest.MonkeyPatch, rule: dict[str, Any]
) -> None:
    monkeypatch.setenv("DISPATCH_ROUTES", json.dumps([rule]))
    with pytest.raises(ValidationError):
        DispatcherSettings(_env_file=None)  # type: ignore[call-arg]
    with pytest.raises(ValidationError):
        RouteRule(**rule)


def test_route_rules_are_frozen() -> None:
    rule = RouteRule(route="celery")
    with pytest.raises(ValidationError):
        rule.route = "inline"  # type: ignore[misc]
