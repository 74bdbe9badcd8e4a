"""The distribution ships the library only, with its data files (Lua scripts, the
dashboard's page): the example service and the repository's worker stay in the
checkout."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _wheel(folder: Path) -> Path:
    subprocess.run([sys.executable, "-m", "pip", "wheel", str(ROOT), "--no-deps", "-q",
                    "-w", str(folder)], check=True, timeout=600)
    (wheel,) = folder.glob("*.whl")
    return wheel


def test_the_wheel_holds_the_library_and_its_data_only(tmp_path: Path) -> None:
    wheel = _wheel(tmp_path)
    names = zipfile.ZipFile(wheel).namelist()
    assert {name.split("/")[0] for name in names} == {
        "dispatcher", "hybrid_dispatcher-0.1.0.dist-info"}
    lua = {Path(n).name for n in names if n.startswith("dispatcher/store/lua/")}
    assert lua == {p.name for p in (ROOT / "dispatcher/store/lua").glob("*.lua")}
    static = {Path(n).name for n in names if n.startswith("dispatcher/fastapi/static/")}
    assert static == {"dashboard.html", "dashboard.css", "dashboard.js"}
    assert "dispatcher/py.typed" in names
    entry_points = next(n for n in names if n.endswith("entry_points.txt"))
    assert "dispatcher = dispatcher.cli:main" in zipfile.ZipFile(wheel).read(
        entry_points).decode()


def test_the_library_alone_runs_both_routes(tmp_path: Path) -> None:
    """``pip install`` of the wheel, in a venv of its own (no test tools), brings every
    module the API and the worker import: a dependency that only the development tools
    happened to pull in would break ``make run`` and users' deployments."""
    wheel = _wheel(tmp_path / "dist")
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    python = str(venv / "bin" / "python")
    subprocess.run([python, "-m", "pip", "install", "-q", str(wheel)], check=True,
                   timeout=600)
    probe = ("import kombu.transport.redis, dispatcher.cli, dispatcher.fastapi, "
             "dispatcher.runtime.worker_app; print('ok')")
    done = subprocess.run([python, "-c", probe], cwd=tmp_path, capture_output=True,
                          text=True, timeout=120)
    assert done.stdout.strip() == "ok", done.stderr
