"""The routing decision: a pure function of (task spec, call options, settings).

First match wins:
1. the per-call ``.options(route=...)``;
2. ``DISPATCH_FORCE_ROUTE``;
3. the first ``DISPATCH_ROUTES`` rule matching name glob, priority and weight range;
4. the decorator's ``route=`` pin;
5. ``weight="auto"``: the task's current adaptive route (``auto``, kept by
   ``dispatcher.store.adaptive`` from measured run times; inline until it moves, and always
   inline without a broker); otherwise ``weight > DISPATCH_INLINE_MAX_WEIGHT`` goes to
   Celery, anything lighter stays inline.

The Celery queue is the call's ``queue``, else the matching rule's, else the
decorator's, else ``DISPATCH_DEFAULT_QUEUE``. Inline jobs have no queue.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from fnmatch import fnmatchcase

from ..core.settings import DispatcherSettings, RouteRule
from ..core.spec import CallOptions, RouteName, TaskSpec


class Cause(enum.Enum):
    """Why a dispatch went where it went. Code branches on this; ``reason`` is for people."""

    CALL_OPTION = "call option"
    FORCED = "forced"
    RULE = "rule"
    PIN = "pin"
    WEIGHT = "weight"
    ADAPTIVE = "adaptive"
    SPILL_OVER = "spill-over"
    #: The broker is down and the task's outage policy runs the job inline instead.
    OUTAGE = "outage"


#: The short word a policy move carries in its ``task.dispatched`` event and in the
#: ``dispatch_route_decisions`` metric (a label: a few fixed values only).
EVENT_REASON: dict[Cause, str] = {
    Cause.ADAPTIVE: "adaptive",
    Cause.SPILL_OVER: "spill_over",
    Cause.OUTAGE: "broker_outage",
}

#: Inline decisions the caller asked for: never moved to Celery (spill-over, hand-over).
PINNED_BY_CALLER = frozenset({Cause.CALL_OPTION, Cause.PIN})
#: Inline decisions that never spill over: the caller's, and ``DISPATCH_FORCE_ROUTE``
#: (which runs without a worker).
NEVER_SPILLED = frozenset({Cause.CALL_OPTION, Cause.PIN, Cause.FORCED})


@dataclass(frozen=True, slots=True)
class RouteDecision:
    route: RouteName
    queue: str | None
    priority: int
    cause: Cause
    #: Human-readable, for ``dispatcher routes``, ``GET /routes`` and logs only.
    reason: str

    @property
    def pinned_inline(self) -> bool:
        """Inline because the caller said so: never handed to Celery."""
        return self.route == "inline" and self.cause in PINNED_BY_CALLER


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
        route, cause, reason = options.route, Cause.CALL_OPTION, "call option"
    elif settings.force_route is not None:
        route, cause, reason = settings.force_route, Cause.FORCED, "DISPATCH_FORCE_ROUTE"
    elif rule is not None:
        route, cause, reason = rule.route, Cause.RULE, f"rule {rule.match!r}"
    elif spec.route is not None:
        route, cause, reason = spec.route, Cause.PIN, "decorator pin"
    elif spec.adaptive:
        cause = Cause.ADAPTIVE
        if settings.broker_url is None:
            route, reason = "inline", "weight auto, no broker"
        elif auto is None:
            route, reason = "inline", "weight auto: starts inline"
        else:
            route, reason = auto[0], f"weight auto: {auto[1]}"
    elif spec.weight > settings.inline_max_weight:
        route, cause = "celery", Cause.WEIGHT
        reason = f"weight {spec.weight} > {settings.inline_max_weight}"
    else:
        route, cause = "inline", Cause.WEIGHT
        reason = f"weight {spec.weight} <= {settings.inline_max_weight}"

    if route == "inline":
        return RouteDecision("inline", None, priority, cause, reason)
    return RouteDecision("celery", celery_queue(spec, options, settings, rule), priority,
                         cause, reason)


def celery_queue(spec: TaskSpec, options: CallOptions, settings: DispatcherSettings,
                 rule: RouteRule | None = None) -> str:
    """The Celery queue of a dispatch: the call's, the rule's, the decorator's, else the
    default queue."""
    return (
        options.queue
        or (rule.queue if rule is not None else None)
        or spec.queue
        or settings.default_queue
    )


#: What an inline job is taken to cost before this process has timed one (seconds).
UNTIMED_RUN = 0.01


def pending_limit(settings: DispatcherSettings, mean_run: float | None) -> int:
    """Inline jobs that may wait in one process before new ones spill over to Celery:
    ``DISPATCH_INLINE_MAX_PENDING``, or fewer once their work, at ``mean_run`` seconds
    each (the waiting jobs' mean, each at its task's measured mean: see
    ``Accepted.weighed_run``; ``UNTIMED_RUN`` while None) over the executor's
    slots, passes ``DISPATCH_INLINE_MAX_BACKLOG`` seconds. So a backlog of no-op jobs
    may be long (running one costs less than publishing it) and one of heavy jobs
    short (they would wait long here while a worker could run them)."""
    per_job = UNTIMED_RUN if mean_run is None else max(mean_run, 1e-6)
    by_time = int(settings.inline_max_backlog * settings.inline_concurrency / per_job)
    return max(1, min(settings.inline_max_pending, by_time))


def spills(decision: RouteDecision, settings: DispatcherSettings) -> bool:
    """Whether ``decision`` may spill over to Celery: inline by policy (not pinned or
    forced inline) and a broker configured."""
    return (decision.route == "inline" and decision.cause not in NEVER_SPILLED
            and settings.broker_url is not None)


def spill_queue(spec: TaskSpec, options: CallOptions, settings: DispatcherSettings) -> str:
    """The Celery queue a spilled-over dispatch of ``spec`` goes to."""
    queue = decide_route(spec, CallOptions(route="celery", queue=options.queue), settings).queue
    assert queue is not None  # a Celery decision always names its queue
    return queue


def spilled(decision: RouteDecision, spec: TaskSpec, options: CallOptions,
            settings: DispatcherSettings, limit: int) -> RouteDecision:
    """``decision`` sent to Celery because ``limit`` inline jobs are waiting already."""
    return RouteDecision(
        "celery", spill_queue(spec, options, settings), decision.priority,
        Cause.SPILL_OVER, f"spill-over: >= {limit} inline jobs waiting",
    )


def handed_over_queue(spec: TaskSpec, settings: DispatcherSettings) -> str:
    """The queue of an inline job handed over to Celery (shutdown, outage)."""
    queue = decide_route(spec, CallOptions(route="celery"), settings).queue
    assert queue is not None
    return queue
