"""The commands users run: `make run`'s supervisor, `celery -A worker.app`, the CLI."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from dispatcher.routes.celery.supervisor import CONFIG_ERROR
from dispatcher.store.embedded import free_port
from tests.integration.conftest import ROOT, Process, poll_state, wait_http


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie child of ours is gone for every practical purpose.
    status = Path(f"/proc/{pid}/status")
    return not (status.exists() and "zombie" in status.read_text())


def test_run_command_serves_both_routes_and_stops_everything(tmp_path: Path) -> None:
    """`python -m api` (what `make run` starts) with no broker configured."""
    env = {k: v for k, v in os.environ.items()
           if not (k.startswith("DISPATCH_") or k == "REDIS_URL")}
    env["API_DATA_DIR"] = str(tmp_path / "api-data")
    env["PYTHONUNBUFFERED"] = "1"
    port = free_port()
    run = Process([sys.executable, "-m", "api", "--port", str(port)], env, tmp_path / "run.log")
    try:
        run.wait_for_output("Ctrl-C stops all", timeout=30)
        base = f"http://127.0.0.1:{port}"
        wait_http(f"{base}/healthz", timeout=30)
        with httpx.Client() as client:
            note = client.post(f"{base}/send-notification/a@example.com").json()
            report = client.post(f"{base}/reports", json={"report_id": 1}).json()
            assert (note["route"], report["route"]) == ("inline", "celery")
            for task_id in (note["task_id"], report["task_id"]):
                assert poll_state(client, base, task_id, {"SUCCESS", "FAILURE"},
                                  timeout=60)["state"] == "SUCCESS"
        pids = [int(p) for p in re.findall(r"pid (\d+)", run.output())]
        assert len(pids) == 3  # redis, API, worker
        pids += _descendants(run.pid)  # the worker's Celery process and its pool too
        assert run.stop(signal.SIGINT, timeout=40) == 0
        deadline = time.monotonic() + 10
        while any(_alive(pid) for pid in pids) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not [pid for pid in pids if _alive(pid)], run.output()[-2000:]
    finally:
        run.stop(signal.SIGKILL)


def test_celery_cli_loads_the_worker_app(worker: Process, service_env: dict[str, str]) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "celery", "-A", "worker.app", "inspect", "registered",
         "--timeout", "10", "--json"],
        env=service_env, cwd=ROOT, capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 0, result.stderr
    registered = json.loads(result.stdout)
    names = {name for tasks in registered.values() for name in tasks}
    assert {"api.tasks.generate_report", "samples.echo"} <= names


def test_routes_cli_prints_table_and_json(service_env: dict[str, str]) -> None:
    table = subprocess.run([sys.executable, "-m", "dispatcher", "routes"], env=service_env,
                           cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert table.returncode == 0, table.stderr
    header = table.stdout.splitlines()[0].split()
    assert header[:4] == ["TASK", "ROUTE", "QUEUE", "PRIORITY"]
    assert re.search(r"api\.tasks\.generate_report\s+celery\s+celery\s+8", table.stdout)
    as_json = subprocess.run([sys.executable, "-m", "dispatcher", "routes", "--json"],
                             env=service_env, cwd=ROOT, capture_output=True, text=True,
                             timeout=60)
    rows = {row["task"]: row for row in json.loads(as_json.stdout)}
    assert rows["api.tasks.write_notification"]["route"] == "inline"


def test_the_dispatcher_script_finds_task_modules_in_the_working_directory(
        tmp_path: Path, service_env: dict[str, str]) -> None:
    """``dispatcher routes`` run from an app's directory imports its task modules, as
    ``python -m dispatcher`` does (a console script alone has no cwd on its path)."""
    (tmp_path / "myapp").mkdir()
    (tmp_path / "myapp" / "__init__.py").write_text("")
    (tmp_path / "myapp" / "jobs.py").write_text(
        "from dispatcher import task\n\n@task(name='myapp.ping', weight=9)\n"
        "def ping() -> None: ...\n")
    script = Path(sys.executable).parent / "dispatcher"
    env = {**service_env, "DISPATCH_TASK_MODULES": "myapp.jobs"}
    env.pop("PYTHONPATH", None)
    result = subprocess.run([str(script), "routes"], env=env, cwd=tmp_path,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert re.search(r"myapp\.ping\s+celery", result.stdout)


@pytest.mark.parametrize("consumer", ["direct", "celery"])
def test_a_second_worker_of_a_running_workers_name_refuses_to_start(
        consumer: str, broker: str, service_env: dict[str, str]) -> None:
    """Two live workers of one name would give back each other's running jobs (which
    then run twice): the second refuses, saying how to name it, and the first goes on."""
    from tests.integration import sample_tasks as samples

    env = {**service_env, "DISPATCH_WORKER_CONSUMER": consumer}
    result = subprocess.run([sys.executable, "-m", "worker", "--concurrency", "1"],
                            env=env, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == CONFIG_ERROR, result.stderr[-3000:]
    assert "is already running" in result.stderr
    assert "-n <name>@%h" in result.stderr
    assert "Traceback" not in result.stderr
    handle = samples.echo.options(route="celery").dispatch({"still": 1})
    assert handle.get(timeout=60) == {"still": 1}


@pytest.mark.parametrize("bad", ["ftp://example.com", "not a url"])
def test_worker_refuses_bad_settings_with_a_clear_error(bad: str,
                                                         service_env: dict[str, str]) -> None:
    env = {**service_env, "DISPATCH_BROKER_URL": bad}
    result = subprocess.run([sys.executable, "-m", "worker"], env=env, cwd=ROOT,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode != 0
    assert "broker_url" in result.stderr
    assert "Traceback" not in result.stderr


def _descendants(pid: int) -> list[int]:
    found = []
    for child in _children(pid):
        found += [child, *_descendants(child)]
    return found


def _children(pid: int) -> list[int]:
    """Every child of ``pid``, whichever of its threads started it (the supervisor starts
    the direct consumers from threads of its own)."""
    return [int(child) for listing in Path(f"/proc/{pid}/task").glob("*/children")
            for child in listing.read_text().split()]


def test_python_m_worker_restarts_a_crashed_celery_worker(
    broker: str, service_env: dict[str, str], tmp_path: Path
) -> None:
    from tests.integration import sample_tasks as samples

    supervisor = Process([sys.executable, "-m", "worker", "--concurrency", "1", "-Q",
                          "restart-test", "--hostname", "restart-test@%h"], service_env,
                         tmp_path / "supervised.log")
    try:
        supervisor.wait_for_output(" ready.", timeout=60)
        # The Celery worker started once its direct consumer said it was ready.
        output = supervisor.output()
        assert "not ready after" not in output
        assert output.index("ready: queues") < output.index(" ready."), output[-3000:]
        # The Celery worker: the one child the supervisor's main thread started.
        (celery_main,) = map(int, Path(
            f"/proc/{supervisor.pid}/task/{supervisor.pid}/children").read_text().split())
        os.kill(celery_main, signal.SIGKILL)  # the Celery worker dies on its own
        deadline = time.monotonic() + 60
        while supervisor.output().count(" ready.") < 2:
            assert time.monotonic() < deadline, supervisor.output()[-3000:]
            time.sleep(0.2)
        assert "starting it again" in supervisor.output()
        handle = samples.echo.options(route="celery", queue="restart-test").dispatch({"a": 1})
        assert handle.get(timeout=30) == {"a": 1}
        assert supervisor.stop(signal.SIGTERM, timeout=30) == 0  # a warm shutdown of both
    finally:
        supervisor.stop(signal.SIGKILL)


def test_the_workers_processes_end_with_a_killed_supervisor(
    broker: str, service_env: dict[str, str], tmp_path: Path
) -> None:
    """SIGKILL gives the supervisor no time to pass SIGTERM on: its children (the Celery
    worker and the direct consumers) get it from the kernel instead, and end."""
    supervisor = Process([sys.executable, "-m", "worker", "--concurrency", "2", "-Q",
                          "orphan-test", "--hostname", "orphan-test@%h"], service_env,
                         tmp_path / "orphaned.log")
    children: list[int] = []
    try:
        supervisor.wait_for_output(" ready.", timeout=60)
        children = _children(supervisor.pid)
        assert len(children) == 3, children  # the Celery worker and two consumers
        os.kill(supervisor.pid, signal.SIGKILL)
        deadline = time.monotonic() + 60
        while alive := [pid for pid in children if _alive(pid)]:
            assert time.monotonic() < deadline, (alive, supervisor.output()[-3000:])
            time.sleep(0.2)
    finally:
        supervisor.stop(signal.SIGKILL)
        for pid in children:  # still running only if the test failed
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)


def test_supervisor_ends_a_worker_that_hangs_after_an_unrecoverable_error(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    import dispatcher.routes.celery.supervisor as entry

    monkeypatch.setattr(entry, "SHUTDOWN_WATCHDOG", 0.5)
    runs = tmp_path / "runs"
    # Run 1 logs what Celery logs (to the logger Celery logs it to, with the alarm the
    # worker installs), then hangs; run 2 exits 0 unasked (still a crash); run 3
    # refuses its settings, which ends the supervisor.
    script = (
        "import logging, pathlib, sys, time\n"
        "from dispatcher.routes.celery.supervisor import install_alarm\n"
        f"runs = pathlib.Path({str(runs)!r})\n"
        "n = len(runs.read_text()) if runs.exists() else 0\n"
        "runs.write_text('x' * (n + 1))\n"
        "if n == 0:\n"
        "    install_alarm()\n"
        "    logging.getLogger('celery.worker.worker').critical(\n"
        "        'Unrecoverable error: %r', RuntimeError('boom'))\n"
        "    time.sleep(120)\n"
        "sys.exit(0 if n == 1 else 2)\n"
    )
    started = time.monotonic()
    assert entry.supervise([], command=[sys.executable, "-c", script]) == entry.CONFIG_ERROR
    assert runs.read_text() == "xxx"  # killed by the watchdog, restarted twice
    assert time.monotonic() - started < 30
