"""compose.yaml's api command, run the way its container runs it: as an unprivileged
user in a working directory that user cannot write (the image's root-owned /app),
with the environment compose gives it and its volumes as writable directories. The
README's quick-start calls then complete, and without a writable data directory the
API refuses to start, saying why."""

from __future__ import annotations

import os
import pwd
import shutil
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from dispatcher.store.embedded import EmbeddedRedis, free_port
from tests.integration.conftest import ROOT, Process, poll_state, wait_http

pytestmark = pytest.mark.integration

#: The packages of the checkout (the image's /app) that the api's command imports.
APP_PACKAGES = ("api", "dispatcher", "worker")


@dataclass
class Runner:
    """How to start a command as the unprivileged user, and who that is."""

    prefix: list[str]
    uid: int
    gid: int
    who: str


def _compose_api() -> dict[str, Any]:
    service = yaml.safe_load((ROOT / "compose.yaml").read_text())["services"]["api"]
    assert isinstance(service, dict)
    return service


def _setpriv() -> str:
    setpriv = shutil.which("setpriv")
    assert setpriv, "running as root, this test drops privileges with setpriv (util-linux)"
    return setpriv


#: Run as nobody, prints what tells whether nobody gets this very interpreter.
PROBE = "import sys, fastapi, uvicorn, celery, dispatcher; print(sys.version, sys.prefix)"


@pytest.fixture(scope="module")
def runner() -> Runner:
    """The current user when not root. As root: `nobody`, as in the image, when nobody
    can run this interpreter with this venv; else (an interpreter under a 0700 /root,
    say) root without any capability. None of them can write a root-owned 0555
    directory."""
    if os.geteuid() != 0:
        return Runner([], os.getuid(), os.getgid(), f"uid {os.getuid()}")
    nobody = pwd.getpwnam("nobody")
    as_nobody = [_setpriv(), f"--reuid={nobody.pw_uid}", f"--regid={nobody.pw_gid}",
                 "--clear-groups", "--"]
    probe = subprocess.run([*as_nobody, sys.executable, "-c", PROBE],
                           cwd=ROOT, capture_output=True, text=True, timeout=60)
    ours = f"{sys.version} {sys.prefix}"
    if probe.returncode == 0 and probe.stdout.strip() == ours:
        return Runner(as_nobody, nobody.pw_uid, nobody.pw_gid, "nobody")
    without_capabilities = [_setpriv(), "--inh-caps=-all", "--ambient-caps=-all",
                            "--bounding-set=-all", "--"]
    why = (probe.stdout + probe.stderr).strip().splitlines()[-1:]
    return Runner(without_capabilities, 0, 0,
                  f"root without capabilities: nobody does not get {ours} ({why})")


@dataclass
class Container:
    """/app (read-only for the runner) and one writable directory per volume."""

    app: Path
    volumes: dict[str, Path]  # container path -> local directory


@pytest.fixture
def container(runner: Runner) -> Iterator[Container]:
    # Not under pytest's tmp_path: as root that is 0700, closed to nobody.
    base = Path(tempfile.mkdtemp(prefix="compose-api-"))
    app = base / "app"
    try:
        base.chmod(0o755)
        app.mkdir()
        for package in APP_PACKAGES:
            shutil.copytree(ROOT / package, app / package,
                            ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        volumes = {}
        for volume in _compose_api()["volumes"]:
            target = volume.split(":")[1]
            local = base / "volumes" / target.strip("/").replace("/", "_")
            local.mkdir(parents=True)
            os.chown(local, runner.uid, runner.gid)
            local.chmod(0o700)
            volumes[target] = local
        (base / "volumes").chmod(0o755)
        for path in [app, *app.rglob("*")]:
            path.chmod(0o555 if path.is_dir() else 0o444)
        yield Container(app, volumes)
    finally:
        for path in [app, *app.rglob("*")]:
            path.chmod(stat.S_IMODE(path.stat().st_mode) | stat.S_IWUSR)
        shutil.rmtree(base)


def _environment(container: Container, redis_url: str) -> dict[str, str]:
    """The api service's compose environment, its Redis the test's, its volume paths
    the local directories."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("DISPATCH_", "API_")) and k != "REDIS_URL"}
    env["PYTHONUNBUFFERED"] = "1"
    for key, value in _compose_api()["environment"].items():
        for target, local in container.volumes.items():
            if value == target or value.startswith(f"{target}/"):
                value = str(local) + value[len(target):]
        env[key] = value
    env["DISPATCH_BROKER_URL"] = redis_url
    return env


def _command(port: int) -> list[str]:
    """compose's api command on 127.0.0.1 and a free port, with this interpreter."""
    command = list(_compose_api()["command"])
    assert command[0] == "uvicorn"
    command[command.index("--host") + 1] = "127.0.0.1"
    command[command.index("--port") + 1] = str(port)
    return [sys.executable, "-m", *command]


def test_quick_start_calls_complete_as_an_unprivileged_user_in_a_read_only_app_dir(
    runner: Runner, container: Container, redis_server: EmbeddedRedis, worker: Process,
    tmp_path: Path,
) -> None:
    env = _environment(container, redis_server.url)
    data_dir = Path(env["API_DATA_DIR"])
    assert data_dir in container.volumes.values(), "API_DATA_DIR is not on a volume"
    before = sorted(p.name for p in container.app.iterdir())
    port = free_port()
    api = Process([*runner.prefix, *_command(port)], env, tmp_path / "api.log",
                  cwd=container.app)
    base = f"http://127.0.0.1:{port}"
    try:
        api.wait_for_output("Application startup complete", timeout=60)
        wait_http(f"{base}/healthz")
        with httpx.Client(timeout=10) as client:
            note = client.post(f"{base}/send-notification/a@example.com")
            report = client.post(f"{base}/reports", json={"report_id": 1})
            assert (note.status_code, report.status_code) == (202, 202), api.output()
            assert (note.json()["route"], report.json()["route"]) == ("inline", "celery")
            for handle in (note.json(), report.json()):
                status = poll_state(client, base, handle["task_id"], {"SUCCESS", "FAILURE"},
                                    timeout=60)
                assert status["state"] == "SUCCESS", (runner.who, status, api.output())
            metrics = client.get(f"{base}/metrics")  # what Prometheus scrapes
            assert metrics.status_code == 200
            assert "dispatch_jobs_dispatched_total" in metrics.text

        notifications = data_dir / "notifications.log"
        expected = "notification for a@example.com: some notification\n"
        deadline = time.monotonic() + 20
        while not (notifications.exists() and expected in notifications.read_text()):
            assert time.monotonic() < deadline, (runner.who, api.output()[-3000:])
            time.sleep(0.05)
        assert notifications.stat().st_uid == runner.uid
        assert sorted(p.name for p in container.app.iterdir()) == before
    finally:
        api.stop()


def test_without_a_writable_data_dir_the_api_refuses_to_start_and_says_why(
    runner: Runner, container: Container, redis_server: EmbeddedRedis, tmp_path: Path,
) -> None:
    """API_DATA_DIR unset: the default, .run/api, is under the read-only working
    directory (the compose deployment's defect before API_DATA_DIR)."""
    env = _environment(container, redis_server.url)
    del env["API_DATA_DIR"]
    api = Process([*runner.prefix, *_command(free_port())], env, tmp_path / "api.log",
                  cwd=container.app)
    try:
        api.popen.wait(timeout=60)
    finally:
        api.stop()
    output = api.output()
    assert api.popen.returncode != 0, output
    assert "cannot create the data directory" in output, output
    assert "API_DATA_DIR unset" in output, output
    assert not (container.app / ".run").exists()
