"""Dispatch-time argument validation: refused in the caller, naming the field,
before anything is recorded, scheduled or run."""

from __future__ import annotations

import threading
from datetime import UTC, datetime
from typing import Any

import pytest
from pydantic import SecretStr, ValidationError

from dispatcher import TaskDefinitionError, TaskValidationError, task
from dispatcher.core.errors import DispatchError
from dispatcher.core.validation import ArgumentValidator
from dispatcher.runtime.container import current
from dispatcher.testing import capture_dispatches, wait_for_inline_jobs


class Calls:
    """Counts runs of a task function (they happen on executor threads)."""

    def __init__(self) -> None:
        self.count = 0
        self.values: list[Any] = []
        self._lock = threading.Lock()

    def add(self, value: Any) -> None:
        with self._lock:
            self.count += 1
            self.values.append(value)


@pytest.fixture
def calls() -> Calls:
    return Calls()


def assert_nothing_scheduled(captured: list[Any], calls: Calls) -> None:
    assert captured == []
    wait_for_inline_jobs(timeout=5)
    assert current().inline.executor.outstanding() == 0
    assert calls.count == 0


def test_validation_error_is_a_value_error() -> None:
    assert issubclass(TaskValidationError, ValueError)
    assert issubclass(TaskValidationError, DispatchError)
    err = TaskValidationError(
        "t", [{"field": "a", "message": "bad"}, {"field": "b", "message": "x"}]
    )
    assert err.field == "a"
    assert err.task_name == "t"
    assert [e["field"] for e in err.errors] == ["a", "b"]
    assert "a: bad" in str(err)
    assert "b: x" in str(err)


def test_wrong_type_names_the_parameter(calls: Calls) -> None:
    @task(name="unit.validation.wrong_type")
    def f(count: int, label: str = "x") -> None:
        calls.add(count)

    with capture_dispatches() as captured, pytest.raises(TaskValidationError) as info:
        f.dispatch("not a number")
    assert info.value.field == "count"
    assert info.value.task_name == "unit.validation.wrong_type"
    assert "count" in str(info.value)
    assert_nothing_scheduled(captured, calls)

    with pytest.raises(TaskValidationError) as info:
        f.dispatch(1, label=["a", "list"])
    assert info.value.field == "label"


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_nan_and_infinities_are_refused_naming_the_argument(bad: float, calls: Calls) -> None:
    """Not JSON: refused at dispatch, on the plain path and inside a container, and in
    a batch, naming the argument (never sent as NaN, never recorded as null)."""
    @task(name=f"unit.validation.finite_{str(bad).replace('-', 'minus_')}")
    def f(x: float, more: list[float] | None = None) -> None:
        calls.add(x)

    with capture_dispatches() as captured:
        with pytest.raises(TaskValidationError) as info:
            f.dispatch(bad)
        assert info.value.field == "x"
        with pytest.raises(TaskValidationError) as info:
            f.dispatch(1.0, more=[2.0, bad])
        assert (info.value.field or "").startswith("more")
        with pytest.raises(TaskValidationError) as info:
            f.dispatch_many([(1.0,), (bad,)])
        assert info.value.field == "[1].x"
    assert_nothing_scheduled(captured, calls)
    f.dispatch(1e308)  # large, and finite: accepted


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_nan_inside_untyped_arguments_is_refused_not_sent_as_null(
    bad: float, calls: Calls
) -> None:
    """An ``Any`` or ``dict`` parameter holds what it is given: pydantic's JSON dump
    would turn a NaN there into null, so it is refused, naming where it sits."""
    @task(name=f"unit.validation.untyped_{str(bad).replace('-', 'minus_')}")
    def f(x: Any, options: dict[str, Any] | None = None) -> None:
        calls.add(str(x))

    with capture_dispatches() as captured:
        with pytest.raises(TaskValidationError) as info:
            f.dispatch(bad)
        assert info.value.field == "x"
        with pytest.raises(TaskValidationError) as info:
            f.dispatch([1, {"score": bad}])
        assert info.value.field == "x[1].score"
        with pytest.raises(TaskValidationError) as info:
            f.dispatch(1, options={"limits": [0.5, bad]})
        assert info.value.field == "options.limits[1]"
        with pytest.raises(TaskValidationError) as info:
            f.dispatch_many([(1,), ({"a": bad},)])
        assert info.value.field == "[1].x.a"
    assert_nothing_scheduled(captured, calls)
    assert f.dispatch([1.5, {"score": 2.0}], options={"n": None}).id  # finite: accepted


