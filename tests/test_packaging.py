"""The distribution ships the library only, with its data files (Lua scripts, the
dashboard's page): the example service and the repository's worker stay in the
checkout."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_the_wheel_holds_the_library_and_its_data_only(tmp_path: Path) -> None:
    subprocess.run([sys.executable, "-m", "pip", "wheel", str(ROOT), "--no-deps", "-q",
                    "-w", str(tmp_path)], check=True, timeout=600)
    (wheel,) = tmp_path.glob("*.whl")
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
