"""Tables the suite prints at its end: the fault-injection results and the soak's report.

Tests run in several pytest-xdist worker processes (``make test``), while the table is
printed by the process that started them. So each row is appended, as one JSON line, to
a file in a folder the starting process names in ``TESTS_SUMMARY_DIR`` (its workers
inherit it); without that folder (a single test run in a bare process) rows stay here.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

ENV = "TESTS_SUMMARY_DIR"
_kept: dict[str, list[Any]] = {}


def add(table: str, row: Any) -> None:
    """Append ``row`` (anything JSON can hold) to ``table``."""
    folder = os.environ.get(ENV)
    if not folder:
        _kept.setdefault(table, []).append(row)
        return
    with (Path(folder) / f"{table}.jsonl").open("a", encoding="utf-8") as out:
        out.write(json.dumps(row) + "\n")  # one short append: whole lines, never mixed


def rows(table: str) -> list[Any]:
    """Every row of ``table`` so far, from every process, in the order written."""
    folder = os.environ.get(ENV)
    if not folder:
        return list(_kept.get(table, []))
    path = Path(folder) / f"{table}.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