def test_a_refused_batch_leaves_the_collector_on(calls: Calls) -> None:
    """dispatch_many pauses the garbage collector while it works (core.collector), and
    gives it back however the batch ends."""
    import gc

    @task(name="unit.validation.collector")
    def f(x: int) -> None:
        calls.add(x)

    with capture_dispatches() as captured, pytest.raises(TaskValidationError):
        f.dispatch_many([(1,), ("two",)])
    assert gc.isenabled()
    assert_nothing_scheduled(captured, calls)
    assert len(f.dispatch_many(iter([(1,), (2,)]))) == 2  # a generator too
    assert gc.isenabled()


def test_missing_required_argument_names_it(calls: Calls) -> None:
    @task(name="unit.validation.missing")
    def f(user_id: int, note: str = "") -> None:
        calls.add(user_id)

    with capture_dispatches() as captured, pytest.raises(TaskValidationError) as info:
        f.dispatch(note="hi")
    assert info.value.field == "user_id"
    assert "required" in info.value.errors[0]["message"].lower()
    assert_nothing_scheduled(captured, calls)


def test_every_missing_argument_is_listed() -> None:
    @task(name="unit.validation.missing_many")
    def f(a: int, b: int) -> None: ...

    with pytest.raises(TaskValidationError) as info:
        f.dispatch()
    assert {e["field"] for e in info.value.errors} == {"a", "b"}


def test_unexpected_keyword_names_it(calls: Calls) -> None:
    @task(name="unit.validation.unexpected")
    def f(a: int) -> None:
        calls.add(a)

    with capture_dispatches() as captured, pytest.raises(TaskValidationError) as info:
        f.dispatch(a=1, colour="red")
    assert info.value.field == "colour"
    assert info.value.errors[0]["message"] == "unexpected argument"
    assert_nothing_scheduled(captured, calls)


def test_too_many_positionals(calls: Calls) -> None:
    @task(name="unit.validation.too_many")
    def f(a: int, b: int = 0, *, c: int = 0) -> None:
        calls.add(a)

    with capture_dispatches() as captured, pytest.raises(TaskValidationError) as info:
        f.dispatch(1, 2, 3)  # c is keyword-only
    assert info.value.field == "(arguments)"
    assert "takes 2 positional arguments but 3 were given" in str(info.value)
    assert_nothing_scheduled(captured, calls)


def test_argument_given_twice(calls: Calls) -> None:
    @task(name="unit.validation.twice")
    def f(a: int, b: int = 0) -> None:
        calls.add(a)

    with capture_dispatches() as captured, pytest.raises(TaskValidationError) as info:
        f.dispatch(1, a=2)
    assert info.value.field == "a"
    assert "given twice" in str(info.value)
    assert_nothing_scheduled(captured, calls)


def test_unserialisable_value_for_any_is_refused_before_scheduling(calls: Calls) -> None:
    @task(name="unit.validation.any")
    def f(ok: int, blob: Any = None) -> None:
        calls.add(blob)

    with capture_dispatches() as captured, pytest.raises(TaskValidationError) as info:
        f.dispatch(1, blob=object())
    assert info.value.field == "blob"
    assert "JSON" in str(info.value)
    assert_nothing_scheduled(captured, calls)


def test_unserialisable_value_for_unannotated_parameter_is_refused(calls: Calls) -> None:
    @task(name="unit.validation.unannotated")
    def f(first, second=None):  # type: ignore[no-untyped-def]
        calls.add(first)

    with capture_dispatches() as captured, pytest.raises(TaskValidationError) as info:
        f.dispatch("fine", object())
    assert info.value.field == "second"
    assert_nothing_scheduled(captured, calls)

    # nested inside a container: still the parameter's name
    with capture_dispatches() as captured, pytest.raises(TaskValidationError) as info:
        f.dispatch({"k": object()})
    assert info.value.field == "first"
    assert_nothing_scheduled(captured, calls)

    # bytes that are not UTF-8 cannot travel as JSON either
    with capture_dispatches() as captured, pytest.raises(TaskValidationError) as info:
        f.dispatch(b"\xff\xfe")
    assert info.value.field == "first"
    assert_nothing_scheduled(captured, calls)


def test_nothing_is_recorded_for_a_refused_dispatch(monkeypatch: pytest.MonkeyPatch) -> None:
    @task(name="unit.validation.no_record")
    def f(blob: Any) -> None: ...

    saved: list[dict[str, Any]] = []
    store = current().records
    original_save = store.save
    monkeypatch.setattr(store, "save", lambda record, **kw: (saved.append(record),
                                                              original_save(record, **kw)))
    with pytest.raises(TaskValidationError):
        f.dispatch(object())
    assert saved == []
    f.dispatch("fine").get(timeout=5)
    assert [r["status"] for r in saved] == ["PENDING", "STARTED", "SUCCESS"]


