"""``python -m dispatcher routes [--json]``."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from dispatcher import DispatcherSettings, RetryPolicy, configure, task
from dispatcher.cli import main
from dispatcher.core import registry


@pytest.fixture
def cli_tasks() -> None:
    @task(name="unit.cli.light", priority="high")
    def light(n: int) -> None: ...

    @task(name="unit.cli.heavy", weight=5, queue="reports", timeout=30)
    async def heavy() -> None: ...

    @task(
        name="unit.cli.retried",
        route="celery",
        retry=RetryPolicy(max_attempts=4, base_delay=0.5, max_delay=10, jitter=True),
    )
    def retried() -> None: ...


def rows_by_task(out: str) -> dict[str, dict[str, Any]]:
    rows = json.loads(out)
    assert isinstance(rows, list)
    return {row["task"]: row for row in rows}


@pytest.mark.usefixtures("cli_tasks")
def test_routes_json_lists_registered_tasks(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["routes", "--json"]) == 0
    out = capsys.readouterr().out
    names = [row["task"] for row in json.loads(out)]
    assert names == sorted(names)
    rows = rows_by_task(out)
    assert {"unit.cli.light", "unit.cli.heavy", "unit.cli.retried"} <= set(rows)
    light = rows["unit.cli.light"]
    assert light == {
        "task": "unit.cli.light",
        "route": "inline",
        "reason": "weight 1 <= 3",
        "queue": None,
        "priority": 8,
        "weight": 1,
        "timeout": None,
        "async": False,
        "retry": RetryPolicy.never().describe(),
        "schedule": None,
        "rate_limit": None,
        "concurrency": None,
        "concurrency_key": None,
    }
    heavy = rows["unit.cli.heavy"]
    assert (heavy["route"], heavy["queue"], heavy["reason"]) == (
        "celery",
        "reports",
        "weight 5 > 3",
    )
    assert (heavy["timeout"], heavy["async"], heavy["priority"]) == (30.0, True, 5)
    retried = rows["unit.cli.retried"]
    assert (retried["route"], retried["reason"], retried["queue"]) == (
        "celery",
        "decorator pin",
        "celery",
    )
    assert retried["retry"]["max_attempts"] == 4


@pytest.mark.usefixtures("cli_tasks")
def test_routes_follow_the_current_settings(
    capsys: pytest.CaptureFixture[str], use_settings: Callable[..., DispatcherSettings]
) -> None:
    use_settings(
        routes=[{"match": "unit.cli.l*", "route": "celery", "queue": "fast"}],
        inline_max_weight=9,
    )
    main(["routes", "--json"])
    rows = rows_by_task(capsys.readouterr().out)
    assert (rows["unit.cli.light"]["route"], rows["unit.cli.light"]["queue"]) == (
        "celery",
        "fast",
    )
    assert rows["unit.cli.light"]["reason"] == "rule 'unit.cli.l*'"
    assert rows["unit.cli.heavy"]["route"] == "inline"


@pytest.mark.usefixtures("cli_tasks")
def test_routes_table(capsys: pytest.CaptureFixture[str]) -> None:
    @task(name="unit.cli.scheduled", schedule="*/5 * * * *")
    def scheduled() -> None: ...

    @task(name="unit.cli.limited", rate_limit="100/m", concurrency=2,
          concurrency_key="customer")
    def limited(customer: str) -> None: ...

    assert main(["routes"]) == 0
    lines = capsys.readouterr().out.splitlines()
    header = lines[0].split()
    assert header[:4] == ["TASK", "ROUTE", "QUEUE", "PRIORITY"]
    assert header[:8] == ["TASK", "ROUTE", "QUEUE", "PRIORITY", "WEIGHT", "TIMEOUT", "RETRY",
                          "WHY"]
    # plus ADAPTIVE when a weight="auto" task is registered (the integration samples)
    assert header[8:] in (["SCHEDULE", "LIMITS"], ["ADAPTIVE", "SCHEDULE", "LIMITS"])
    by_name = {line.split()[0]: line for line in lines[1:]}
    assert by_name["unit.cli.scheduled"].endswith("*/5 * * * *  -")
    assert by_name["unit.cli.limited"].endswith("100/m, 2 at once per customer")
    light = by_name["unit.cli.light"].split()
    assert light[:6] == ["unit.cli.light", "inline", "-", "8", "1", "-"]
    assert "no retry" in by_name["unit.cli.light"]
    heavy = by_name["unit.cli.heavy"].split()
    assert heavy[:6] == ["unit.cli.heavy", "celery", "reports", "5", "5", "30s"]
    assert "4 attempts, 0.5s x2 <= 10s, jitter, on Exception" in by_name["unit.cli.retried"]
    # columns line up: every ROUTE cell starts where the header's does
    column = lines[0].index("ROUTE")
    for line in lines[1:]:
        assert line[column - 2 : column] == "  "
        assert line[column] != " "


def test_routes_imports_task_modules(
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    use_settings: Callable[..., DispatcherSettings],
) -> None:
    module = "unit_cli_generated_tasks"
    (tmp_path / f"{module}.py").write_text(
        "from dispatcher import task\n\n"
        "@task(name='unit.cli.imported', weight=4)\n"
        "def imported() -> None: ...\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, module, raising=False)
    use_settings(task_modules=module)
    try:
        main(["routes", "--json"])
        rows = rows_by_task(capsys.readouterr().out)
        assert rows["unit.cli.imported"]["route"] == "celery"
    finally:
        sys.modules.pop(module, None)


def test_routes_with_no_tasks(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(registry, "_tasks", {})
    assert main(["routes"]) == 0
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "no tasks registered" in captured.err
    assert main(["routes", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == []


def test_a_command_is_required(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main([])
    assert info.value.code == 2
    assert "routes" in capsys.readouterr().err


def test_routes_reports_a_bad_task_module(
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    use_settings: Callable[..., DispatcherSettings],
) -> None:
    module = "unit_cli_generated_bad_tasks"
    (tmp_path / f"{module}.py").write_text(
        "from dispatcher import task\n\n"
        "@task(name='unit.cli.bad', wieght=4)\n"
        "def bad() -> None: ...\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, module, raising=False)
    use_settings(task_modules=module)
    try:
        assert main(["routes", "--json"]) == 2
    finally:
        sys.modules.pop(module, None)
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "did you mean 'weight'" in captured.err


def test_schedules_lists_each_schedule_as_a_table_or_json(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DISPATCH_SCHEDULES", '[{"task": "unit.cli.daily", "cron": "0 6 * * *", '
                       '"kwargs": {"kind": "sales"}}]')
    configure(DispatcherSettings())  # type: ignore[call-arg]
    assert main(["schedules"]) == 0
    header, *rows = capsys.readouterr().out.splitlines()
    assert header.split()[:2] == ["TASK", "SCHEDULE"]
    (row,) = [r for r in rows if r.startswith("unit.cli.daily ")]  # others: tasks' own
    assert row.split()[:7] == ["unit.cli.daily", "0", "6", "*", "*", "*", "(UTC)"]
    assert main(["schedules", "--json"]) == 0
    (listed,) = [r for r in json.loads(capsys.readouterr().out) if r["task"] == "unit.cli.daily"]
    assert (listed["kwargs"], listed["last_run"]) == ({"kind": "sales"}, None)


@pytest.mark.parametrize("concurrency", ["0", "two"])
def test_a_bad_worker_concurrency_is_a_clear_error(
        concurrency: str, capsys: pytest.CaptureFixture[str]) -> None:
    """Refused before any process starts: one line naming the option, no traceback."""
    assert main(["worker", "--concurrency", concurrency]) == 2
    err = capsys.readouterr().err
    assert err.startswith("worker: --concurrency must be") and repr(concurrency) in err
    assert "Traceback" not in err
