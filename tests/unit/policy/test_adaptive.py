"""Adaptive routing (``weight="auto"``) and spill-over, without a broker.

The hysteresis is a pure function (``next_route``) over the sliding window; the shared
state in Redis and the real worker are covered by tests/integration/store/test_adaptive.py.
"""

from __future__ import annotations

import random
import threading
from collections import deque
from collections.abc import Callable, Iterable
from typing import Any

import pytest

from dispatcher import DispatcherSettings, Task, TaskDefinitionError, task
from dispatcher.core.job import Job
from dispatcher.core.spec import CallOptions, RouteName, TaskSpec
from dispatcher.ops.routes_table import format_table
from dispatcher.policy.adaptive import MIN_SAMPLES, AdaptiveState, next_route, p95
from dispatcher.policy.routing import decide_route
from dispatcher.routes.inline.route import InlinePlan, InlineRoute
from dispatcher.runtime.container import Runtime, current
from tests.unit.helpers import unit_settings

MAX = 1.0
FAKE_BROKER = "redis://127.0.0.1:1/0"  # never contacted: the routes are faked below


def _noop() -> None: ...


def auto_spec(**fields: Any) -> TaskSpec:
    return TaskSpec(name="app.auto", fn=_noop, adaptive=True, **fields)


# -- p95 and the hysteresis ---------------------------------------------------------------


def test_p95_interpolates_between_ranks() -> None:
    assert p95([]) is None
    assert p95([0.2]) == 0.2
    assert p95([float(i) for i in range(1, 21)]) == pytest.approx(19.05)
    assert p95([0.0] * 19 + [1.0]) == pytest.approx(0.05)  # one outlier in 20 hardly counts


def test_no_move_before_the_minimum_number_of_samples() -> None:
    assert next_route("inline", [5.0] * (MIN_SAMPLES - 1), MAX) is None
    assert next_route("inline", [5.0] * MIN_SAMPLES, MAX) == ("celery", "p95 5s > 1s")


def test_moves_up_above_the_threshold_and_back_only_below_half_of_it() -> None:
    assert next_route("inline", [1.01] * 10, MAX) == ("celery", "p95 1.01s > 1s")
    assert next_route("inline", [1.0] * 10, MAX) is None  # not above
    assert next_route("celery", [0.9] * 10, MAX) is None  # fast enough to stay, not to return
    assert next_route("celery", [0.51] * 10, MAX) is None
    assert next_route("celery", [0.49] * 10, MAX) == ("inline", "p95 0.49s < 0.5s")
    assert next_route("inline", [0.1] * 10, MAX) is None
    assert next_route("celery", [3.0] * 10, MAX) is None


def simulate(durations: Iterable[float], window: int = 20) -> list[RouteName]:
    """The route after each run, as the router would keep it over a sliding window."""
    samples: deque[float] = deque(maxlen=window)
    route: RouteName = "inline"
    history = []
    for duration in durations:
        samples.append(duration)
        move = next_route(route, list(samples), MAX)
        if move is not None:
            route = move[0]
        history.append(route)
    return history


def changes(history: list[RouteName]) -> list[RouteName]:
    return [route for i, route in enumerate(history) if i == 0 or history[i - 1] != route]


def test_fast_slow_fast_changes_route_once_each_way() -> None:
    rng = random.Random(5)
    fast = [rng.uniform(0.01, 0.2) for _ in range(60)]
    slow = [rng.uniform(1.5, 3.0) for _ in range(60)]
    history = simulate(fast + slow + fast)
    assert changes(history) == ["inline", "celery", "inline"]
    assert history[59] == "inline" and history[119] == "celery" and history[-1] == "inline"


def test_no_flapping_while_run_times_hover_around_the_threshold() -> None:
    rng = random.Random(7)
    hovering = [MAX * rng.uniform(0.7, 1.3) for _ in range(2000)]
    assert changes(simulate(hovering)) == ["inline", "celery"]  # up once, never back
    below = [MAX * rng.uniform(0.55, 0.99) for _ in range(2000)]
    assert changes(simulate([5.0] * 20 + below)) == ["inline", "celery"]


def test_a_single_outlier_moves_nothing() -> None:
    assert set(simulate([0.01] * 30 + [10.0] + [0.01] * 30)) == {"inline"}


# -- the decorator ------------------------------------------------------------------------


def test_weight_auto_declares_an_adaptive_task() -> None:
    @task(name="app.resize", weight="auto")
    def resize(path: str) -> None: ...

    assert resize.spec.adaptive is True
    assert resize.spec.weight == 1  # what DISPATCH_ROUTES weight ranges see
    assert "weight=auto" in repr(resize)


@pytest.mark.parametrize("weight", ["heavy", "AUTO", 0, True, 2.5])
def test_other_weights_are_refused(weight: object) -> None:
    with pytest.raises(TaskDefinitionError, match='int >= 1 or "auto"'):
        task(name="app.bad", weight=weight)  # type: ignore[call-overload]


