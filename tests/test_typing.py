"""The decorator keeps signatures for type checkers: checked with mypy --strict."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).parent / "typing"


def _mypy(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "--no-incremental", str(path)],
        capture_output=True, text=True, timeout=300, cwd=HERE.parent.parent,
    )


def test_typed_usage_passes_mypy_strict() -> None:
    result = _mypy(HERE / "typed_usage.py")
    assert result.returncode == 0, result.stdout


def test_misuse_is_caught_by_mypy_on_each_marked_line() -> None:
    source = (HERE / "bad_usage.py").read_text().splitlines()
    expected = {n for n, line in enumerate(source, start=1) if "# expect-error" in line}
    result = _mypy(HERE / "bad_usage.py")
    flagged = {int(m) for m in re.findall(r"bad_usage\.py:(\d+): error", result.stdout)}
    assert flagged == expected, result.stdout