def test_pydantic_coerces_to_the_annotated_types(calls: Calls) -> None:
    @task(name="unit.validation.coerce")
    def f(n: int, ratio: float, flag: bool, tags: list[int]) -> dict[str, Any]:
        calls.add((n, ratio, flag, tags))
        return {"double": n * 2, "types": [type(n).__name__, type(ratio).__name__]}

    handle = f.dispatch("5", "0.5", "true", ["1", 2])
    assert handle.get(timeout=5) == {"double": 10, "types": ["int", "float"]}
    assert calls.values == [(5, 0.5, True, [1, 2])]


def test_validator_payload_is_json_ready_and_decodes_back() -> None:
    def f(when: datetime, tags: set[int], n: int = 1) -> None: ...

    v = ArgumentValidator("unit.validation.payload", f)
    values, payload = v.validate(("2024-05-01T12:00:00Z", ["3", 1]), {})
    assert values == {"when": datetime(2024, 5, 1, 12, tzinfo=UTC), "tags": {1, 3}, "n": 1}
    assert payload["when"] == "2024-05-01T12:00:00Z"
    assert sorted(payload["tags"]) == [1, 3]
    assert payload["n"] == 1
    assert v.decode(payload) == values


def test_decode_refuses_a_bad_payload() -> None:
    def f(n: int) -> None: ...

    v = ArgumentValidator("unit.validation.decode", f)
    with pytest.raises(TaskValidationError) as info:
        v.decode({"n": "x"})
    assert info.value.field == "n"
    with pytest.raises(TaskValidationError) as info:
        v.decode({"n": 1, "extra": 2})
    assert info.value.field == "extra"


def test_dispatch_many_validates_every_item_first(calls: Calls) -> None:
    @task(name="unit.validation.many")
    def f(n: int, label: str = "") -> int:
        calls.add(n)
        return n

    items: list[Any] = [(1,), {"n": 2}, {"n": "three"}, (4,)]
    with capture_dispatches() as captured, pytest.raises(TaskValidationError) as info:
        f.dispatch_many(items)
    assert info.value.field == "[2].n"
    assert "[2]" in str(info.value)
    assert_nothing_scheduled(captured, calls)

    with capture_dispatches() as captured, pytest.raises(TaskValidationError) as info:
        f.dispatch_many([(1,), (2, "x", "too many")])
    assert info.value.field == "[1].(arguments)"
    assert_nothing_scheduled(captured, calls)


def test_dispatch_many_dispatches_each_item(calls: Calls) -> None:
    @task(name="unit.validation.many_ok")
    def f(n: int, label: str = "") -> str:
        calls.add(n)
        return f"{label}{n}"

    with capture_dispatches() as captured:
        handles = f.dispatch_many([(1,), {"n": "2", "label": "#"}, (3, "x")])
    assert [h.id for h in captured] == [h.id for h in handles]
    assert len({h.id for h in handles}) == 3
    assert [h.get(timeout=5) for h in handles] == ["1", "#2", "x3"]
    assert sorted(calls.values) == [1, 2, 3]


def _pydantic_payload(v: ArgumentValidator, args: tuple[Any, ...],
                     kwargs: dict[str, Any]) -> dict[str, Any] | str:
    """What pydantic alone makes of a call: the payload, or the first error's field."""
    try:
        instance = v.model.model_validate(v.bind(args, kwargs))
    except ValidationError as exc:
        return str(exc.errors()[0]["loc"])
    except TaskValidationError as exc:
        return str(exc.field)
    return instance.model_dump(mode="json", by_alias=True)


def test_plain_argument_fast_path_agrees_with_pydantic() -> None:
    def f(n: int, ratio: float, label: str = "x", on: bool = False,
          limit: int | None = None) -> None: ...

    def g(n: int, ratio: float, label: str = "x", on: bool = False) -> None: ...

    def h(n: int = True, ratio: float = 1, *, label: str = "x", on: bool = False) -> None: ...  # type: ignore[assignment]

    calls: list[tuple[tuple[Any, ...], dict[str, Any]]] = [
        ((1, 2.5), {}), ((1, 2), {}), ((1,), {"ratio": 3}), ((), {"n": 1, "ratio": 0.0}),
        ((1, 2.5, "y", True), {}), ((True, 2.5), {}), ((1, True), {}), (("1", 2.5), {}),
        ((1, "2.5"), {}), ((1, 2**60), {}), ((1, 2.5, 3), {}), ((1, 2.5), {"n": 2}),
        ((1, 2.5), {"other": 1}), ((1,), {}), ((1, 2.5, None), {}), ((1, float("inf")), {}),
    ]
    calls += [((), {}), ((2,), {"label": "y"}), ((2, 3.5, "z"), {})]
    for fn in (f, g, h):
        v = ArgumentValidator(f"unit.validation.fast.{fn.__name__}", fn)
        for args, kwargs in calls:
            expected = _pydantic_payload(v, args, kwargs)
            try:
                got: dict[str, Any] | str = v.validate(args, kwargs)[1]
            except TaskValidationError as exc:
                got = str(exc.field)
            if isinstance(expected, dict):
                assert got == expected, (fn.__name__, args, kwargs)
                assert [type(x) for x in got.values()] == [type(x) for x in expected.values()]
                # and the worker decodes it back to the same typed values
                decoded = v.decode(got)
                assert decoded == v.model.model_validate(got).model_dump(by_alias=True)
            else:
                assert isinstance(got, str), (fn.__name__, args, kwargs, got)