# -- precedence ---------------------------------------------------------------------------


def with_broker(**fields: Any) -> DispatcherSettings:
    return unit_settings(broker_url=FAKE_BROKER, **fields)


def test_auto_task_starts_inline_and_follows_its_adaptive_route() -> None:
    settings = with_broker()
    first = decide_route(auto_spec(), CallOptions(), settings)
    assert (first.route, first.reason) == ("inline", "weight auto: starts inline")
    moved = decide_route(auto_spec(), CallOptions(), settings, ("celery", "p95 2s > 1s"))
    assert (moved.route, moved.queue, moved.reason) == (
        "celery", "celery", "weight auto: p95 2s > 1s"
    )


def test_auto_task_stays_inline_without_a_broker() -> None:
    decision = decide_route(auto_spec(), CallOptions(), unit_settings(),
                            ("celery", "p95 2s > 1s"))
    assert (decision.route, decision.reason) == ("inline", "weight auto, no broker")
    assert current().adaptive.auto_route(auto_spec()) is None  # the runtime: unit_settings()


@pytest.mark.parametrize(
    ("options", "fields", "spec_fields", "route", "reason"),
    [
        (CallOptions(route="inline"), {}, {}, "inline", "call option"),
        (CallOptions(), {"force_route": "inline"}, {}, "inline", "DISPATCH_FORCE_ROUTE"),
        (CallOptions(), {"routes": [{"match": "app.*", "route": "inline"}]}, {}, "inline",
         "rule 'app.*'"),
        (CallOptions(), {}, {"route": "inline"}, "inline", "decorator pin"),
    ],
)
def test_everything_above_step_5_wins_over_the_adaptive_route(
    options: CallOptions, fields: dict[str, Any], spec_fields: dict[str, Any], route: str,
    reason: str,
) -> None:
    decision = decide_route(auto_spec(**spec_fields), options, with_broker(**fields),
                            ("celery", "p95 2s > 1s"))
    assert (decision.route, decision.reason) == (route, reason)


def test_non_auto_tasks_ignore_an_adaptive_route() -> None:
    spec = TaskSpec(name="app.light", fn=_noop, weight=1)
    decision = decide_route(spec, CallOptions(), with_broker(), ("celery", "p95 2s > 1s"))
    assert decision.reason == "weight 1 <= 3"


# -- spill-over ---------------------------------------------------------------------------


class FakeExecutor:
    def __init__(self, waiting: int) -> None:
        self._waiting = waiting

    def waiting(self) -> int:
        return self._waiting

    def running(self) -> int:  # read by the metrics' scrape
        return 0

    def outstanding(self) -> int:
        return self._waiting


class FakeCeleryRoute:
    def __init__(self) -> None:
        self.jobs: list[tuple[Job, str | None]] = []

    def dispatch(self, job: Job, countdown: float | None, *, outage: str | None = None,
                 reason: str | None = None) -> str:
        self.jobs.append((job, reason))
        return "celery"

    def dispatch_many(self, jobs: list[Job], countdown: float | None, *,
                      outage: str | None = None, reason: str | None = None) -> list[str]:
        self.jobs += [(job, reason) for job in jobs]
        return ["celery"] * len(jobs)

    def spill(self, jobs: list[Job], countdown: float | None, *,
              outage: str | None = None) -> None:
        self.jobs += [(job, "spill_over") for job in jobs]


_real_inline_dispatch = InlineRoute.dispatch
_real_plan_dispatch = InlinePlan.dispatch


def fake_inline(monkeypatch: pytest.MonkeyPatch, waiting: int) -> list[Job]:
    """Inline routes (this runtime's and any later one's) see a fake executor holding
    ``waiting`` jobs; the jobs the task's general path dispatches inline are collected
    instead of run (an inline plan's own dispatches still go the real way, into the
    request's batch)."""
    inline: list[Job] = []
    executor = FakeExecutor(waiting)
    through_plan = threading.local()
    monkeypatch.setattr(InlineRoute, "current_executor", lambda self: executor)
    monkeypatch.setattr(InlineRoute, "waiting", lambda self: executor.waiting())

    def plan_dispatch(self: InlinePlan, payload: dict[str, Any]) -> Job | None:
        through_plan.active = True
        try:
            return _real_plan_dispatch(self, payload)
        finally:
            through_plan.active = False

    def dispatch(self: InlineRoute, job: Job, countdown: float | None,
                 reason: str | None = None) -> None:
        if getattr(through_plan, "active", False):
            _real_inline_dispatch(self, job, countdown, reason)
        else:
            inline.append(job)

    monkeypatch.setattr(InlinePlan, "dispatch", plan_dispatch)
    monkeypatch.setattr(InlineRoute, "dispatch", dispatch)
    return inline


