"""``@task``: what it keeps of the function, what it adds, and what it refuses."""

from __future__ import annotations

import asyncio
import inspect
import re

import pytest

from dispatcher import RetryPolicy, Task, TaskDefinitionError, task
from dispatcher.core.errors import DispatchError, TaskValidationError
from dispatcher.core.registry import get_task
from dispatcher.core.spec import PRIORITY_NAMES


@task
def bare_add(a: int, b: int = 2) -> int:
    """Add two numbers."""
    return a + b


@task
async def bare_async_add(a: int, b: int = 2) -> int:
    """Add two numbers, asynchronously."""
    await asyncio.sleep(0)
    return a + b


@task(name="unit.decorator.called", weight=2, priority="high", queue="q1", timeout=5)
def called_add(a: int, *, b: int = 2) -> int:
    """Add with options."""
    return a + b


@task(name="unit.decorator.called_async", retry=RetryPolicy(max_attempts=2))
async def called_async_add(a: int, b: int = 2) -> int:
    """Add with options, asynchronously."""
    return a + b


@task()
def parens_add(a: int, b: int = 2) -> int:
    """Add, declared with @task()."""
    return a + b


def _plain_add(a: int, b: int = 2) -> int:
    """Add two numbers."""
    return a + b


# -- what the decorator keeps -----------------------------------------------------------


def test_bare_decorator_returns_a_registered_task_named_after_the_function() -> None:
    assert isinstance(bare_add, Task)
    assert bare_add.name == f"{__name__}.bare_add"
    assert get_task(bare_add.name) is bare_add
    assert isinstance(bare_async_add, Task)
    assert bare_async_add.name == f"{__name__}.bare_async_add"
    assert bare_async_add.spec.is_async is True
    assert bare_add.spec.is_async is False


def test_bare_decorator_keeps_name_doc_and_signature() -> None:
    assert bare_add.__name__ == "bare_add"
    assert bare_add.__doc__ == "Add two numbers."
    assert bare_add.__qualname__ == "bare_add"
    assert bare_add.__module__ == __name__
    assert inspect.signature(bare_add) == inspect.signature(_plain_add)
    assert bare_async_add.__name__ == "bare_async_add"
    assert bare_async_add.__doc__ == "Add two numbers, asynchronously."
    assert str(inspect.signature(bare_async_add)) == "(a: 'int', b: 'int' = 2) -> 'int'"


def test_called_decorator_keeps_name_doc_and_signature() -> None:
    assert called_add.__name__ == "called_add"
    assert called_add.__doc__ == "Add with options."
    assert list(inspect.signature(called_add).parameters) == ["a", "b"]
    assert inspect.signature(called_add).parameters["b"].kind is inspect.Parameter.KEYWORD_ONLY
    assert called_async_add.__name__ == "called_async_add"
    assert called_async_add.__doc__ == "Add with options, asynchronously."
    assert list(inspect.signature(called_async_add).parameters) == ["a", "b"]


def test_called_decorator_records_its_options() -> None:
    spec = called_add.spec
    assert spec.name == "unit.decorator.called"
    assert (spec.weight, spec.priority, spec.queue, spec.timeout) == (2, 8, "q1", 5.0)
    assert isinstance(spec.timeout, float)
    assert spec.route is None
    assert spec.retry == RetryPolicy.never()
    assert called_async_add.spec.retry.max_attempts == 2
    assert called_async_add.spec.is_async is True


def test_empty_parentheses_work_like_the_bare_decorator() -> None:
    assert isinstance(parens_add, Task)
    assert parens_add.name == f"{__name__}.parens_add"
    assert parens_add.__doc__ == "Add, declared with @task()."
    assert parens_add(1) == 3


def test_calling_the_task_runs_the_function_directly() -> None:
    assert bare_add(1) == 3
    assert bare_add(1, b=10) == 11
    assert called_add(1, b=1) == 2
    with pytest.raises(TypeError):
        called_add(1, 2)  # type: ignore[misc]  # b is keyword-only, as in the function


def test_calling_an_async_task_returns_the_coroutine() -> None:
    coro = bare_async_add(1, 2)
    assert inspect.iscoroutine(coro)
    assert asyncio.run(coro) == 3
    assert asyncio.run(called_async_add(a=4)) == 6