def test_plain_batches_skip_pydantic_and_agree_with_it() -> None:
    def g(n: int, ratio: float, label: str = "x", on: bool = False) -> None: ...

    v = ArgumentValidator("unit.validation.fast_batch", g)
    items: list[Any] = [(1, 2.5), (1, 2), {"n": 1, "ratio": 0.0}, (1, 2.5, "y", True),
                        {"n": 2, "ratio": 3, "label": "z"}]
    got = v.payloads(items)
    assert v._list_adapter is None  # every item was plain: pydantic was not asked
    expected = [_pydantic_payload(v, item, {}) if isinstance(item, tuple)
                else _pydantic_payload(v, (), item) for item in items]
    assert got == expected
    assert [[type(x) for x in p.values()] for p in got] == \
        [[type(x) for x in p.values()] for p in expected]  # type: ignore[union-attr]

    # One item that is not plain: pydantic decides for the batch, and names the bad items.
    assert v.payloads([(1, 2.5), ("2", 2.5)]) == [expected[0], {**expected[0], "n": 2}]
    with pytest.raises(TaskValidationError) as info:
        v.payloads([(1, 2.5), ("x", 2.5), (1,)])
    assert [e["field"] for e in info.value.errors] == ["[1].n", "[2].ratio"]


def test_batch_payloads_match_one_by_one_validation() -> None:
    def f(when: datetime, token: SecretStr, tags: list[int] | None = None) -> None: ...

    v = ArgumentValidator("unit.validation.batch", f)
    items: list[Any] = [("2024-05-01T12:00:00Z", "s3cret"),
                        {"when": "2024-05-02T00:00:00Z", "token": "other", "tags": ["7"]}]
    payloads = v.payloads(items)
    assert payloads == [v.validate(("2024-05-01T12:00:00Z", "s3cret"), {})[1],
                        v.validate((), items[1])[1]]
    assert [p["token"] for p in payloads] == ["s3cret", "other"]  # secrets travel in clear
    assert payloads[1]["tags"] == [7]


def test_batch_errors_name_every_bad_item() -> None:
    def f(n: int, when: object = None) -> None: ...

    v = ArgumentValidator("unit.validation.batch_errors", f)
    with pytest.raises(TaskValidationError) as info:
        v.payloads([(1,), ("x",), {"n": 3, "extra": 1}, ()])
    assert [e["field"] for e in info.value.errors] == [
        "[1].n", "[2].extra", "[3].n"]
    assert info.value.field == "[1].n"

    with pytest.raises(TaskValidationError) as info:
        v.payloads([(1,), (2, object())])  # a value that cannot travel as JSON
    assert info.value.field == "[1].when"
    assert "cannot be sent as JSON" in str(info.value)


def test_options_are_validated() -> None:
    @task(name="unit.validation.options")
    def f() -> None: ...

    cases: list[tuple[dict[str, Any], str]] = [
        ({"route": "elsewhere"}, "route"),
        ({"priority": "urgent"}, "priority"),
        ({"priority": 10}, "priority"),
        ({"queue": ""}, "queue"),
        ({"countdown": -1}, "countdown"),
        ({"countdown": True}, "countdown"),
    ]
    for options, field in cases:
        with pytest.raises(TaskValidationError) as info:
            f.options(**options)
        assert info.value.field == field, options


def test_leading_underscore_parameter_can_be_dispatched() -> None:
    """Regression (was a bug in dispatcher/validation.py, ``ArgumentValidator.model``).

    pydantic's ``create_model`` treats a field name with a leading underscore as a
    private attribute, not a field. So ``@task`` accepts ``def f(_token: str)`` but
    every dispatch of it is refused with "_token: unexpected argument" (and a required
    ``_x`` is never reported missing, so the job fails at run time with TypeError).
    Expected: either ``TaskDefinitionError`` at decoration time, or a working dispatch.
    """

    def f(_token: str) -> str:
        return _token

    try:
        t = task(name="unit.validation.underscore")(f)
    except TaskDefinitionError:
        return  # refusing it up front would be a correct fix
    assert t.dispatch("abc").get(timeout=5) == "abc"