@pytest.fixture
def full_executor(
    monkeypatch: pytest.MonkeyPatch, use_settings: Callable[..., DispatcherSettings]
) -> Callable[[int], tuple[FakeCeleryRoute, list[Job]]]:
    """``full_executor(waiting)``: a broker, an executor with that many jobs waiting
    (``DISPATCH_INLINE_MAX_PENDING=5``), fake Celery and inline routes."""

    def _make(waiting: int) -> tuple[FakeCeleryRoute, list[Job]]:
        use_settings(broker_url=FAKE_BROKER, inline_max_pending=5)
        celery = FakeCeleryRoute()
        inline = fake_inline(monkeypatch, waiting)
        monkeypatch.setattr(Runtime, "celery", property(lambda self: celery))
        return celery, inline

    return _make


@pytest.fixture
def light() -> Task[[int], int]:
    """A light task, registered for one test (the unit conftest unregisters it)."""

    @task(name="app.light", weight=1)
    def light(n: int) -> int:
        return n

    return light


def spilled(metric_route: str = "celery") -> float:
    from prometheus_client import REGISTRY

    value = REGISTRY.get_sample_value(
        "dispatch_route_decisions_total",
        {"task": "app.light", "route": metric_route, "reason": "spill_over"},
    )
    return value or 0.0


def test_below_max_pending_jobs_queue_inline(
    full_executor: Any, light: Task[[int], int]
) -> None:
    celery, inline = full_executor(4)
    handle = light.dispatch(1)
    assert handle.route == "inline" and len(inline) == 1 and not celery.jobs


def test_at_max_pending_unpinned_jobs_spill_over_to_celery(
    full_executor: Any, light: Task[[int], int]
) -> None:
    celery, inline = full_executor(5)
    before = spilled()
    handle = light.dispatch(1)
    assert (handle.route, handle.queue) == ("celery", "celery")
    assert [reason for _, reason in celery.jobs] == ["spill_over"]
    assert not inline
    assert spilled() == before + 1


def test_pinned_jobs_never_spill_over(full_executor: Any, light: Task[[int], int],
                                      use_settings: Callable[..., DispatcherSettings]) -> None:
    celery, inline = full_executor(500)
    assert light.options(route="inline").dispatch(1).route == "inline"

    @task(name="app.pinned", route="inline")
    def pinned(n: int) -> int:
        return n

    assert pinned.dispatch(1).route == "inline"
    use_settings(broker_url=FAKE_BROKER, inline_max_pending=5, force_route="inline")
    assert light.dispatch(1).route == "inline"
    assert len(inline) == 3 and not celery.jobs


def test_no_spill_over_without_a_broker(monkeypatch: pytest.MonkeyPatch,
                                        light: Task[[int], int]) -> None:
    fake_inline(monkeypatch, 10_000)
    assert light.dispatch(1).route == "inline"


def test_dispatch_many_fills_the_room_left_and_spills_the_rest(
    full_executor: Any, light: Task[[int], int]
) -> None:
    celery, inline = full_executor(3)
    handles = light.dispatch_many([(i,) for i in range(6)])
    assert [h.route for h in handles] == ["inline"] * 2 + ["celery"] * 4
    assert [job.payload["n"] for job in inline] == [0, 1]
    assert [(job.payload["n"], reason) for job, reason in celery.jobs] == [
        (n, "spill_over") for n in range(2, 6)
    ]


# -- the routes table ---------------------------------------------------------------------


def test_routes_table_shows_the_adaptive_state() -> None:
    settings = with_broker(inline_max_seconds=0.25)
    state = AdaptiveState("celery", "p95 0.31s > 0.25s", 1_700_000_000.0, 0.31, 20)
    row = {
        "task": "app.auto", "route": "celery", "reason": "weight auto: p95 0.31s > 0.25s",
        "queue": "celery", "priority": 5, "weight": "auto", "timeout": None, "async": False,
        "retry": {"max_attempts": 1}, "adaptive": state.describe(settings),
    }
    table = format_table([row])
    assert "ADAPTIVE" in table.splitlines()[0]
    assert "p95 0.31s of 20/20 runs, max 0.25s: celery since " in table


def test_inside_a_request_the_inline_plan_spills_over_like_the_general_path(
    full_executor: Any, light: Task[[int], int]
) -> None:
    from dispatcher.core.context import RequestBatch, batch_var

    batch = RequestBatch()
    token = batch_var.set(batch)
    try:
        _, general = full_executor(4)
        light.dispatch(1)  # the first dispatch takes the general path and makes the plan
        assert light._inline_plan is not None and [j.payload for j in general] == [{"n": 1}]
        handle = light.dispatch(2)  # through the plan: into the request's batch
        assert handle.route == "inline"
        assert [(j.id, j.payload, j.route) for j in batch.close()] == [
            (handle.id, {"n": 2}, "inline")]
        celery, _ = full_executor(5)  # now the executor is full
        before = spilled()
        assert light.dispatch(3).route == "celery"
        assert [(job.payload, reason) for job, reason in celery.jobs] == [
            ({"n": 3}, "spill_over")]
        assert spilled() == before + 1
    finally:
        batch_var.reset(token)