def test_direct_call_does_not_validate_or_dispatch() -> None:
    # A direct call is the plain function: no pydantic coercion, no routing.
    assert bare_add("a", "b") == "ab"  # type: ignore[arg-type]


def test_task_has_dispatch_options_and_dispatch_many() -> None:
    for t in (bare_add, bare_async_add, called_add, called_async_add):
        assert callable(t.dispatch)
        assert callable(t.options)
        assert callable(t.dispatch_many)
    copy = called_add.options(route="celery", priority="low", queue="other", countdown=1)
    assert isinstance(copy, Task)
    assert copy is not called_add
    assert copy.spec is called_add.spec
    assert copy.__name__ == "called_add"
    assert (copy.call_options.route, copy.call_options.priority) == ("celery", 2)
    assert (copy.call_options.queue, copy.call_options.countdown) == ("other", 1.0)
    # the original is untouched
    assert called_add.call_options.route is None


def test_options_merge_over_earlier_options() -> None:
    first = called_add.options(route="celery", queue="a")
    second = first.options(priority=9)
    assert (second.call_options.route, second.call_options.queue) == ("celery", "a")
    assert second.call_options.priority == 9


# -- what the decorator refuses ---------------------------------------------------------


def test_unknown_option_suggests_the_close_one() -> None:
    with pytest.raises(TaskDefinitionError, match="did you mean 'weight'") as info:
        task(wieght=3)  # type: ignore[call-overload]
    assert "wieght" in str(info.value)


def test_unknown_option_is_refused_on_the_bare_form_too() -> None:
    def f() -> None: ...

    with pytest.raises(TaskDefinitionError, match="did you mean 'queue'"):
        task(f, name="unit.decorator.unknown_bare", queu="x")  # type: ignore[call-overload]


@pytest.mark.parametrize(
    ("options", "mentions"),
    [
        ({"priority": "urgent"}, "priority"),
        ({"priority": 10}, "priority"),
        ({"priority": -1}, "priority"),
        ({"priority": True}, "priority"),
        ({"priority": "HIGH"}, "priority"),
        ({"weight": 0}, "weight"),
        ({"weight": -2}, "weight"),
        ({"weight": True}, "weight"),
        ({"weight": 2.5}, "weight"),
        ({"weight": "3"}, "weight"),
        ({"route": "somewhere"}, "route"),
        ({"timeout": 0}, "timeout"),
        ({"timeout": -1}, "timeout"),
        ({"timeout": True}, "timeout"),
        ({"timeout": "5"}, "timeout"),
        ({"retry": 3}, "retry"),
        ({"retry": {"max_attempts": 3}}, "retry"),
        ({"queue": ""}, "queue"),
        ({"queue": "   "}, "queue"),
        ({"queue": 5}, "queue"),
        ({"name": "  "}, "name"),
        ({"name": 5}, "name"),
    ],
)
def test_invalid_option_values_are_refused_at_decoration_time(
    options: dict[str, object], mentions: str
) -> None:
    # Refused when the options are given, before any function is seen...
    with pytest.raises(TaskDefinitionError, match=mentions):
        task(**options)  # type: ignore[call-overload]

    # ...and in the bare-call form, without registering anything.
    def f() -> None: ...

    with pytest.raises(TaskDefinitionError, match=mentions):
        task(f, **{"name": "unit.decorator.invalid", **options})  # type: ignore[call-overload]
    with pytest.raises(DispatchError):
        get_task("unit.decorator.invalid")


def test_definition_errors_are_type_errors() -> None:
    assert issubclass(TaskDefinitionError, TypeError)
    assert issubclass(TaskDefinitionError, DispatchError)


def test_non_callable_is_refused() -> None:
    with pytest.raises(TaskDefinitionError):
        task(42)  # type: ignore[call-overload]


def test_nested_function_needs_an_explicit_name() -> None:
    def helper() -> None: ...

    with pytest.raises(TaskDefinitionError, match="explicit name"):
        task(helper)
    assert task(name="unit.decorator.nested")(helper).name == "unit.decorator.nested"


