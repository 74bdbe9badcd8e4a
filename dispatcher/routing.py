"""The routing decision: a pure function of (task spec, call options, settings).

First match wins:
1. the per-call ``.options(route=...)``;
2. ``DISPATCH_FORCE_ROUTE``;
3. the first ``DISPATCH_ROUTES`` rule matching name glob, priority and weight range;
4. the decorator's ``route=`` pin;
5. ``weight="auto"``: the task's current adaptive route (``auto``, kept by
   ``dispatcher.adaptive`` from measured run times; inline until it moves, and always
   inline without a broker); otherwise ``weight > DISPATCH_INLINE_MAX_WEIGHT`` goes to
   Celery, anything lighter stays inline.

The Celery queue is the call's ``queue``, else the matching rule's, else the
decorator's, else ``DISPATCH_DEFAULT_QUEUE``. Inline jobs have no queue.
"""

from __future__ import annotations

from dataclasses import dataclass
from fnmatch import fnmatchcase

from .settings import DispatcherSettings, RouteRule
from .spec import CallOptions, RouteName, TaskSpec


@dataclass(frozen=True, slots=True)
class RouteDecision:
    route: RouteName
    queue: str | None
    priority: int
    reason: str


def rule_matches(rule: RouteRule, spec: TaskSpec, priority: int) -> bool:
    if not fnmatchcase(spec.name, rule.match):
        return False
    if rule.priority is not None and priority not in rule.priority:
        return False
    if rule.min_weight is not None and spec.weight < rule.min_weight:
        return False
    return rule.max_weight is None or spec.weight <= rule.max_weight


def decide_route(
    spec: TaskSpec,
    options: CallOptions,
    settings: DispatcherSettings,
    auto: tuple[RouteName, str] | None = None,
) -> RouteDecision:
    """Where a dispatch of ``spec`` with ``options`` goes under ``settings``, and why.

    ``auto`` is the adaptive route of a ``weight="auto"`` task and its reason (``None``:
    not moved yet, so inline)."""
    priority = spec.priority if options.priority is None else options.priority
    rule = next((r for r in settings.routes if rule_matches(r, spec, priority)), None)

    route: RouteName
    if options.route is not None:
        route, reason = options.route, "call option"
    elif settings.force_route is not None:
        route, reason = settings.force_route, "DISPATCH_FORCE_ROUTE"
    elif rule is not None:
        route, reason = rule.route, f"rule {rule.match!r}"
    elif spec.route is not None:
        route, reason = spec.route, "decorator pin"
    elif spec.adaptive:
        if settings.broker_url is None:
            route, reason = "inline", "weight auto, no broker"
        elif auto is None:
            route, reason = "inline", "weight auto: starts inline"
        else:
            route, reason = auto[0], f"weight auto: {auto[1]}"
    elif spec.weight > settings.inline_max_weight:
        route, reason = "celery", f"weight {spec.weight} > {settings.inline_max_weight}"
    else:
        route, reason = "inline", f"weight {spec.weight} <= {settings.inline_max_weight}"

    if route == "inline":
        return RouteDecision("inline", None, priority, reason)
    queue = (
        options.queue
        or (rule.queue if rule is not None else None)
        or spec.queue
        or settings.default_queue
    )
    return RouteDecision("celery", queue, priority, reason)