def test_duplicate_name_from_a_different_function_is_refused() -> None:
    @task(name="unit.decorator.dup")
    def first() -> str:
        return "first"

    with pytest.raises(
        TaskDefinitionError, match=re.escape("duplicate task name 'unit.decorator.dup'")
    ):

        @task(name="unit.decorator.dup")
        def second() -> str:
            return "second"

    # the original registration is kept
    assert get_task("unit.decorator.dup") is first


def test_redecorating_the_same_function_is_not_a_duplicate() -> None:
    def fn() -> int:
        return 1

    a = task(name="unit.decorator.same")(fn)
    b = task(name="unit.decorator.same")(fn)
    assert get_task("unit.decorator.same") is b
    assert a.spec.fn is b.spec.fn


def _star_args(*args: int) -> None: ...


def _star_kwargs(**kwargs: int) -> None: ...


def _positional_only(a: int, /) -> None: ...


def _mixed(a: int, *rest: int, b: int = 1) -> None: ...


@pytest.mark.parametrize(
    ("fn", "param"),
    [
        (_star_args, "args"),
        (_star_kwargs, "kwargs"),
        (_positional_only, "a"),
        (_mixed, "rest"),
    ],
)
def test_unnamed_parameters_are_refused(fn: object, param: str) -> None:
    name = f"unit.decorator.refused.{param}"
    with pytest.raises(TaskDefinitionError, match=f"parameter '{param}'"):
        task(name=name)(fn)  # type: ignore[call-overload]
    with pytest.raises(DispatchError):
        get_task(name)  # nothing half-registered


def test_keyword_only_parameters_are_fine() -> None:
    @task(name="unit.decorator.kwonly")
    def f(*, a: int) -> int:
        return a

    assert f(a=3) == 3


@pytest.mark.parametrize(("given", "expected"), [("low", 2), ("normal", 5), ("high", 8)])
def test_priority_names_map_to_numbers(given: str, expected: int) -> None:
    t = task(name=f"unit.decorator.priority.{given}", priority=given)(_plain_add)
    assert t.spec.priority == expected
    assert PRIORITY_NAMES[given] == expected


@pytest.mark.parametrize("given", list(range(10)))
def test_priority_ints_0_to_9_are_accepted(given: int) -> None:
    t = task(name=f"unit.decorator.priority.int{given}", priority=given)(_plain_add)
    assert t.spec.priority == given


def test_defaults() -> None:
    t = task(name="unit.decorator.defaults")(_plain_add)
    spec = t.spec
    assert (spec.weight, spec.priority, spec.queue, spec.route, spec.timeout) == (
        1,
        5,
        None,
        None,
        None,
    )
    assert spec.retry.max_attempts == 1
    assert repr(t) == "<Task unit.decorator.defaults weight=1 priority=5>"


def test_route_pin_is_recorded() -> None:
    assert task(name="unit.decorator.pin_c", route="celery")(_plain_add).spec.route == "celery"
    assert task(name="unit.decorator.pin_i", route="inline")(_plain_add).spec.route == "inline"


def test_empty_string_name_is_refused() -> None:
    """Regression (was a bug in dispatcher/task.py, _build_spec): ``name=""`` is not refused.

    ``options.get("name") or default`` turns ``""`` into the default name before the
    "name must be a non-empty string" check runs, so ``@task(name="")`` silently
    registers under ``module.qualname`` while ``name="  "`` is refused.
    """
    with pytest.raises(TaskDefinitionError, match="name"):
        task(name="")


def test_eta_must_be_an_aware_datetime_and_excludes_countdown() -> None:
    from datetime import UTC, datetime, timedelta

    @task(name="unit.decorator.eta")
    def later() -> None: ...

    naive = datetime.now() + timedelta(minutes=5)
    with pytest.raises(TaskValidationError, match="eta: must be timezone-aware"):
        later.options(eta=naive)
    with pytest.raises(TaskValidationError, match="eta: must be a datetime"):
        later.options(eta=300)  # type: ignore[arg-type]
    aware = datetime.now(UTC) + timedelta(minutes=5)
    with pytest.raises(TaskValidationError, match="not both"):
        later.options(countdown=5, eta=aware)
    # The later option replaces the earlier one.
    assert later.options(countdown=5).options(eta=aware).call_options.countdown is None
    assert later.options(eta=aware).options(countdown=5).call_options.eta is None
    assert later.options(eta=aware).call_options.eta == aware.timestamp()
